"""Experiment tracking through accelerate: TensorBoard event files in OUT/logs, checked tracker names."""

import importlib.util

import pytest

from conftest import read_metrics, run_cli, tiny_train_config
from imgtune.errors import UserError
from imgtune.tuning.recipe import train
from imgtune.tuning.tracking import resolve_trackers


def test_tensorboard_events_hold_the_run_history(tmp_path, tiny_vit, colour_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, report_to="auto", logging_steps=1))
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event files under {out / 'logs'}"
    acc = EventAccumulator(str(out / "logs" / "imgtune")).Reload()
    history = read_metrics(out)["history"]
    logged = [e.value for e in acc.Scalars("eval/accuracy")]
    assert logged == pytest.approx([row["eval_accuracy"] for row in history])
    assert len(acc.Scalars("train/loss")) == history[-1]["step"]  # logging_steps=1: one point per step


def test_no_logs_with_report_to_none(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "quiet"
    train(tiny_train_config(tiny_vit, colour_folder, out, report_to="none", epochs=1))
    assert not (out / "logs").exists()


def test_tracker_names_are_checked():
    assert resolve_trackers("none") == []
    assert resolve_trackers("auto") == ["tensorboard"]  # installed by the dev extra (imgtune[tracking])
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        resolve_trackers("tensorbord")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_tracker_package_is_a_one_line_error(tmp_path, tiny_vit, colour_folder):
    proc = run_cli(
        "train",
        "--model",
        tiny_vit,
        "--dataset",
        colour_folder,
        "--output-dir",
        tmp_path / "w",
        "--report-to",
        "wandb",
        "--epochs",
        "1",
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("imgtune: error: --report-to wandb: the wandb package is not installed")
    )
    assert "Traceback" not in proc.stderr
