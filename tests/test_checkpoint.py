"""Checkpoints: atomic, rotated, verified; a SIGKILLed run resumes to the same result bit for bit."""

import json
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from conftest import one_error_line, read_metrics, run_cli, tiny_train_config
from imgtune.errors import UserError
from imgtune.tuning.checkpoint import MANIFEST, complete_checkpoints, find_checkpoint
from imgtune.tuning.recipe import TIMING_FIELDS, train


def reproducible(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}


def train_args(model, data, out, *extra):
    return [
        "train",
        "--model",
        model,
        "--dataset",
        data,
        "--output-dir",
        out,
        "--epochs",
        "5",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--precision",
        "fp32",
        "--report-to",
        "none",
        "--num-workers",
        "0",
        "--seed",
        "3",
        "--val-fraction",
        "0.25",
        "--save-steps",
        "2",
        "--no-progress",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_vit, colour_folder):
    straight = tmp_path / "straight"
    proc = run_cli(*train_args(tiny_vit, colour_folder, straight))
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "imgtune", *map(str, train_args(tiny_vit, colour_folder, killed))]
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "checkpoint-8"  # epoch 2 of 6-batch epochs: mid-epoch
    deadline = time.time() + 120
    while not target.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()

    proc = run_cli(*train_args(tiny_vit, colour_folder, killed, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout
    assert reproducible(read_metrics(killed)) == reproducible(read_metrics(straight))
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


def test_same_seed_same_metrics_and_rotation(tmp_path, tiny_vit, colour_folder):
    runs = []
    for name in ("one", "two"):
        cfg = tiny_train_config(tiny_vit, colour_folder, tmp_path / name, epochs=3, save_steps=2, save_total_limit=1)
        runs.append(reproducible(train(cfg).metrics))
    assert runs[0] == runs[1]
    kept = [p.name for p in complete_checkpoints(tmp_path / "one" / "checkpoints")]
    best = read_metrics(tmp_path / "one")["best_epoch"]
    assert len(kept) <= 2 and kept[-1] == f"checkpoint-{3 * 3}"  # 3 epochs of 3 batches: the newest
    state = json.loads((tmp_path / "one" / "checkpoints" / kept[-1] / "trainer_state.json").read_text())
    assert state["best_checkpoint"] in kept and state["best_epoch"] == best


def test_partial_and_damaged_checkpoints(capsys, tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1))
    newest = complete_checkpoints(out / "checkpoints")[-1]
    # a half-written checkpoint (no manifest) is never picked
    (out / "checkpoints" / "checkpoint-999").mkdir()
    (out / "checkpoints" / ".tmp-checkpoint-1000").mkdir()
    assert find_checkpoint(out, "auto") == newest
    with pytest.raises(UserError, match="not a complete checkpoint"):
        find_checkpoint(out, str(out / "checkpoints" / "checkpoint-999"))
    # a truncated file is caught by the manifest, before anything is loaded
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    from imgtune.cli.main import main

    argv = [
        "train",
        "--model",
        str(tiny_vit),
        "--dataset",
        str(colour_folder),
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--report-to",
        "none",
        "--resume",
        "auto",
        "--no-progress",
        "--num-workers",
        "0",
        "--val-fraction",
        "0.25",
        "--seed",
        "0",
    ]
    assert main(argv) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "is damaged (optimizer.pt does not match its manifest)" in err
    assert (newest / MANIFEST).exists()


@pytest.mark.parametrize("tamper", ["emptied", "dropped", "extra"])
def test_a_manifest_cannot_be_emptied_or_cut_short(tmp_path, tiny_vit, colour_folder, tamper):
    """The manifest must list every file its format requires and every file there is: a swapped
    optimizer state with its line removed from the manifest is refused, not resumed."""
    from imgtune.tuning.checkpoint import verify

    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1))
    checkpoint = complete_checkpoints(out / "checkpoints")[-1]
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    if tamper == "emptied":
        manifest["files"] = {}
    elif tamper == "dropped":
        del manifest["files"]["optimizer.pt"]
        (checkpoint / "optimizer.pt").write_bytes(b"swapped")
    else:
        (checkpoint / "planted.pt").write_bytes(b"x")
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="is damaged"):
        verify(checkpoint)
