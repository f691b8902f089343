import json

import pytest
import torch

from conftest import run_cli
from imgtune.cli.main import main
from imgtune.data.loading import make_loader
from imgtune.data.samples import ImageDataset
from imgtune.data.transforms import BatchNormalizer, ImageSpec, eval_transform
from imgtune.inference.evaluate import evaluate, run_eval
from imgtune.rundir import load_run


def unmerged_figures(run_dir, folder) -> dict:
    """The run's own PeftModel, unmerged, over the same images: what evaluate must agree with."""
    from imgtune.data.splits import load_eval_split

    run = load_run(run_dir)
    spec = ImageSpec.from_processor(run.processor)
    _, ds = load_eval_split(str(folder), None, run.labels, None, None)
    loader = make_loader(ImageDataset(ds, eval_transform(spec), spec.size), 8, False, 0, 0)
    return run_eval(run.model, loader, BatchNormalizer(spec), progress=False).metrics()


def test_evaluate_folds_the_adapter_in_and_matches_the_unmerged_model(lora_run, colour_folder):
    metrics = evaluate(str(lora_run), str(colour_folder), progress=False, device="cpu", precision="fp32")
    expected = unmerged_figures(lora_run, colour_folder)
    assert metrics["count"] == expected["count"] == 30
    assert metrics["accuracy"] == expected["accuracy"]
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    assert metrics["top5"] == 1.0  # 3 classes: top-5 always holds
    assert set(metrics["per_class_accuracy"]) == {"red", "green", "blue"}


def test_evaluate_with_a_cache_builds_it_once_and_agrees(lora_run, colour_folder, tmp_path):
    plain = evaluate(str(lora_run), str(colour_folder), progress=False, device="cpu", precision="fp32")
    first = evaluate(
        str(lora_run), str(colour_folder), progress=False, device="cpu", precision="fp32", cache=str(tmp_path / "cache")
    )
    manifests = list((tmp_path / "cache").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["rows"] == 30
    shard = next(manifests[0].parent.glob("shard-*.bin"))
    built = shard.stat().st_mtime_ns
    again = evaluate(
        str(lora_run), str(colour_folder), progress=False, device="cpu", precision="fp32", cache=str(tmp_path / "cache")
    )
    assert shard.stat().st_mtime_ns == built  # reused, not rebuilt
    assert again == first
    # the cache stores a slightly larger resize, so pixels differ a little from direct decoding
    assert first["count"] == plain["count"] == 30
    assert first["loss"] == pytest.approx(plain["loss"], abs=0.05)


def test_evaluate_cli_json(lora_run, colour_folder):
    proc = run_cli(
        "evaluate",
        lora_run,
        "--dataset",
        colour_folder,
        "--json",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--num-workers",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["count"] == 30 and metrics["bad_files"] == 0
    assert metrics == evaluate(str(lora_run), str(colour_folder), progress=False, device="cpu", precision="fp32")


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu0", "unknown device 'gpu0'"),
        ("cuda:7", "is not available here"),
    ],
)
def test_a_device_that_is_not_there_is_a_one_line_error(lora_run, colour_folder, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    assert main(["evaluate", str(lora_run), "--dataset", str(colour_folder), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgtune: error: ") and message in err and err.count("\n") == 1, err


def test_a_set_with_no_readable_image_is_a_one_line_error(lora_run, colour_folder, tmp_path):
    from imgtune.errors import UserError

    rows = "".join(f"{p.name},{p.parent.name}\n" for p in sorted(colour_folder.rglob("*.*")))
    (tmp_path / "rows.csv").write_text(rows)  # bare names: read from tmp_path, where there are none
    with pytest.raises(UserError, match=r"none of the \d+ images .* could be read.*CSV's own folder"):
        evaluate(str(lora_run), str(tmp_path / "rows.csv"), progress=False, device="cpu")


def test_evaluate_without_a_dataset_scores_the_runs_own_held_out_split(tmp_path, tiny_vit, colour_folder):
    from conftest import read_metrics, tiny_train_config
    from imgtune.tuning.recipe import train

    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1, test_fraction=0.2))
    proc = run_cli("evaluate", out, "--json", "--device", "cpu", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    scored, trained = json.loads(proc.stdout), read_metrics(out)
    assert (scored["dataset"], scored["split"]) == (str(colour_folder), "test")
    assert scored["count"] == trained["test"]["count"] and scored["accuracy"] == trained["test"]["accuracy"]
    said = run_cli("evaluate", out, "--split", "validation", "--device", "cpu").stdout
    assert f"on {trained['validation']['count']} images (validation split of {colour_folder})" in said


def test_a_run_whose_base_moved_names_the_flag_and_base_loads_it(tmp_path, tiny_vit, colour_folder):
    import shutil

    from conftest import tiny_train_config
    from imgtune.tuning.recipe import train

    moved = shutil.copytree(tiny_vit, tmp_path / "vit")
    out = tmp_path / "run"
    train(tiny_train_config(moved, colour_folder, out, epochs=1))
    before = run_cli("predict", out, colour_folder, "--json", "--device", "cpu", "--precision", "fp32")
    shutil.move(moved, tmp_path / "vit-elsewhere")
    for command in (("predict", out, colour_folder), ("evaluate", out), ("merge", out, "--to", tmp_path / "m")):
        proc = run_cli(*command, "--device", "cpu") if command[0] != "merge" else run_cli(*command)
        assert proc.returncode == 2 and "pass --base" in proc.stderr, proc.stderr
    after = run_cli("predict", out, colour_folder, "--json", "--device", "cpu", "--precision", "fp32",
                    "--base", tmp_path / "vit-elsewhere")  # fmt: skip
    assert after.returncode == 0 and json.loads(after.stdout) == json.loads(before.stdout)
