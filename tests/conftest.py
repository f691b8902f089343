"""Shared fixtures: a tiny ViT saved with save_pretrained, small image folders, a trained run.

Everything is made here, offline: the real from_pretrained / load_dataset code paths run
on local directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# what `imgtune` itself sets for its process (imgtune.cli.main): tests that train in-process run with
# the same OpenMP wait policy as the command line (spinning threads starve the loader on 2 cores)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write_image(path: Path, colour, size=(40, 32), seed=0, fmt=None) -> Path:
    """A noisy image dominated by one colour (learnable in a few steps)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_class_folder(root: Path, per_class: int = 10, classes=COLOURS, seed: int = 0) -> Path:
    for c_index, (name, colour) in enumerate(classes.items()):
        for i in range(per_class):
            ext = "jpg" if i % 2 == 0 else "png"
            size = (24 + 8 * (i % 4), 24 + 4 * (i % 3))
            write_image(root / name / f"{name}_{i}.{ext}", colour, size, seed=seed * 1000 + c_index * 100 + i)
    return root


def save_tiny_vit(path: Path, num_labels: int = 2, image_size: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list, log_path: Path, env: dict | None = None) -> tuple[subprocess.Popen, str, int]:
    """``imgtune serve ARGS`` on a free loopback port, CPU, fp32; returns once /livez answers
    (the process, its URL, its port). The server's output goes to ``log_path``, shown if it fails to start."""
    import time

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "imgtune", "serve", "--port", str(port), "--device", "cpu", "--precision", "fp32"]
    log = open(log_path, "w+")  # noqa: SIM115 - stays open for the server's lifetime
    proc = subprocess.Popen([*cmd, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                return proc, url, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"server did not start:\n{log.read()}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "imgtune", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def one_error_line(err: str) -> str:
    """The error is one line, the last; before it only imgtune's own one-line warnings (settings fitted
    to the data may warn before a later check fails), never a traceback."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("imgtune: error: "), err
    assert all(line.startswith("imgtune: warning: ") for line in lines[:-1]), err
    return lines[-1] + "\n"


def perturbed_copy(run: Path, out: Path, seed: int) -> Path:
    """The run with its trained tensors nudged: another adapter, same shapes, no training needed."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from imgtune.rundir import ADAPTER_WEIGHTS

    shutil.copytree(run, out)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(out / ADAPTER_WEIGHTS)
    # VeRA's projections are frozen and shared by every VeRA adapter on a model (peft checks their seed):
    # a real second adapter has the same ones
    nudged = {k: v if ".vera_A" in k or ".vera_B" in k else v + 0.2 * torch.randn(v.shape, generator=gen)
              for k, v in weights.items()}  # fmt: skip
    save_file(nudged, out / ADAPTER_WEIGHTS)
    return out


def tiny_train_config(model: Path, dataset: Path, out: Path, **overrides):
    from imgtune.config import TrainConfig

    values = dict(
        model=str(model),
        dataset=str(dataset),
        output_dir=str(out),
        epochs=2,
        batch_size=8,
        lr=5e-3,
        precision="fp32",
        report_to="none",
        progress=False,
        seed=0,
        num_workers=0,
        val_fraction=0.25,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def library_logging():
    """Tests that run the CLI in-process get its terminal logging; the next test gets the library's
    plain logger back (records propagate to pytest's caplog)."""
    import logging

    logger = logging.getLogger("imgtune")
    yield
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session", autouse=True)
def isolated_hf_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    yield cache


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    """Three colour classes, 10 images each, mixed JPEG/PNG and sizes, no split folders."""
    return write_class_folder(tmp_path_factory.mktemp("data") / "colours")


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_vit, colour_folder) -> Path:
    """A finished LoRA run on the colour folder (the output directory)."""
    from imgtune.tuning.recipe import train

    out = tmp_path_factory.mktemp("runs") / "lora"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=3))
    return out


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())
