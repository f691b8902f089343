"""Two CPU processes under `accelerate launch` (gloo) against one process with the same global batch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import COLOURS, read_metrics, write_class_folder


def launch(processes: int, model, data, out, batch_size: int, *extra: str) -> subprocess.CompletedProcess:
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU the processes join as multi-CPU (gloo)
    launcher = ["--multi_gpu"] if processes > 1 else []
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "imgtune",
        "train",
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        str(batch_size),
        "--precision",
        "fp32",
        "--report-to",
        "none",
        "--num-workers",
        "0",
        "--no-progress",
        "--dropout",
        "0",
        "--val-fraction",
        "0.25",
        "--seed",
        "5",
        *extra,
    ]
    # its own session, so a hung run's worker processes can all be killed, not orphaned
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{processes} process(es) hung (deadlock?): {' '.join(cmd[-30:])}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_two_processes_agree_with_one(tmp_path, tiny_vit):
    data = write_class_folder(tmp_path / "data", per_class=12)  # 36 images: 27 train -> 24 used, 9 validation
    one = launch(1, tiny_vit, data, tmp_path / "one", 8, "--max-train-samples", "24")
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, tiny_vit, data, tmp_path / "two", 4, "--max-train-samples", "24")
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    # every validation image counted exactly once, although 9 does not split over 2 processes
    assert [h["eval_count"] for h in m2["history"]] == [9, 9] and m2["validation"]["count"] == 9
    for h1, h2 in zip(m1["history"], m2["history"]):
        assert h1["step"] == h2["step"]
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["eval_loss"] == pytest.approx(h1["eval_loss"], rel=1e-4)
        assert h2["eval_accuracy"] == h1["eval_accuracy"]
    w1, w2 = (
        load_file(tmp_path / "one" / "adapter_model.safetensors"),
        load_file(tmp_path / "two" / "adapter_model.safetensors"),
    )
    assert w1.keys() == w2.keys()
    for key in w1:
        # Adam normalises updates, so float reduction-order noise in the gradients shows up at ~1e-5
        assert (w1[key] - w2[key]).abs().max().item() < 1e-4, key
    # only the main process wrote: one metrics file, one set of checkpoints
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]


def test_unreadable_files_and_empty_batches_do_not_hang_two_processes(tmp_path, tiny_vit):
    # one image a batch per process: an unreadable file leaves one process an empty batch
    # while the other trains (DDP's all-reduce) or is evaluated (the gather)
    data = tmp_path / "data"
    two_classes = dict(list(COLOURS.items())[:2])
    write_class_folder(data / "train", per_class=3, classes=two_classes)
    write_class_folder(data / "validation", per_class=2, classes=two_classes, seed=1)
    for broken in ("train/red/broken-1.jpg", "train/green/broken-2.png", "validation/red/broken-3.jpg"):
        (data / broken).write_bytes(b"not an image")
    # through the preprocessed cache (one process builds it, the other reads it): same counts
    proc = launch(
        2,
        tiny_vit,
        data,
        tmp_path / "run",
        1,
        "--eval-batch-size",
        "1",
        "--save-steps",
        "2",
        "--cache",
        str(tmp_path / "cache"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 2
    metrics = read_metrics(tmp_path / "run")
    # every process's bad files are counted (each saw only its own shard)
    assert sorted(Path(n).name for n in metrics["bad_file_names"]) == ["broken-1.jpg", "broken-2.png", "broken-3.jpg"]
    # 5 validation files, 1 unreadable: each readable image counted once
    assert [h["eval_count"] for h in metrics["history"]] == [4, 4] and metrics["validation"]["count"] == 4
    assert metrics["history"][-1]["step"] == 8 * 2 // 2  # 8 training files, 1 each on 2 processes, 2 epochs
