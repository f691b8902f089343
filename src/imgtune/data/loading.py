"""Data loaders for a run: datasets of samples (decoded on the fly or read from the cache),
the training order, worker counts, batch collation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from imgtune.config import TrainConfig
from imgtune.data.cache import CachedImageDataset, build_cache
from imgtune.data.sampler import EpochSampler
from imgtune.data.samples import ImageDataset, collate
from imgtune.data.splits import DataSplits
from imgtune.data.transforms import ImageSpec, eval_transform, train_transform
from imgtune.data.workers import default_workers, loader_workers


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int | None, pin_memory: bool = False
) -> DataLoader:
    workers = default_workers(len(dataset)) if num_workers is None else num_workers
    sampler = EpochSampler(len(dataset), seed) if shuffle else None
    # its own generator: otherwise each new iterator draws its worker seed from the global RNG,
    # and a run resumed mid-epoch would shift the dropout stream of the uninterrupted one
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def image_dataset(
    rows, transform: Callable, size: int, cache: str | None = None, desc: str = "images", progress: bool = True
) -> Dataset:
    """Labelled rows as a dataset: decoded on the fly, or read from the preprocessed cache under
    ``cache`` (built on first use, reused while the source is unchanged)."""
    if not cache:
        return ImageDataset(rows, transform, size)

    return CachedImageDataset(build_cache(cache, rows, size, desc=desc, progress=progress), transform, rows["label"])


def build_loaders(
    cfg: TrainConfig, data: DataSplits, spec: ImageSpec, pin_memory: bool = False
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The training loader (augmented, shuffled) and the validation/test loaders of a run."""

    def dataset(name, rows, transform):
        return image_dataset(rows, transform, spec.size, cfg.cache, name, cfg.progress)

    on_cpu = not (pin_memory or torch.backends.mps.is_available())
    workers = loader_workers(cfg.num_workers, "cpu" if on_cpu else "accelerator")
    train = make_loader(
        dataset("train", data.train, train_transform(spec, cfg.crop_scale, cfg.hflip)),
        cfg.batch_size,
        True,
        cfg.seed,
        workers,
        pin_memory,
    )
    evals = {
        name: make_loader(
            dataset(name, ds, eval_transform(spec)),
            cfg.eval_batch_size or cfg.batch_size,
            False,
            cfg.seed,
            workers,
            pin_memory,
        )
        for name, ds in (("validation", data.validation), ("test", data.test))
        if ds is not None
    }
    return train, evals
