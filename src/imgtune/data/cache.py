"""An optional preprocessed image cache (``--cache DIR``): decode every image once, shrink it
so its shorter side is a little above the training size, keep the uint8 pixels in flat
memory-mapped shards. Later epochs and runs read pixels instead of decoding JPEGs;
augmentation still runs on top, per epoch.

Nothing in torch/datasets/torchvision stores decoded, size-reduced uint8 images for random
access (datasets' ``map`` cache re-encodes or stores lists, far slower to read), hence this
module. Layout of ``DIR/<key>/`` where ``key`` hashes the source fingerprint and the resize
policy, so a changed dataset or size is never served stale:

    manifest.json           rows, shard size, policy, fingerprint
    shard-00000.bin         the shard's images, HWC uint8, back to back (np.memmap)
    shard-00000.json        offsets, shapes, unreadable rows; written last = the completion marker

A build interrupted part-way resumes at the first shard without its ``.json``; every file
is written under a temporary name and renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from imgtune.data.decode import BadImage, decode_rgb, source_name
from imgtune.data.samples import Skipped, seeded_transform
from imgtune.data.workers import decode_threads
from imgtune.storage import check_free_space

CACHE_VERSION = 1
SHARD_ROWS = 1024
HEADROOM = 1.15  # shorter side kept = training size * this: room for crops without re-decoding


def cache_side(size: int) -> int:
    return int(math.ceil(size * HEADROOM))


def source_fingerprint(rows) -> str:
    """What the cached pixels depend on: datasets' own fingerprint (it tracks every select,
    shuffle and split, and the content of in-table bytes) plus size and mtime of every file
    a row points to, since a file can change under an unchanged path."""
    digest = hashlib.sha256()
    digest.update(str(getattr(rows, "_fingerprint", "")).encode())
    for path, has_bytes in _paths(rows):
        if has_bytes or not path:
            continue
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _paths(rows):
    """(path, has_bytes) per row, without reading the image bytes of a datasets table."""
    if hasattr(rows, "with_format") and "image" in getattr(rows, "column_names", ()):
        for table in rows.select_columns(["image"]).with_format("arrow").iter(batch_size=4096):
            col = table.column("image").combine_chunks()
            yield from zip(col.field("path").to_pylist(), col.field("bytes").is_valid().to_pylist())
        return
    for row in rows:
        source = row["image"] if isinstance(row, dict) and "image" in row else row
        if isinstance(source, dict):
            yield source.get("path"), bool(source.get("bytes"))
        else:
            yield (str(source), False) if isinstance(source, (str, os.PathLike)) else (None, True)


def _shrink(img: Image.Image, side: int) -> np.ndarray:
    """HWC uint8 with the shorter side at most ``side`` (never enlarged: upsampling is the
    augmentation's job, and storing it would only cost space)."""
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class ImageCache:
    """Read side of a built cache: ``len``, ``pixels(i)`` (HWC uint8 view) or a Skipped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        self.rows, self.shard_rows = manifest["rows"], manifest["shard_rows"]
        self.offsets, self.shapes, self.bad = [], [], {}
        for s in range(self.num_shards):
            index = json.loads((self.folder / f"shard-{s:05d}.json").read_text())
            self.offsets.append(np.asarray(index["offsets"], dtype=np.int64))
            self.shapes.append(np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 2))
            self.bad.update({int(k): Skipped(*v) for k, v in index["bad"].items()})
        self._maps: dict[int, np.memmap] = {}

    @property
    def num_shards(self) -> int:
        return math.ceil(self.rows / self.shard_rows)

    def __len__(self) -> int:
        return self.rows

    def __getstate__(self):  # loader workers map the shards themselves (a pickled memmap is a copy)
        return {**self.__dict__, "_maps": {}}

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            path = self.folder / f"shard-{shard:05d}.bin"
            self._maps[shard] = (
                np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
            )
        return self._maps[shard]

    def pixels(self, index: int) -> np.ndarray | Skipped:
        if index in self.bad:
            return self.bad[index]
        shard, row = divmod(index, self.shard_rows)
        h, w = self.shapes[shard][row]
        start = self.offsets[shard][row]
        return self._map(shard)[start : start + h * w * 3].reshape(h, w, 3)


def build_cache(
    root: str | Path,
    rows,
    size: int,
    desc: str = "cache",
    progress: bool = True,
    threads: int | None = None,
    shard_rows: int = SHARD_ROWS,
) -> ImageCache:
    """The cache of ``rows`` for training at ``size`` px under ``root``: reused when complete,
    resumed when partial, built (in parallel, with a progress bar) otherwise."""
    side = cache_side(size)
    fingerprint = source_fingerprint(rows)
    key = hashlib.sha256(f"v{CACHE_VERSION}:{side}:{fingerprint}".encode()).hexdigest()[:20]
    folder = Path(root).expanduser() / key
    folder.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    manifest = {
        "version": CACHE_VERSION,
        "rows": n,
        "shard_rows": shard_rows,
        "shorter_side": side,
        "fingerprint": fingerprint,
    }
    _atomic_write(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    shards = math.ceil(n / shard_rows)
    todo = [s for s in range(shards) if not (folder / f"shard-{s:05d}.json").exists()]
    if todo:
        done_rows = n - sum(min(shard_rows, n - s * shard_rows) for s in todo)
        # before decoding: room for what is left at the kept size (4:3 images as the rough average)
        check_free_space(folder, (n - done_rows) * side * side * 3 * 4 // 3, "--cache")
        bar = tqdm(
            total=n, initial=done_rows, desc=f"{desc}: caching images", unit="img", disable=None if progress else True
        )
        with ThreadPoolExecutor(max_workers=threads or decode_threads()) as pool:
            for s in todo:
                _build_shard(folder, s, rows, range(s * shard_rows, min(n, (s + 1) * shard_rows)), side, pool, bar)
        bar.close()
    return ImageCache(folder)


def _build_shard(folder: Path, shard: int, rows, indices: range, side: int, pool, bar) -> None:
    def load(i: int):
        row = rows[i]
        source = row["image"] if isinstance(row, dict) and "image" in row else row
        try:
            return _shrink(decode_rgb(source, min_side=side), side)
        except BadImage as err:
            return Skipped(source_name(source), str(err))

    offsets, shapes, bad, offset = [], [], {}, 0
    tmp = folder / f"shard-{shard:05d}.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        for i, result in zip(indices, pool.map(load, indices)):
            if isinstance(result, Skipped):
                bad[i] = [result.name, result.reason]
                offsets.append(offset)
                shapes.append((0, 0))
            else:
                fh.write(result.tobytes())
                offsets.append(offset)
                shapes.append(result.shape[:2])
                offset += result.size
            bar.update(1)
    os.replace(tmp, folder / f"shard-{shard:05d}.bin")
    index = {"offsets": offsets, "shapes": [list(map(int, s)) for s in shapes], "bad": bad}
    _atomic_write(folder / f"shard-{shard:05d}.json", json.dumps(index).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CachedImageDataset(Dataset):
    """ImageDataset's contract, (uint8 CHW, label, index) or Skipped, read from a cache."""

    def __init__(self, cache: ImageCache, transform: Callable, labels: Sequence[int] | None = None):
        self.cache = cache
        self.transform = transform
        # a plain list: indexing a datasets Column costs ~0.2 ms per lookup, more than the augmentation
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key):
        index, sample_seed = key if isinstance(key, tuple) else (key, None)  # see ImageDataset
        pixels = self.cache.pixels(index)
        if isinstance(pixels, Skipped):
            return pixels
        # a copy: the memmap is read-only and torch wants writable memory
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)
        label = self.labels[index] if self.labels is not None else -1
        return seeded_transform(self.transform, image, sample_seed), label, index
