"""The bad-input policy, end to end through the real CLI: ``skip`` counts and lists every
unreadable file in train and evaluate; ``--strict`` refuses to start, naming each one."""

from __future__ import annotations

import json

import pytest

from badfiles import READABLE, UNREADABLE, write_awkward
from conftest import read_metrics, run_cli, tiny_train_config, write_class_folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The colour folder with every awkward file planted across the classes; returns
    (folder, paths of the unreadable files)."""
    root = write_class_folder(tmp_path_factory.mktemp("planted") / "colours", per_class=8)
    unreadable = []
    for cls in ("red", "green"):  # a copy in two classes: each file is counted once by path
        bad, _ = write_awkward(root / cls, prefix=f"{cls}_")
        unreadable += [root / cls / name for name in bad]
    return root, sorted(str(p) for p in unreadable)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, tiny_vit, planted):
    from imgtune.tuning.recipe import train

    folder, _ = planted
    out = tmp_path_factory.mktemp("runs") / "skip"
    train(tiny_train_config(tiny_vit, folder, out, epochs=1))
    return out


def test_train_skips_counts_and_lists_every_unreadable_file(skip_run, planted):
    _, unreadable = planted
    metrics = read_metrics(skip_run)
    assert metrics["bad_files"] == len(unreadable) == 2 * len(UNREADABLE)
    assert metrics["bad_file_names"] == unreadable
    listed = [line.split("\t")[0] for line in (skip_run / "bad_files.txt").read_text().splitlines()]
    assert listed == unreadable
    # every readable image (odd modes and the 3x2 one included) was used
    total = metrics["splits"]["train"] + metrics["splits"]["validation"]
    assert metrics["validation"]["count"] + metrics["bad_files"] <= total
    assert metrics["history"][0]["train_loss"] == metrics["history"][0]["train_loss"]  # not NaN


def test_train_strict_fails_before_training_naming_every_file(tmp_path, tiny_vit, planted):
    folder, unreadable = planted
    out = tmp_path / "strict"
    proc = run_cli(
        "train",
        "--model",
        tiny_vit,
        "--dataset",
        folder,
        "--output-dir",
        out,
        "--epochs",
        "1",
        "--report-to",
        "none",
        "--no-progress",
        "--strict",
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{len(unreadable)} unreadable image(s)" in proc.stderr
    assert all(path in proc.stderr for path in unreadable)
    assert "Traceback" not in proc.stderr and not (out / "metrics.json").exists()


def test_evaluate_counts_the_same_files_and_strict_refuses(skip_run, planted):
    folder, unreadable = planted
    proc = run_cli("evaluate", skip_run, "--dataset", folder, "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["bad_files"] == len(unreadable) and metrics["bad_file_names"] == unreadable
    assert metrics["count"] == 3 * 8 + 2 * len(READABLE)  # every readable file, odd modes included
    proc = run_cli("evaluate", skip_run, "--dataset", folder, "--strict")
    assert proc.returncode == 2 and all(path in proc.stderr for path in unreadable), proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_on_a_folder_skips_the_same_files_and_strict_refuses(skip_run, planted):
    folder, unreadable = planted
    proc = run_cli("predict", skip_run, folder, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(s["image"] for s in out["skipped"]) == unreadable
    assert len(out["results"]) == 3 * 8 + 2 * len(READABLE)
    proc = run_cli("predict", skip_run, folder, "--strict")
    assert proc.returncode == 2 and all(path in proc.stderr for path in unreadable), proc.stderr
    assert "Traceback" not in proc.stderr


def test_strict_on_a_cache_names_every_file_from_the_cache_without_decoding_again(
    tmp_path, tiny_vit, skip_run, planted, monkeypatch
):
    import imgtune.data.badfiles
    from imgtune.errors import UserError
    from imgtune.inference.evaluate import evaluate
    from imgtune.tuning.recipe import train

    folder, unreadable = planted
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as first:
        train(tiny_train_config(tiny_vit, folder, tmp_path / "strict", epochs=1, bad_files="strict", cache=str(cache)))
    assert f"{len(unreadable)} unreadable image(s)" in str(first.value)
    assert all(path in str(first.value) for path in unreadable)
    assert not (tmp_path / "strict" / "metrics.json").exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached dataset was decoded again for --strict")

    monkeypatch.setattr(imgtune.data.badfiles, "find_bad_files", no_decoding)
    with pytest.raises(UserError) as again:
        train(tiny_train_config(tiny_vit, folder, tmp_path / "strict", epochs=1, bad_files="strict", cache=str(cache)))
    assert str(again.value) == str(first.value)
    with pytest.raises(UserError) as evaluated:  # evaluate's own cache of the whole folder
        evaluate(str(skip_run), str(folder), bad_files="strict", cache=str(cache), progress=False, device="cpu")
    assert all(path in str(evaluated.value) for path in unreadable)


def test_fifos_named_like_images_are_counted_and_never_opened(tmp_path, tiny_vit):
    """A FIFO blocks whoever opens it: in a folder or a CSV it is skipped as unreadable, unopened."""
    import os

    from imgtune.tuning.recipe import train

    folder = write_class_folder(tmp_path / "data", per_class=6)
    os.mkfifo(folder / "red" / "pipe.jpg")
    csv = tmp_path / "rows.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(folder.rglob("*.*"))]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    for dataset, out in ((folder, "from-folder"), (csv, "from-csv")):
        metrics = train(tiny_train_config(tiny_vit, dataset, tmp_path / out, epochs=1)).metrics
        assert any(name.endswith("pipe.jpg") for name in metrics["bad_file_names"]), metrics["bad_file_names"]
    reason = (tmp_path / "from-folder" / "bad_files.txt").read_text()
    assert "not a regular file" in reason


def test_data_root_confines_a_csvs_rows(tmp_path):
    from imgtune.config import TrainConfig
    from imgtune.data.splits import load_splits
    from imgtune.errors import UserError

    inside = write_class_folder(tmp_path / "root" / "data", per_class=3)
    outside = write_class_folder(tmp_path / "elsewhere", per_class=1)
    csv = tmp_path / "root" / "rows.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(inside.rglob("*.*"))]
    csv.write_text("\n".join(rows) + "\n")
    assert len(load_splits(TrainConfig(dataset=str(csv), data_root=str(tmp_path / "root"))).train) > 0
    csv.write_text("\n".join(rows + ["../elsewhere/red/red_0.jpg,red"]) + "\n")
    assert outside.exists()
    with pytest.raises(UserError, match=r"1 row\(s\) of .* point outside --data-root"):
        load_splits(TrainConfig(dataset=str(csv), data_root=str(tmp_path / "root")))
    assert len(load_splits(TrainConfig(dataset=str(csv))).train) > 0  # without it, documented: rows are read
