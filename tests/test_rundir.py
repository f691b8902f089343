"""The run directory is complete or untouched: faults injected at each file of the final save, a full
disk, incomplete and damaged directories, pickled weights, malformed settings."""

import errno
import json
import shutil
import subprocess

import pytest

import imgtune.storage
from conftest import run_cli, save_tiny_vit, tiny_train_config
from imgtune.errors import UserError
from imgtune.inference.predict import predict
from imgtune.tuning.recipe import train

# every file the final save writes for an adapter run
SAVED = (
    "adapter_model.safetensors", "adapter_config.json", "config.json", "preprocessor_config.json", "imgtune.yaml",
    "metrics.json", "training_curves.png", "confusion_matrix.png", "README.md", "report.html",
)  # fmt: skip


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_vit, colour_folder):
    """A finished LoRA run and its answers, copied fresh for each test."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1))
    return out, predict(out, [str(colour_folder)], device="cpu", precision="fp32")


@pytest.mark.parametrize("failing", SAVED)
def test_a_fault_at_any_file_of_the_save_leaves_the_earlier_run_as_it_was(
    tmp_path, tiny_vit, colour_folder, earlier, monkeypatch, failing
):
    out = shutil.copytree(earlier[0], tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real_fsync = imgtune.storage.fsync

    def full_disk_at(path):
        if path.name == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_fsync(path)

    monkeypatch.setattr(imgtune.storage, "fsync", full_disk_at)
    other = tiny_train_config(tiny_vit, colour_folder, out, epochs=1, method="loha", overwrite=True)
    with pytest.raises(UserError, match=f"no space left on device while writing {out}"):
        train(other)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the earlier run, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temporary left behind
    assert predict(out, [str(colour_folder)], device="cpu", precision="fp32") == earlier[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: too small for a run's first checkpoint."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()[:100]})")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_refused_before_training(small_disk, tiny_vit, colour_folder):
    proc = run_cli("train", "--model", tiny_vit, "--dataset", colour_folder, "--output-dir", small_disk / "run",
                   "--epochs", "1", "--precision", "fp32", "--report-to", "none", "--no-progress")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "MiB free for --output-dir" in proc.stderr and "Traceback" not in proc.stderr


def test_a_disk_that_fills_during_training_is_one_line(small_disk, tiny_vit, colour_folder, monkeypatch, capsys):
    """The space check passed (here: skipped), then the disk fills: the checkpoint write fails in one line."""
    import imgtune.preflight
    from imgtune.cli.main import main

    monkeypatch.setattr(imgtune.preflight, "expected_bytes", lambda cfg: 0)
    argv = ["train", "--model", tiny_vit, "--dataset", colour_folder, "--output-dir", small_disk / "run",
            "--epochs", "1", "--precision", "fp32", "--report-to", "none", "--no-progress"]  # fmt: skip
    assert main([str(a) for a in argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imgtune: error:")]
    assert len(errors) == 1 and errors[0].startswith("imgtune: error: no space left on device while writing"), errors
    assert not (small_disk / "run" / "metrics.json").exists()


def test_incomplete_and_damaged_run_directories_are_one_line_errors(tmp_path, earlier, colour_folder):
    cases = {
        "adapter_model.safetensors": lambda d: (d / "adapter_model.safetensors").unlink(),
        "preprocessor_config.json": lambda d: (d / "preprocessor_config.json").write_text(""),
        "adapter_config.json": lambda d: (d / "adapter_config.json").write_text("{not json"),
        "imgtune.yaml": lambda d: (d / "imgtune.yaml").write_text("method: [1, 2]\n: :\n"),
    }
    for name, damage in cases.items():
        out = shutil.copytree(earlier[0], tmp_path / name)
        damage(out)
        for command in (("predict", out, colour_folder), ("evaluate", out), ("merge", out, "--to", tmp_path / "m")):
            proc = run_cli(*command)
            assert proc.returncode == 2, (name, command[0], proc.stderr[-1500:])
            assert proc.stderr.count("\n") == 1 and name in proc.stderr, (name, command[0], proc.stderr)


def test_a_non_string_method_in_the_settings_is_not_a_traceback(tmp_path, earlier, colour_folder):
    out = shutil.copytree(earlier[0], tmp_path / "run")
    settings = (out / "imgtune.yaml").read_text().replace("method: lora", "method: 7")
    (out / "imgtune.yaml").write_text(settings)
    proc = run_cli("predict", out, colour_folder, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["results"], proc.stderr


def test_pickled_base_weights_are_refused_in_one_line(tmp_path, colour_folder, earlier):
    import torch
    from safetensors.torch import load_file

    pickled = save_tiny_vit(tmp_path / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    proc = run_cli("train", "--model", pickled, "--dataset", colour_folder, "--output-dir", tmp_path / "o")
    assert proc.returncode == 2 and "pickled weights" in proc.stderr and proc.stderr.count("\n") == 1
    for command in (("predict", earlier[0], colour_folder), ("merge", earlier[0], "--to", tmp_path / "m")):
        proc = run_cli(*command, "--base", pickled)
        assert proc.returncode == 2 and "pickled weights" in proc.stderr, proc.stderr


def test_an_unwritable_output_dir_fails_before_any_step(tmp_path, tiny_vit, colour_folder):
    import time

    disk = tmp_path / "readonly"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.decode().strip()[:100]})")
    try:
        started = time.perf_counter()
        proc = run_cli("train", "--model", tiny_vit, "--dataset", colour_folder, "--output-dir", disk / "run")
        print(f"refused after {time.perf_counter() - started:.1f} s")  # measured, not asserted (shared machines)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
        assert "not a writable directory" in proc.stderr and "trainable params" not in proc.stdout
    finally:
        subprocess.run(["umount", str(disk)], check=False)
