"""Two CPU processes under `accelerate launch` (gloo) against one process with the same global batch."""
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import read_metrics, write_class_folder


def launch(processes: int, model, data, out, batch_size: int) -> subprocess.CompletedProcess:
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU the processes join as multi-CPU (gloo)
    launcher = ["--multi_gpu"] if processes > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "imgtune", "train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
           "--epochs", "2", "--batch-size", str(batch_size), "--precision", "fp32", "--report-to", "none",
           "--num-workers", "0", "--no-progress", "--dropout", "0", "--val-fraction", "0.25",
           "--max-train-samples", "24", "--seed", "5"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_processes_agree_with_one(tmp_path, tiny_vit):
    data = write_class_folder(tmp_path / "data", per_class=12)  # 36 images: 27 train -> 24 used, 9 validation
    one = launch(1, tiny_vit, data, tmp_path / "one", batch_size=8)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, tiny_vit, data, tmp_path / "two", batch_size=4)
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
    w1, w2 = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        # Adam normalises updates, so float reduction-order noise in the gradients shows up at ~1e-5
        assert (w1[key] - w2[key]).abs().max().item() < 1e-4, key
    # only the main process wrote: one metrics file, one set of checkpoints
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
