"""Where the images come from: a hub dataset, a local folder, a CSV, or scikit-learn's digits.

Every source becomes a ``datasets.DatasetDict``; ``splits`` turns it into a run's splits.
Decoding happens later, in the loader, so bad files are met one at a time and can be skipped.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from imgtune.data.folders import read_image_folder
from imgtune.errors import UserError

IMAGE_COLUMNS = ("image", "img", "picture", "path", "file", "filepath", "filename", "image_path")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "category", "target", "coarse_label")


def load_digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's 1,797 bundled 8x8 handwritten digit scans as a labelled image dataset."""
    digits = load_digits()
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()}, features=features
    )
    return datasets.DatasetDict({"train": ds})


CSV_PATHS_HINT = " (a CSV's relative paths are read from the CSV's own folder)"


def load_csv_dataset(path: Path, data_root: str | None = None) -> datasets.DatasetDict:
    """A CSV of path,label rows (header optional); relative paths are relative to the CSV, absolute
    ones are taken as they are. With ``data_root``, every row must lie inside it (others are refused)."""
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
    if data_root is not None:
        check_confined(path, paths, Path(data_root).expanduser().resolve())
    labels = [r[label_col].strip() for r in rows]
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": paths, "label": [index[l] for l in labels]}, features=features)
    return datasets.DatasetDict({"train": ds})


def check_confined(csv_path: Path, paths: list[str], root: Path) -> None:
    outside = [p for p in paths if not Path(p).is_relative_to(root)]
    if outside:
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        raise UserError(
            f"{len(outside)} row(s) of {csv_path} point outside --data-root {root}: {', '.join(outside[:3])}{more}"
        )


def load_hub_dataset(spec: str) -> datasets.DatasetDict:
    name, _, split = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as err:
        raise UserError(
            f"could not load dataset {spec!r}: not a local folder or CSV, and the hub said: {_first_line(err)}"
        ) from None
    return datasets.DatasetDict({"train": loaded}) if split else loaded


@contextlib.contextmanager
def no_progress_bars():
    """datasets' bars for the instant work on local data are noise beside our own; turned back on
    afterwards (a notebook's later datasets calls keep theirs)."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


@dataclass
class Source:
    """A dataset's splits as its source defines them, and how they were found (said to the user)."""

    splits: datasets.DatasetDict
    layout: str


def load_source(spec: str, data_root: str | None = None) -> Source:
    with no_progress_bars():
        return read_source(spec, data_root)


def read_source(spec: str, data_root: str | None = None) -> Source:
    if spec == "digits":
        return Source(load_digits_dataset(), "scikit-learn's digits, one split")
    path = Path(spec).expanduser()
    if path.is_dir():
        return Source(*read_image_folder(path))
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise UserError(f"CSV file {spec} does not exist")
        return Source(load_csv_dataset(path, data_root), "CSV rows, one split")
    if path.exists() or spec.startswith((".", "/", "~")):
        raise UserError(f"dataset {spec!r} is a path but neither a folder of images nor a .csv file")
    hub = load_hub_dataset(spec)
    return Source(hub, f"hub splits {', '.join(hub)}")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
