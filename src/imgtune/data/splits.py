"""From a source to a run's splits: the image and label columns, the classes kept, train /
validation / test carved where the source has none, sample limits.

Every split is a ``datasets.Dataset`` with an undecoded ``image`` column and a ``ClassLabel``
``label`` column.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from imgtune.config import TrainConfig
from imgtune.data.sources import IMAGE_COLUMNS, LABEL_COLUMNS, load_source, no_progress_bars
from imgtune.errors import UserError

SPLIT_ALIASES = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass
class DataSplits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]
    layout: str = ""  # how the source's own splits were found
    carved: tuple[str, ...] = ()  # the splits imgtune made, e.g. "validation 10% of train"

    def summary(self) -> str:
        sizes = f"train {len(self.train):,}, validation {len(self.validation):,}"
        if self.test is not None:
            sizes += f", test {len(self.test):,}"
        made = f" ({'; '.join(self.carved)})" if self.carved else ""
        found = f"{self.layout}; " if self.layout else ""
        return f"{found}{len(self.labels)} classes; {sizes}{made}"


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
    ds = ds.map(
        lambda labels: {"label": [old_to_new[l] for l in labels]},
        input_columns="label",
        batched=True,
        features=datasets.Features({"image": ds.features["image"], "label": datasets.ClassLabel(names=list(classes))}),
    )
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


def load_splits(cfg: TrainConfig) -> DataSplits:
    """The run's train / validation / (test) splits and class names, as ``cfg`` asks."""
    with no_progress_bars():  # filter/map/select on local data: instant, their bars only clutter ours
        source = load_source(cfg.dataset, cfg.data_root)
        return carve_splits(source.splits, cfg, source.layout)


def carve_splits(dd: datasets.DatasetDict, cfg: TrainConfig, layout: str = "") -> DataSplits:
    train = pick_split(dd, cfg.train_split or ("train" if "train" in dd else next(iter(dd))), "train")
    validation = pick_split(dd, cfg.validation_split, "validation")
    test = pick_split(dd, cfg.test_split, "test")
    if validation is None and test is not None and cfg.validation_split is None and "validation" not in dd:
        validation = None  # a dataset with train/test only: carve validation from train, keep test
    std = lambda d: None if d is None else standardize(d, cfg.image_column, cfg.label_column)  # noqa: E731
    train, validation, test = std(train), std(validation), std(test)
    if cfg.classes:
        train, validation, test = (
            None if d is None else keep_classes(d, [str(c) for c in cfg.classes]) for d in (train, validation, test)
        )
    check_usable(train, f"dataset {cfg.dataset!r}")
    carved = []
    if test is None and cfg.test_fraction:
        train, test = stratified_split(train, cfg.test_fraction, cfg.seed)
        carved.append(f"test {cfg.test_fraction:.0%} of train")
    if validation is None:
        train, validation = stratified_split(train, cfg.val_fraction, cfg.seed)
        carved.append(f"validation {cfg.val_fraction:.0%} of train")
    elif cfg.test_from_validation:
        validation, test = stratified_split(validation, cfg.test_from_validation, cfg.seed)
        carved.append(f"test {cfg.test_from_validation:.0%} of validation")
    train = limit(train, cfg.max_train_samples, cfg.seed)
    validation, test = limit(validation, cfg.max_eval_samples, cfg.seed), limit(test, cfg.max_eval_samples, cfg.seed)
    check_usable(train, "the training split")
    return DataSplits(train, validation, test, list(train.features["label"].names), layout, tuple(carved))


def load_eval_split(
    spec: str, split: str | None, labels: list[str], image_column=None, label_column=None
) -> tuple[str, datasets.Dataset]:
    """(name, split) of a dataset for ``evaluate``, relabelled to the trained model's label order:
    ``split``, else test, else validation, else the only one."""
    with no_progress_bars():
        return eval_split_of(load_source(spec).splits, spec, split, labels, image_column, label_column)


def eval_split_of(
    dd: datasets.DatasetDict, spec: str, split: str | None, labels: list[str], image_column=None, label_column=None
) -> tuple[str, datasets.Dataset]:
    if split:
        name = split
    else:
        roles = [n for role in ("test", "validation") for n in SPLIT_ALIASES[role] if n in dd]
        name = roles[0] if roles else next(iter(dd))
    ds = pick_split(dd, name, name)
    if ds is None:
        raise UserError(f"dataset {spec!r} has no {split!r} split (it has {', '.join(dd)})")
    if not split and len(dd) == 1:
        name = "all images"  # a source without splits (a folder of class folders, a CSV): say so, not "train"
    ds = standardize(ds, image_column, label_column)
    names = ds.features["label"].names
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise UserError(f"dataset {spec!r} has classes the model does not know: {unknown[:10]}")
    return name, keep_classes(ds, labels, allow_missing=True) if names != labels else ds
