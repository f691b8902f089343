"""Settings left to auto follow the data, the model and the device (imgtune.tuning.autoconfig): what was
chosen is said, given values and presets are kept, settings that cannot learn well are warned about,
``--lr auto`` leaves the run's randomness alone and metrics.json names the precision."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import read_metrics, save_tiny_vit, tiny_train_config
from imgtune.config import AUTO_FIELDS, TrainConfig, list_presets, load_config
from imgtune.preflight import check_output_dir, preflight
from imgtune.tuning.autoconfig import ImageStats, auto_batch, auto_crop, auto_epochs, take_recorded
from imgtune.tuning.lr_find import LR_FIND_PNG
from imgtune.tuning.recipe import Recipe, train

DATA_FIELDS = ("epochs", "batch_size", "crop_scale", "hflip")


def write_digit_folder(root: Path, classes: int = 3, per_class: int = 30, size: int = 12, handed=False) -> Path:
    """Small greyscale 'scans': each class a bar at its own place, plus noise (learnable, digit-like).
    The bars span the width, so an image looks the same in a mirror; ``handed`` adds a stroke down the
    left side of every image, like the stem of a b, which no mirrored image has."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size)).astype(np.uint8)
            row = 2 + c * (size - 4) // max(classes - 1, 1)
            pixels[max(row - 1, 0) : row + 1, 2 : size - 2] = 230
            if handed:
                pixels[1 : size - 1, 1:3] = 230
            path = root / f"class{c}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(path)
    return root


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "vit", num_labels=3)


def set_up(cfg: TrainConfig) -> Recipe:
    recipe = Recipe(preflight(cfg))
    recipe.setup()
    return recipe


def auto_config(vit, data, out, **overrides) -> TrainConfig:
    """tiny_train_config with the data settings left to auto."""
    return tiny_train_config(vit, data, out, **{k: None for k in DATA_FIELDS}, **overrides)


# --- the rules --------------------------------------------------------------------------------


def test_rules_fit_small_data_and_keep_large_data_as_the_seeds_had_it():
    # Food-101 on a GPU: the seeds' batch and 5 epochs (592 steps an epoch); crops to under a third of
    # 384 px photos, the seeds' 8% for large ones
    assert auto_batch(75_750, "cuda", 1, 1)[0] == 128
    assert auto_epochs(592)[0] == 5
    assert auto_crop(ImageStats(384), 224)[0][0] <= 0.3
    assert auto_crop(ImageStats(800), 224)[0] == [0.08, 1.0]
    # a few thousand small digits on a CPU: >= 20 steps an epoch, ~1000 steps in all, mild crops
    batch = auto_batch(1_300, "cpu", 1, 1)[0]
    assert batch <= 32 and 1_300 / batch >= 20
    epochs = auto_epochs(int(np.ceil(1_300 / batch)))[0]
    assert 900 <= epochs * np.ceil(1_300 / batch) <= 1100
    assert 0.5 <= auto_crop(ImageStats(28), 32)[0][0] <= 0.85
    # tiny data: the smallest batch, at most 50 epochs
    assert auto_batch(20, "cpu", 1, 1)[0] == 8 and auto_epochs(3)[0] == 50


# --- a run's setup ------------------------------------------------------------------------------


def test_auto_settings_follow_the_data_and_say_why(vit, digit_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    recipe = set_up(auto_config(vit, digit_folder, tmp_path / "run"))
    cfg = recipe.cfg
    # 67 training images: the smallest batch (8) for as many steps an epoch as there can be; 12 px
    # images into a 32 px input: crops keep most of the image; the bars look the same in a mirror: flips on
    assert cfg.batch_size == 8 and cfg.epochs == 50  # 9 steps an epoch -> ~1000 steps wanted, at most 50 epochs
    assert cfg.crop_scale == [0.85, 1.0] and cfg.hflip is True
    assert recipe.total_steps == 9 * 50
    text = caplog.text
    assert "settings fitted to the data" in text
    for reason in ("batch size 8", "epochs 50", "crop scale 0.85-1", "horizontal flips on"):
        assert reason in text
    assert "mirrored images are like the training images" in text and "--no-hflip" not in text
    # the resolved values are the ones the run records for resume and compare
    assert recipe.cfg.result_settings()["batch_size"] == 8
    assert all(getattr(cfg, k) is not None for k in DATA_FIELDS)


def test_flips_are_off_for_data_that_is_not_its_own_mirror_image(vit, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    handed = write_digit_folder(tmp_path / "handed", handed=True)
    recipe = set_up(auto_config(vit, handed, tmp_path / "run"))
    assert recipe.cfg.hflip is False
    assert "horizontal flips off: the class-mean images of 67 training images (3 classes)" in caplog.text
    assert "a mirrored image is not like the training images" in caplog.text
    # asked for on such data, flips stay on and the run warns
    caplog.clear()
    recipe = set_up(tiny_train_config(vit, handed, tmp_path / "asked", hflip=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert recipe.cfg.hflip is True and any("pass --no-hflip" in w for w in warnings), warnings


def test_given_values_are_kept_and_nothing_is_said(vit, digit_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    given = tiny_train_config(vit, digit_folder, tmp_path / "run", crop_scale=[0.3, 0.9], hflip=False)
    recipe = set_up(given)
    assert {k: getattr(recipe.cfg, k) for k in DATA_FIELDS} == {k: getattr(given, k) for k in DATA_FIELDS}
    assert "settings fitted to the data" not in caplog.text
    assert "--no-hflip" not in caplog.text


@pytest.mark.parametrize("preset", list_presets())
def test_presets_set_every_data_setting_as_the_seeds_did(preset):
    cfg = load_config(preset)
    assert all(getattr(cfg, k) is not None for k in DATA_FIELDS)  # nothing of theirs is left to auto
    assert cfg.crop_scale == [0.08, 1.0] and cfg.hflip is True  # the guide's RandomResizedCrop + flip


def test_too_few_steps_and_crops_below_the_detail_warn(vit, digit_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    set_up(tiny_train_config(vit, digit_folder, tmp_path / "run", epochs=1, batch_size=32, crop_scale=[0.08, 1.0]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("only 3 optimizer steps in the whole run" in w for w in warnings), warnings
    assert any("smallest crops" in w and "upscaled" in w for w in warnings), warnings


def test_a_resumed_run_takes_the_recorded_auto_settings(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-9"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text(json.dumps({"saved_at": 0, "step": 9, "files": {}}))
    recorded = dict(epochs=7, batch_size=16, crop_scale=[0.5, 1.0], hflip=True, lr=0.002, precision="fp32")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"settings": recorded}))
    cfg = TrainConfig(output_dir=str(tmp_path), resume="auto", lr="auto", hflip=False)
    taken = take_recorded(cfg, tmp_path, lambda message: None)
    assert {k: getattr(taken, k) for k in AUTO_FIELDS} == {**recorded, "hflip": False}  # given values stay


# --- whole runs -------------------------------------------------------------------------------------


def test_lr_auto_picks_a_rate_and_leaves_the_run_as_that_rate_gives_it(vit, digit_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    common = dict(epochs=2, batch_size=16, hflip=False, crop_scale=[0.85, 1.0])
    auto = train(tiny_train_config(vit, digit_folder, tmp_path / "auto", lr="auto", **common))
    picked = yaml.safe_load((auto.output_dir / "imgtune.yaml").read_text())["lr"]
    assert isinstance(picked, float) and picked > 0
    assert (auto.output_dir / LR_FIND_PNG).stat().st_size > 1000
    assert "range test over" in caplog.text
    given = train(tiny_train_config(vit, digit_folder, tmp_path / "given", lr=picked, **common))
    a, g = read_metrics(auto.output_dir), read_metrics(given.output_dir)
    assert a["history"] == g["history"] and a["test"] == g["test"] and a["validation"] == g["validation"]
    assert a["precision"] == "fp32"  # accelerate's "no", named as a user names it
    # the same flags again in the same directory are the same run (its auto settings resolved alike)
    check_output_dir(tiny_train_config(vit, digit_folder, tmp_path / "auto", lr="auto", **common))


def test_precision_auto_on_a_cpu_is_timed_and_named(vit, digit_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgtune")
    cfg = tiny_train_config(vit, digit_folder, tmp_path / "run", epochs=1, batch_size=16, precision="auto")
    run = train(cfg.replace(hflip=False, crop_scale=[0.85, 1.0]))
    metrics = read_metrics(run.output_dir)
    assert metrics["precision"] in ("fp32", "bf16")
    recorded = yaml.safe_load((run.output_dir / "imgtune.yaml").read_text())["precision"]
    assert recorded == metrics["precision"]
    assert f"precision {recorded}:" in caplog.text  # and why (measured times on a CPU with native bf16)


def test_lr_is_a_positive_number_or_auto():
    from imgtune.errors import UserError

    assert TrainConfig(lr="auto").lr == "auto" and TrainConfig(lr="5e-3").lr == 5e-3
    for bad in ("fast", 0, True):
        with pytest.raises(UserError, match="lr"):
            TrainConfig(lr=bad)
