"""Local folders are read by their structure: split folders only at the top and only when they hold
class folders; file names and class names never decide a split."""

import shutil

import pytest

from conftest import tiny_train_config, write_image
from imgtune.config import TrainConfig
from imgtune.data.folders import read_image_folder, scan_folder
from imgtune.data.splits import load_splits
from imgtune.errors import UserError

VEHICLES = {"bus": (200, 40, 40), "car": (40, 180, 60), "train": (40, 60, 200)}


def write_classes(root, counts: dict[str, int], prefix: str = "img", seed: int = 0):
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(
                root / name / f"{prefix}{i:04d}.png", VEHICLES.get(name, (90, 90, 90)), (12, 12), seed + c * 50 + i
            )
    return root


def sizes(splits) -> dict[str, int]:
    return {name: len(ds) for name, ds in splits.items()}


def test_file_names_never_make_a_split(tmp_path):
    """The demo's own exported test folder: files named test0001.png in class folders."""
    root = write_classes(tmp_path / "digits", {"5": 4, "6": 4}, prefix="test")
    splits, layout = read_image_folder(root)
    assert sizes(splits) == {"train": 8} and layout.startswith("class folders, no split folders")


def test_a_class_named_train_stays_a_class(tmp_path):
    root = tmp_path / "vehicles"
    write_classes(root / "train", {"bus": 5, "car": 5, "train": 5})
    write_classes(root / "test", {"bus": 2, "car": 2, "train": 2}, seed=500)
    splits, layout = read_image_folder(root)
    assert sizes(splits) == {"train": 15, "test": 6}
    assert splits["train"].features["label"].names == ["bus", "car", "train"]
    assert sorted(splits["test"]["label"]) == [0, 0, 1, 1, 2, 2]
    assert layout == "split folders train, test"


def test_classes_named_like_splits_without_split_folders(tmp_path):
    root = write_classes(tmp_path / "vehicles", {"bus": 4, "car": 4, "train": 4})
    data = load_splits(TrainConfig(dataset=str(root), val_fraction=0.25, seed=0))
    assert data.labels == ["bus", "car", "train"]
    assert (len(data.train), len(data.validation), data.test) == (9, 3, None)
    assert "class folders, no split folders" in data.summary() and "validation 25% of train" in data.summary()


def test_validation_folder_names(tmp_path):
    root = tmp_path / "photos"
    write_classes(root / "train", {"bus": 3, "car": 3})
    write_classes(root / "val", {"bus": 1, "car": 1}, seed=300)
    assert sizes(read_image_folder(root)[0]) == {"train": 6, "validation": 2}
    shutil.copytree(root / "val", root / "validation")
    with pytest.raises(UserError, match="two folders for one split"):
        read_image_folder(root)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: (write_classes(r / "train", {"bus": 2, "car": 2}), write_classes(r, {"car": 2})), "mixes folders"),
        (lambda r: write_classes(r / "bus", {"inner": 2}) and write_classes(r, {"car": 2}), "folders inside it"),
        (lambda r: (write_classes(r, {"bus": 2, "car": 2}), write_image(r / "loose.png", (1, 2, 3))), "beside"),
        (lambda r: r.mkdir(), "no usable images"),
    ],
    ids=["split-beside-class", "nested-class", "loose-image", "empty"],
)
def test_ambiguous_layouts_are_refused_with_the_expected_tree(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=message) as caught:
        scan_folder(root)
    assert "photos/train/cat/1.jpg" in str(caught.value)


def test_the_same_image_in_two_splits_is_reported(tmp_path, caplog):
    root = tmp_path / "photos"
    write_classes(root / "train", {"bus": 3, "car": 3})
    write_classes(root / "test", {"bus": 1, "car": 1}, seed=700)
    shutil.copy(root / "train" / "bus" / "img0000.png", root / "test" / "bus" / "copied.png")
    read_image_folder(root)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1 image(s)" in warnings[0]
    assert "train/bus/img0000.png = test/bus/copied.png" in warnings[0]


def test_a_run_says_the_layout_it_found(tmp_path, tiny_vit, caplog):
    from imgtune.tuning.recipe import train

    caplog.set_level("INFO", logger="imgtune")
    root = tmp_path / "vehicles"
    write_classes(root / "train", {"bus": 4, "car": 4, "train": 4})
    write_classes(root / "test", {"bus": 2, "car": 2, "train": 2}, seed=900)
    result = train(tiny_train_config(tiny_vit, root, tmp_path / "run", epochs=1))
    assert result.metrics["splits"] == {"train": 9, "validation": 3, "test": 6}
    assert "split folders train, test; 3 classes" in caplog.text
