"""Where the images come from: a hub dataset, a local folder, a CSV, or scikit-learn's digits.

Every source becomes the same thing: ``datasets.Dataset`` splits with an undecoded
``image`` column and a ``ClassLabel`` ``label`` column, plus the class names. Decoding
happens later, in the loader, so bad files are met one at a time and can be skipped.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from .config import TrainConfig
from .errors import UserError
from .images import list_images

IMAGE_COLUMNS = ("image", "img", "picture", "path", "file", "filepath", "filename", "image_path")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "category", "target", "coarse_label")
SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass
class DataSplits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]

    def summary(self) -> str:
        sizes = f"train {len(self.train):,}, validation {len(self.validation):,}"
        if self.test is not None:
            sizes += f", test {len(self.test):,}"
        return f"{len(self.labels)} classes; {sizes}"


# --- sources -----------------------------------------------------------------------


def load_digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's 1,797 bundled 8x8 handwritten digit scans as a labelled image dataset."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()}, features=features
    )
    return datasets.DatasetDict({"train": ds})


def load_folder_dataset(folder: Path) -> datasets.DatasetDict:
    """Class sub-folders, optionally under train/validation/test (datasets' imagefolder)."""
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
    except Exception as err:  # datasets raises several types for "nothing usable here"
        raise UserError(f"no usable images in {folder}: expected class sub-folders of images ({_first_line(err)})") from None
    if "label" not in next(iter(loaded.values())).column_names:
        # imagefolder drops the label column when every image sits in one folder
        classes = sorted({p.parent.name for p in list_images(folder)})
        raise UserError(f"{folder} has a single class ({', '.join(classes[:3])}): a classifier needs at least two "
                        "class sub-folders")
    return loaded


CSV_PATHS_HINT = " (a CSV's relative paths are read from the CSV's own folder)"


def load_csv_dataset(path: Path) -> datasets.DatasetDict:
    """A CSV of path,label rows (header optional); relative paths are relative to the CSV."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise UserError(f"{path} is empty: expected path,label rows")
    header = [h.strip().lower() for h in rows[0]]
    image_col = next((i for i, h in enumerate(header) if h in IMAGE_COLUMNS), None)
    label_col = next((i for i, h in enumerate(header) if h in LABEL_COLUMNS), None)
    if image_col is not None and label_col is not None:
        rows = rows[1:]
    elif len(header) == 2:
        image_col, label_col = 0, 1
        if not (path.parent / rows[0][0]).exists():  # a header with other names
            rows = rows[1:]
    else:
        raise UserError(f"{path}: need two columns path,label (got {', '.join(rows[0])})")
    rows = [r for r in rows if len(r) > max(image_col, label_col)]
    paths = [str((path.parent / r[image_col].strip()).resolve()) for r in rows]
    labels = [r[label_col].strip() for r in rows]
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": paths, "label": [index[l] for l in labels]}, features=features)
    return datasets.DatasetDict({"train": ds})


def load_hub_dataset(spec: str) -> datasets.DatasetDict:
    name, _, split = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as err:
        raise UserError(
            f"could not load dataset {spec!r}: not a local folder or CSV, and the hub said: {_first_line(err)}"
        ) from None
    return datasets.DatasetDict({"train": loaded}) if split else loaded


def load_source(spec: str) -> datasets.DatasetDict:
    datasets.disable_progress_bars()  # instant for local data; our own bars show training
    if spec == "digits":
        return load_digits_dataset()
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder_dataset(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise UserError(f"CSV file {spec} does not exist")
        return load_csv_dataset(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise UserError(f"dataset {spec!r} is a path but neither a folder of images nor a .csv file")
    return load_hub_dataset(spec)


# --- columns and labels ------------------------------------------------------------


def detect_column(ds: datasets.Dataset, wanted: str | None, kind: type, names: tuple[str, ...], what: str) -> str:
    if wanted:
        if wanted not in ds.column_names:
            raise UserError(f"{what} column {wanted!r} not in dataset columns {ds.column_names}")
        return wanted
    typed = [c for c, f in ds.features.items() if isinstance(f, kind)]
    if typed:
        return typed[0]
    named = [c for c in names if c in ds.column_names]
    if named:
        return named[0]
    flag = "--image-column" if what == "image" else "--label-column"
    raise UserError(f"cannot tell which column holds the {what}s among {ds.column_names}: pass {flag}")


def standardize(ds: datasets.Dataset, image_column: str | None, label_column: str | None) -> datasets.Dataset:
    """Keep just ``image`` (undecoded) and ``label`` (ClassLabel)."""
    img = detect_column(ds, image_column, datasets.Image, IMAGE_COLUMNS, "image")
    lab = detect_column(ds, label_column, datasets.ClassLabel, LABEL_COLUMNS, "label")
    ds = ds.select_columns([img, lab])
    if not isinstance(ds.features[lab], datasets.ClassLabel):
        ds = ds.class_encode_column(lab)
    ds = ds.rename_columns({k: v for k, v in {img: "image", lab: "label"}.items() if k != v})
    return ds.cast_column("image", datasets.Image(decode=False))


def keep_classes(ds: datasets.Dataset, classes: list[str], allow_missing: bool = False) -> datasets.Dataset:
    """Only the named classes, relabelled 0..len(classes)-1 in the order given."""
    names = ds.features["label"].names
    missing = [c for c in classes if c not in names]
    if missing and not allow_missing:
        raise UserError(f"classes {missing} are not in the dataset (it has {names[:20]})")
    old_to_new = {names.index(c): i for i, c in enumerate(classes) if c in names}
    ds = ds.filter(lambda labels: [l in old_to_new for l in labels], input_columns="label", batched=True)
    ds = ds.map(lambda labels: {"label": [old_to_new[l] for l in labels]}, input_columns="label", batched=True,
                features=datasets.Features({"image": ds.features["image"], "label": datasets.ClassLabel(names=list(classes))}))
    return ds


def stratified_split(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rest, held_out) with ``fraction`` held out, class proportions kept where possible."""
    labels = np.asarray(ds["label"])
    if len(labels) < 2:
        raise UserError(f"{len(labels)} image(s) cannot be split into training and held-out images: add images")
    counts = np.bincount(labels)
    classes, held_out = int((counts > 0).sum()), int(np.ceil(fraction * len(labels)))
    # stratifying needs two images per class and room for one of each class on both sides;
    # a tiny set is split at random instead
    fits = counts[counts > 0].min() >= 2 and classes <= held_out <= len(labels) - classes
    stratify = labels if fits else None
    keep, held = train_test_split(np.arange(len(ds)), test_size=fraction, random_state=seed, stratify=stratify)
    return ds.select(np.sort(keep)), ds.select(np.sort(held))


def limit(ds: datasets.Dataset | None, n: int | None, seed: int) -> datasets.Dataset | None:
    if ds is None or n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def pick_split(dd: datasets.DatasetDict, explicit: str | None, role: str) -> datasets.Dataset | None:
    if explicit:
        if explicit not in dd:
            raise UserError(f"split {explicit!r} not in dataset (it has {', '.join(dd)})")
        return dd[explicit]
    return next((dd[n] for n in SPLIT_ALIASES.get(role, (role,)) if n in dd), None)


def check_usable(ds: datasets.Dataset, where: str) -> None:
    if len(ds) == 0:
        raise UserError(f"{where} has no images")
    present = len(set(ds["label"]))
    if present < 2:
        raise UserError(f"{where} has a single class: a classifier needs at least two")


# --- the whole recipe ----------------------------------------------------------------


def load_splits(cfg: TrainConfig) -> DataSplits:
    dd = load_source(cfg.dataset)
    train = pick_split(dd, cfg.train_split or ("train" if "train" in dd else next(iter(dd))), "train")
    validation = pick_split(dd, cfg.validation_split, "validation")
    test = pick_split(dd, cfg.test_split, "test")
    if validation is None and test is not None and cfg.validation_split is None and "validation" not in dd:
        validation = None  # a dataset with train/test only: carve validation from train, keep test
    std = lambda d: None if d is None else standardize(d, cfg.image_column, cfg.label_column)  # noqa: E731
    train, validation, test = std(train), std(validation), std(test)
    if cfg.classes:
        train, validation, test = (None if d is None else keep_classes(d, [str(c) for c in cfg.classes])
                                   for d in (train, validation, test))
    check_usable(train, f"dataset {cfg.dataset!r}")
    if test is None and cfg.test_fraction:
        train, test = stratified_split(train, cfg.test_fraction, cfg.seed)
    if validation is None:
        train, validation = stratified_split(train, cfg.val_fraction, cfg.seed)
    elif cfg.test_from_validation:
        validation, test = stratified_split(validation, cfg.test_from_validation, cfg.seed)
    train = limit(train, cfg.max_train_samples, cfg.seed)
    validation, test = limit(validation, cfg.max_eval_samples, cfg.seed), limit(test, cfg.max_eval_samples, cfg.seed)
    check_usable(train, "the training split")
    return DataSplits(train, validation, test, list(train.features["label"].names))


def load_eval_split(spec: str, split: str | None, labels: list[str], image_column=None, label_column=None) -> datasets.Dataset:
    """One split of a dataset for ``evaluate``, relabelled to the trained model's label order."""
    dd = load_source(spec)
    ds = pick_split(dd, split, split or "test") if split else (pick_split(dd, None, "test") or pick_split(dd, None, "validation") or dd[next(iter(dd))])
    if ds is None:
        raise UserError(f"dataset {spec!r} has no {split!r} split (it has {', '.join(dd)})")
    ds = standardize(ds, image_column, label_column)
    names = ds.features["label"].names
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise UserError(f"dataset {spec!r} has classes the model does not know: {unknown[:10]}")
    return keep_classes(ds, labels, allow_missing=True) if names != labels else ds


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
