"""Mistakes in a run's config are found before any model or data loads; runs do not overwrite each other."""

import json
import os
import subprocess
import sys

import pytest

from conftest import read_metrics, run_cli, tiny_train_config
from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.preflight import preflight
from imgtune.tuning.method_names import method_names
from imgtune.tuning.methods import METHODS
from imgtune.tuning.recipe import train


def test_the_light_method_list_is_the_registry():
    assert sorted(method_names()) == sorted(METHODS)


CHECK_LIGHT = """
import sys
from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.preflight import preflight
for cfg in (TrainConfig(method="lorra", output_dir="o"), TrainConfig(model="./nowhere", output_dir="o")):
    try:
        preflight(cfg)
    except UserError as err:
        print(err)
    else:
        raise AssertionError("accepted")
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "accelerate") if m in sys.modules)
assert not heavy, heavy
"""


def test_mistakes_are_found_without_loading_any_ml_library(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHECK_LIGHT], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "unknown method 'lorra'" in proc.stdout and "'./nowhere' is not a directory" in proc.stdout


def test_a_hub_id_without_a_network_fails_at_once_with_the_way_out(tmp_path, colour_folder):
    # the hub endpoint is a closed port on this machine: no network is touched
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "imgtune", "train", "--model", "google/vit-base-patch16-224-in21k",
           "--dataset", str(colour_folder), "--output-dir", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot be reached" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "not in the local Hugging Face cache" in proc.stderr


def test_without_an_output_dir_a_run_gets_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    decided = preflight(TrainConfig(model="./model", dataset="digits", method="loha"))
    assert decided.output_dir.startswith("runs/model-loha-digits-")
    with pytest.raises(UserError, match="--resume needs the --output-dir"):
        preflight(TrainConfig(model="./model", dataset="digits", resume="auto"))


def test_a_directory_holding_another_run_is_not_replaced_without_overwrite(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    cfg = tiny_train_config(tiny_vit, colour_folder, out, epochs=1)
    train(cfg)
    (out / "bad_files.txt").write_text("an earlier run's list\n")
    train(cfg)  # the same settings again: the same run, replaced
    assert not (out / "bad_files.txt").exists()  # nothing of the earlier run survives beside the new one
    other = cfg.replace(method="loha")
    with pytest.raises(UserError, match=r"holds lora on .* with other settings: pass --overwrite"):
        train(other)
    assert read_metrics(out)["method"] == "lora"
    train(other.replace(overwrite=True))
    assert read_metrics(out)["method"] == "loha" and "loha" in json.dumps(read_metrics(out))


def test_overwrite_is_a_flag(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1))
    common = ["train", "--model", tiny_vit, "--dataset", colour_folder, "--output-dir", out, "--epochs", "1",
              "--report-to", "none", "--no-progress", "--precision", "fp32", "--method", "lokr"]  # fmt: skip
    proc = run_cli(*common)
    assert proc.returncode == 2 and "pass --overwrite" in proc.stderr
    assert run_cli(*common, "--overwrite").returncode == 0 and read_metrics(out)["method"] == "lokr"


def test_an_unwritable_output_dir_fails_first(tmp_path, colour_folder, tiny_vit):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        preflight(tiny_train_config(tiny_vit, colour_folder, tmp_path / "file"))
    with pytest.raises(UserError, match="is not a writable directory"):
        preflight(tiny_train_config(tiny_vit, colour_folder, tmp_path / "file" / "run"))
    with pytest.raises(UserError, match="cannot write --cache"):
        preflight(tiny_train_config(tiny_vit, colour_folder, tmp_path / "run", cache=str(tmp_path / "file" / "c")))


def test_an_unwritable_export_target_fails_before_exporting(tmp_path, lora_run):
    from imgtune.inference.export import export

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a writable directory"):
        export(lora_run, tmp_path / "file" / "model.onnx")
    assert (tmp_path / "file").read_text() == "x"
