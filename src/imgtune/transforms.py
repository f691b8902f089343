"""Augmentation and normalisation, built from the image processor's settings.

Per-image work (crop, flip, resize) runs on uint8 tensors with torchvision.transforms.v2;
the float conversion and normalisation run once per batch on the model's device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ImageSpec:
    """What the model wants: square input size and the processor's mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor, size: int | None = None) -> "ImageSpec":
        if size is None:
            s = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
            size = s.get("height") or s.get("shortest_edge") or 224
        mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
        std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
        return cls(int(size), mean, std)


def train_transform(spec: ImageSpec, crop_scale=(0.08, 1.0), hflip: bool = True) -> v2.Compose:
    steps = [v2.RandomResizedCrop(spec.size, scale=tuple(crop_scale), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(spec: ImageSpec) -> v2.Compose:
    return v2.Compose([v2.Resize(spec.size, antialias=True), v2.CenterCrop(spec.size)])


class BatchNormalizer(torch.nn.Module):
    """uint8 NCHW batch -> normalised float batch, on whatever device the batch is on."""

    def __init__(self, spec: ImageSpec):
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean.to(batch.device), self.inv_std.to(batch.device)
        return (batch.float() - mean) * inv_std
