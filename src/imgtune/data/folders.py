"""A local image folder, read by its structure only.

datasets' ``imagefolder`` builder guesses splits from any path or file name containing "train",
"test" or "valid" (a folder of ``test0001.png`` files becomes a test split; a class named
``train`` under ``test/`` lands in training), so folders are read here instead, by these rules:

- A folder whose sub-folders hold images is a *class folder* per sub-folder, whatever its name.
- A folder whose sub-folders are all split names (``train``, ``validation``/``val``/``valid``,
  ``test``) and each hold class folders has *split folders*.
- File names never matter; hidden entries and files that are not images are ignored.
- Anything else (images beside folders, class folders beside split folders, folders inside class
  folders) is refused with the expected tree, rather than guessed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from imgtune.data.decode import IMAGE_EXTENSIONS
from imgtune.errors import UserError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                 "test": "test"}  # fmt: skip
EXPECTED = (
    "expected either class folders of images (photos/cat/1.jpg, photos/dog/2.jpg) or split folders of class "
    "folders (photos/train/cat/1.jpg, photos/test/cat/9.jpg; splits: train, validation or val or valid, test)"
)


@dataclass
class FolderLayout:
    """What was found: split -> class -> image files, and how it was read."""

    root: Path
    splits: dict[str, dict[str, list[Path]]]
    split_folders: bool
    skipped_empty: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({name for classes in self.splits.values() for name in classes})

    def describe(self) -> str:
        how = f"split folders {', '.join(self.splits)}" if self.split_folders else "class folders, no split folders"
        empty = f"; empty folders skipped: {', '.join(self.skipped_empty)}" if self.skipped_empty else ""
        return f"{how}{empty}"  # the class count follows in DataSplits.summary()


def visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def is_image(path: Path) -> bool:
    # named like an image, and not a folder: a FIFO or device so named is kept, and skipped as unreadable
    # (counted, never opened) when decoded, rather than silently dropped here
    return not path.is_dir() and path.suffix.lower() in IMAGE_EXTENSIONS


def class_images(folder: Path) -> dict[str, list[Path]]:
    """Class name -> images for a folder of class folders; refuses images beside the class folders
    and folders inside a class folder."""
    entries = visible(folder)
    loose = [p.name for p in entries if is_image(p)]
    if loose:
        raise UserError(f"{folder} holds images ({', '.join(loose[:3])}) beside its class folders: {EXPECTED}")
    classes = {}
    for sub in (p for p in entries if p.is_dir()):
        nested = [p.name for p in visible(sub) if p.is_dir()]
        if nested:
            raise UserError(f"{sub} is a class folder with folders inside it ({', '.join(nested[:3])}): {EXPECTED}")
        classes[sub.name] = [p for p in visible(sub) if is_image(p)]
    return classes


def holds_class_folders(folder: Path) -> bool:
    """A split folder holds folders of images; a class folder holds images."""
    return any(p.is_dir() for p in visible(folder))


def scan_folder(root: Path) -> FolderLayout:
    entries = visible(root)
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        raise UserError(f"no usable images in {root}: {EXPECTED}")
    deeper = [p for p in folders if holds_class_folders(p)]
    if not deeper:  # every sub-folder holds images: they are the classes, whatever their names
        splits = {"train": class_images(root)}
        split_folders = False
    else:
        names = [p.name.lower() for p in folders]
        if not any(n in SPLIT_FOLDERS for n in names):
            class_images(root)  # says which class folder has folders inside it
        if len(deeper) != len(folders) or any(n not in SPLIT_FOLDERS for n in names):
            raise UserError(
                f"{root} mixes folders of folders ({', '.join(p.name for p in deeper[:3])}) with "
                f"other folders: {EXPECTED}"
            )
        if any(is_image(p) for p in entries):
            raise UserError(f"{root} holds images beside its split folders: {EXPECTED}")
        roles = [SPLIT_FOLDERS[n] for n in names]
        if len(set(roles)) != len(roles):
            raise UserError(f"{root} has two folders for one split ({', '.join(p.name for p in folders)}): keep one")
        splits = {role: class_images(p) for role, p in sorted(zip(roles, folders), key=lambda rp: _order(rp[0]))}
        split_folders = True
    empty = [
        f"{split}/{name}" if split_folders else name
        for split, classes in splits.items()
        for name, files in classes.items()
        if not files
    ]
    splits = {s: {c: f for c, f in classes.items() if f} for s, classes in splits.items()}
    return FolderLayout(root, splits, split_folders, empty)


def _order(split: str) -> int:
    return ("train", "validation", "test").index(split)


def shared_images(layout: FolderLayout) -> list[tuple[Path, Path]]:
    """Pairs of files in different splits with the same content: a test image seen in training
    makes the test score a memory test. Only files whose size occurs in two splits are read and
    hashed, so a large folder costs one stat per file, not a second read of every image."""
    if len(layout.splits) < 2:
        return []
    by_size: dict[int, list[tuple[str, Path]]] = {}
    for split, classes in layout.splits.items():
        for files in classes.values():
            for path in files:
                if path.is_file():  # a FIFO or device: never opened (decoding counts it as unreadable)
                    by_size.setdefault(path.stat().st_size, []).append((split, path))
    pairs = []
    for same_size in by_size.values():
        if len({split for split, _ in same_size}) < 2:
            continue
        first: dict[str, tuple[str, Path]] = {}
        for split, path in same_size:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            earlier = first.setdefault(digest, (split, path))
            if earlier[0] != split:
                pairs.append((earlier[1], path))
    return pairs


def read_image_folder(root: Path) -> tuple[datasets.DatasetDict, str]:
    """The folder's splits as datasets (undecoded image paths, ClassLabel labels) and a one-line
    description of the layout found."""
    layout = scan_folder(root)
    names = layout.classes
    if len(names) < 2:
        raise UserError(
            f"{root} has a single class ({', '.join(names)}): a classifier needs at least two class folders; {EXPECTED}"
        )
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split, classes in layout.splits.items():
        rows = [(str(path.resolve()), index[name]) for name, files in sorted(classes.items()) for path in files]
        splits[split] = datasets.Dataset.from_dict(
            {"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features
        )
    pairs = shared_images(layout)
    if pairs:
        listing = ", ".join(f"{a.relative_to(root)} = {b.relative_to(root)}" for a, b in pairs[:3])
        log.warning(
            "%d image(s) of %s appear in two splits (same content): %s%s",
            len(pairs),
            root,
            listing,
            " ..." if len(pairs) > 3 else "",
        )
    return datasets.DatasetDict(splits), layout.describe()
