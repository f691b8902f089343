import pytest

from conftest import write_class_folder, write_image
from imgtune.config import TrainConfig
from imgtune.data.splits import load_eval_split, load_splits
from imgtune.errors import UserError


def cfg_for(dataset, **kw):
    return TrainConfig(dataset=str(dataset), **kw)


def test_folder_without_validation_gets_a_stratified_seeded_split(colour_folder):
    splits = load_splits(cfg_for(colour_folder, val_fraction=0.3, seed=1))
    assert splits.labels == ["blue", "green", "red"]
    assert (len(splits.train), len(splits.validation), splits.test) == (21, 9, None)
    assert sorted(splits.validation["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    again = load_splits(cfg_for(colour_folder, val_fraction=0.3, seed=1))
    assert [r["path"] for r in again.validation["image"]] == [r["path"] for r in splits.validation["image"]]


def test_split_folders_and_test_from_validation(tmp_path):
    for split, n in (("train", 6), ("validation", 10)):
        write_class_folder(tmp_path / "ds" / split, per_class=n)
    splits = load_splits(cfg_for(tmp_path / "ds", test_from_validation=0.3))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (18, 21, 9)


def test_csv_with_relative_paths(tmp_path, colour_folder):
    rows = ["path,label"] + [
        f"{p.relative_to(colour_folder)},{p.parent.name}" for p in sorted(colour_folder.rglob("*.*"))
    ]
    (colour_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_splits(cfg_for(colour_folder / "labels.csv"))
    assert splits.labels == ["blue", "green", "red"]
    assert len(splits.train) + len(splits.validation) == 30
    (colour_folder / "labels.csv").unlink()


def test_digits_with_a_class_subset():
    splits = load_splits(cfg_for("digits", classes=["5", "6", "7", "8", "9"], test_fraction=0.2))
    assert splits.labels == ["5", "6", "7", "8", "9"]
    total = len(splits.train) + len(splits.validation) + len(splits.test)
    assert total == 896  # all scans of 5-9 in scikit-learn's digits
    assert set(splits.test["label"]) == {0, 1, 2, 3, 4}


def test_max_train_samples(colour_folder):
    assert len(load_splits(cfg_for(colour_folder, max_train_samples=5)).train) == 5


def test_single_class_and_empty_folders_are_user_errors(tmp_path):
    write_class_folder(tmp_path / "one", per_class=4, classes={"red": (255, 0, 0)})
    with pytest.raises(UserError, match="single class"):
        load_splits(cfg_for(tmp_path / "one"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(UserError, match="images"):
        load_splits(cfg_for(tmp_path / "empty"))


def test_hub_dataset_offline_is_a_user_error():
    with pytest.raises(UserError, match="could not load dataset 'no-such-dataset-xyz'"):
        load_splits(cfg_for("no-such-dataset-xyz"))


def test_eval_split_is_relabelled_to_the_model_order(tmp_path):
    write_class_folder(tmp_path / "sub", per_class=2, classes={"red": (255, 0, 0), "blue": (0, 0, 255)})
    _, ds = load_eval_split(str(tmp_path / "sub"), None, ["red", "green", "blue"])
    assert ds.features["label"].names == ["red", "green", "blue"]
    assert sorted(ds["label"]) == [0, 0, 2, 2]
    write_image(tmp_path / "sub" / "purple" / "p.png", (128, 0, 128))
    with pytest.raises(UserError, match="does not know.*purple"):
        load_eval_split(str(tmp_path / "sub"), None, ["red", "green", "blue"])
