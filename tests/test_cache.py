"""The preprocessed cache: same pixels policy as decoding, bad files recorded, resumable,
never stale, and a training run through it reports bad files exactly as without it."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from badfiles import UNREADABLE, write_awkward
from conftest import read_metrics, tiny_train_config, write_class_folder, write_image
from imgtune.data.cache import CachedImageDataset, build_cache, cache_side
from imgtune.data.decode import decode_rgb, list_images
from imgtune.data.samples import Skipped


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(7):
        write_image(root / f"a{i}.jpg", (200, 40, 40), size=(300 + 10 * i, 200), seed=i)
    write_image(root / "small.png", (40, 60, 200), size=(20, 12))
    write_awkward(root)
    return root


def test_cache_stores_shrunk_uint8_and_records_bad_files(tmp_path, folder):
    paths = [str(p) for p in list_images(folder)]
    cache = build_cache(tmp_path / "c", paths, 32, progress=False, shard_rows=4)
    side = cache_side(32)
    assert len(cache) == len(paths) and cache.num_shards == -(-len(paths) // 4)
    for i, path in enumerate(paths):
        got = cache.pixels(i)
        if os.path.basename(path) in UNREADABLE:
            assert isinstance(got, Skipped) and got.name == path
            continue
        full = decode_rgb(path)
        assert got.dtype == np.uint8 and got.shape[2] == 3
        assert min(got.shape[:2]) == min(side, min(full.size))  # shrunk to the policy, never enlarged
        # same picture: mean colour close to the full-size decode
        assert np.abs(got.reshape(-1, 3).mean(0) - np.asarray(full).reshape(-1, 3).mean(0)).max() < 6
    assert sorted(s.name for s in cache.bad.values()) == sorted(str(folder / n) for n in UNREADABLE)
    ds = CachedImageDataset(cache, lambda t: t, labels=list(range(len(paths))))
    image, label, index = ds[paths.index(str(folder / "small.png"))]
    assert image.shape == (3, 12, 20) and label == index


def test_cache_is_reused_resumed_and_never_stale(tmp_path, folder):
    paths = [str(p) for p in list_images(folder)]
    first = build_cache(tmp_path / "c", paths, 32, progress=False, shard_rows=4)
    marker = first.folder / "shard-00001.json"
    stamp = marker.stat().st_mtime_ns
    # interrupted build: one shard lost its completion marker -> only that shard is redone
    (first.folder / "shard-00002.json").unlink()
    again = build_cache(tmp_path / "c", paths, 32, progress=False, shard_rows=4)
    assert again.folder == first.folder and marker.stat().st_mtime_ns == stamp
    assert (first.folder / "shard-00002.json").exists()
    assert not list(first.folder.glob("*.tmp"))
    # a changed file, or another size, gets a new cache
    time.sleep(0.01)
    write_image(folder / "a0.jpg", (40, 180, 60), size=(300, 200))
    changed = build_cache(tmp_path / "c", paths, 32, progress=False, shard_rows=4)
    assert changed.folder != first.folder
    assert changed.pixels(paths.index(str(folder / "a0.jpg")))[..., 1].mean() > 120  # green now
    assert build_cache(tmp_path / "c", paths, 64, progress=False, shard_rows=4).folder not in (
        first.folder,
        changed.folder,
    )


def test_training_through_the_cache_reports_bad_files_like_without(tmp_path, tiny_vit):
    from imgtune.tuning.recipe import train

    root = write_class_folder(tmp_path / "colours", per_class=8)
    bad, _ = write_awkward(root / "red", prefix="red_")
    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, root, out, epochs=1, cache=str(tmp_path / "cache")))
    metrics = read_metrics(out)
    assert metrics["bad_files"] == len(bad)
    assert metrics["bad_file_names"] == sorted(str(root / "red" / n) for n in bad)
    assert [l.split("\t")[0] for l in (out / "bad_files.txt").read_text().splitlines()] == metrics["bad_file_names"]
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/manifest.json")]
    assert sorted(m["rows"] for m in manifests) == sorted(
        metrics["splits"][k] for k in ("train", "validation") if metrics["splits"][k]
    )


def test_cached_dataset_works_in_loader_worker_processes(tmp_path, folder):
    from torchvision.transforms import v2

    from imgtune.data.badfiles import BadFiles
    from imgtune.data.loading import make_loader

    paths = [str(p) for p in list_images(folder)]
    cache = build_cache(tmp_path / "c", paths, 32, progress=False, shard_rows=4)
    cache.pixels(0)  # a mapped shard in the parent must not be pickled into the workers
    loader = make_loader(CachedImageDataset(cache, v2.RandomResizedCrop(32)), 4, True, 0, num_workers=2)
    bad, seen = BadFiles(), 0
    for batch in loader:
        bad.add(batch.skipped)
        seen += len(batch)
        assert batch.pixel_values.dtype.is_floating_point is False and batch.pixel_values.shape[1:] == (3, 32, 32)
    assert len(bad) == len(UNREADABLE) and seen == len(paths) - len(UNREADABLE)
