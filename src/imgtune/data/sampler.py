"""The training order: a pure function of (seed, epoch), so a resumed run replays it exactly."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """A shuffled order that is a pure function of (seed, epoch), yielding (index, sample seed).

    Unlike RandomSampler's running generator, a resumed run can recreate any epoch's order
    and augmentation exactly, and start it part-way (``start`` samples in) without loading
    the skipped images. Call ``set_position`` before iterating (not named set_epoch: accelerate
    calls set_epoch with its own iteration count on every pass).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.start = size, seed, 1, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(self.size - self.start, 0)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        return iter(list(zip(order, seeds))[self.start :])
