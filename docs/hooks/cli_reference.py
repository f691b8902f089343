"""mkdocs hook: the CLI reference, rendered from imgtune's own argparse parser so it cannot drift.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; every sub-command of
``imgtune.cli.main.build_parser()`` replaces it with its usage and a table of its options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import imgtune  # noqa: F401  (installed: pip install -e ".[docs]")
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


def render() -> str:
    from imgtune.cli.main import build_parser
    from imgtune.config import TrainConfig

    # train/compare flags default to "not given" so that --config can fill them: show the config's default
    config_defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(TrainConfig)
    }
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    out = []
    for name, command in sub.choices.items():
        summary = summaries.get(name) or ""
        out += [f"## `imgtune {name}`", "", summary[:1].upper() + summary[1:] + ".", ""]
        if command.description:
            out += [command.description, ""]
        out += ["```text", usage(command), "```", ""]
        out += ["| option | description | default |", "|---|---|---|"]
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                out.append(row(action, command, config_defaults))
        out.append("")
    return "\n".join(out)


def usage(command: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(command.prog, width=88)  # fixed width: the page does not depend on the terminal
    formatter.add_usage(command.usage, command._actions, command._mutually_exclusive_groups)
    return formatter.format_help().strip()


def row(action: argparse.Action, command: argparse.ArgumentParser, config_defaults: dict) -> str:
    if action.option_strings:
        metavar = (
            ""
            if action.nargs == 0
            else " "
            + (
                action.metavar
                or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper())
            )
        )
        names = ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)
    else:
        names = f"`{action.metavar or action.dest}`"
    text = (action.help or "") % {"default": action.default, "prog": command.prog}
    if action.nargs == 0:
        default = "off"
    elif action.required or not action.option_strings:
        default = "required"
    elif action.default is argparse.SUPPRESS:
        value = config_defaults.get(action.dest)
        default = "—" if value in (None, {}, []) else f"`{value}` (config)"
    elif action.default is None:
        default = "—"
    else:
        default = f"`{action.default}`"
    return f"| {names} | {escape(text)} | {default} |"


def escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
