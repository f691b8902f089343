"""Augmentation and normalisation, built from the image processor's settings.

Per-image work (crop, flip, resize) runs on uint8 tensors with torchvision.transforms.v2;
the float conversion and normalisation run once per batch on the model's device.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@contextmanager
def single_threaded():
    """Input-side tensor ops on one thread. Loader workers already run that way; in the main
    process torch would split a 224x224 resize over every core, and on a busy machine the
    threads wait on each other (measured: 7 ms per resize instead of 0.3 ms on 2 shared cores).

    torch's thread count is process-wide, so this only acts on the main thread, where the training
    loop runs input and model work in turn; elsewhere (a server's decode threads beside its model
    thread) changing it would slow the model under someone else's feet, so it is left alone."""
    if get_worker_info() is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ImageSpec:
    """What the model wants: square input size and the processor's mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor, size: int | None = None) -> ImageSpec:
        if size is None:
            s = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
            size = s.get("height") or s.get("shortest_edge") or 224
        mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
        std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
        return cls(int(size), mean, std)


def resize_uint8(image: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 CHW image, in the channels-last layout.

    torch's uint8 kernel works on channels-last pixels; given planar ones it converts there and
    back (measured 299 vs 127 us for a 224 px image on one core). v2.functional.resize_image
    reshapes its input to 4-D, which turns a channels-last view planar, so the kernel is called
    here on a 4-D view that keeps the layout. Same kernel and arguments as the v2 call.
    """
    batch = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(batch, size=size, mode="bilinear", antialias=True)[0]


class TrainCrop(torch.nn.Module):
    """RandomResizedCrop then a horizontal flip, for one plain uint8 CHW tensor.

    The same parameter sampling as ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip])``
    (v2's own ``make_params``) and the same resize kernel, called directly: Compose's per-call
    input flattening and type dispatch cost about a third of the per-image time (measured
    150 of 450 us), and the layout matters more (``resize_uint8``).
    """

    def __init__(self, size: int, scale=(0.08, 1.0), hflip: bool = True):
        super().__init__()
        self.size = [size, size]
        self.crop = v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)
        self.hflip = hflip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = self.crop.make_params([image])
        region = image[..., p["top"] : p["top"] + p["height"], p["left"] : p["left"] + p["width"]]
        out = resize_uint8(region, self.size)
        if self.hflip and torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        return out


class EvalCrop(torch.nn.Module):
    """Resize the shorter side to ``size``, then centre-crop a square (v2.Resize + v2.CenterCrop)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        # v2.Resize's rounding of the longer side (int(size * long / short)), so the crop matches it
        short, long = (h, w) if h <= w else (w, h)
        scaled = [self.size, int(self.size * long / short)] if h <= w else [int(self.size * long / short), self.size]
        return F.center_crop_image(resize_uint8(image, scaled), [self.size, self.size])


def train_transform(spec: ImageSpec, crop_scale=(0.08, 1.0), hflip: bool = True) -> TrainCrop:
    return TrainCrop(spec.size, crop_scale, hflip)


def eval_transform(spec: ImageSpec) -> EvalCrop:
    return EvalCrop(spec.size)


class BatchNormalizer(torch.nn.Module):
    """uint8 NCHW batch (any strides) -> normalised, contiguous float NCHW batch, on the batch's device."""

    def __init__(self, spec: ImageSpec):
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean.to(batch.device), self.inv_std.to(batch.device)
        # in place on a fresh copy: each new full-batch float tensor costs page faults (measured
        # 5.1 ms -> 2.0 ms for 32 x 224 px on 2 cores). One copy also makes a channels-last batch planar.
        if batch.device.type != "cpu":
            return self.convert(batch, mean, inv_std)
        # on a CPU the loader workers hold the other cores: two threads here only wait on each
        # other (measured 35 vs 17 ms per batch beside 2 workers on 2 cores; 4.2 vs 5.4 ms alone)
        with single_threaded():
            return self.convert(batch, mean, inv_std)

    @staticmethod
    def convert(batch: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        return batch.to(torch.float32, memory_format=torch.contiguous_format, copy=True).sub_(mean).mul_(inv_std)
