"""The documentation builds with ``mkdocs build --strict`` (offline), and its CLI reference, generated from
the argument parser, lists every command and every option."""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgtune.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install -e '.[docs]'")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_docs_build_strict_and_cli_page_lists_every_command(site):
    page = html.unescape((site / "cli" / "index.html").read_text())
    commands = subcommands()
    assert len(commands) >= 10
    for name in commands:
        assert f"imgtune {name}" in page, f"CLI reference lacks the {name} command"
    for flag in ("--max-grad-norm", "--adapter", "--method-options", "--resume", "--int8", "--top-k", "--to"):
        assert flag in page


def test_cli_page_lists_every_option_of_the_parser(site):
    page = html.unescape((site / "cli" / "index.html").read_text())
    missing = [
        f"imgtune {name} {flag}"
        for name, parser in subcommands().items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
        if f"<code>{flag}" not in page
    ]
    assert not missing, f"options missing from the CLI reference: {missing}"


def test_every_docs_page_is_built(site):
    for page in (
        "index.html",
        "getting-started",
        "training",
        "data",
        "methods",
        "shipping",
        "long-runs",
        "benchmarks",
        "architecture",
        "api",
        "cli",
    ):
        assert (site / page).exists(), page
    api = (site / "api" / "index.html").read_text()
    for name in ("TrainConfig", "load_config", "TrainResult", "Predictor", "after_step", "checkpoint_tensors"):
        assert name in api, f"API page lacks {name}"
