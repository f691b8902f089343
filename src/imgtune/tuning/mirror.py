"""Does the training data look the same in a mirror? The evidence behind the default for flips.

Random horizontal flips teach a model that a mirrored image is the same class: right for photos of food,
wrong for digits and text, where a mirrored 3 is no digit at all. Which of the two a data set is, its
images say. Over photos of a class, left and right views come about equally often, so the average image of
a class is nearly its own mirror image; over scans of a 3 it is a blurred 3, nothing like its mirror.

The test: small greyscale thumbnails of a sample of each class, the class means, and how far each mean
is from its mirror image (``asymmetry``). The same is measured again with every thumbnail flipped or not
at random: if the data looked the same in a mirror, the random flips would change nothing, so the observed
asymmetry would be one draw among theirs (a randomisation test, exact whatever the images are). A
data set is called *handed* when its asymmetry is above every random one (p <= 1/(trials+1)) and at
least ``MIN_RATIO`` times their mean, so that a faint, merely significant tilt in a large photo set
(light from one side) keeps its flips. No library does this test; it is a few array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgtune.data.decode import decode_rgb

SIDE = 24  # thumbnail side: enough for a digit's shape, cheap for thousands of photos
MAX_IMAGES = 480  # decoded in all (JPEG draft mode makes a large photo cost about a small one)
MIN_PER_CLASS = 4  # a class of one image has the same asymmetry flipped or not: no evidence either way
TRIALS = 19  # p = 0.05 when the observed asymmetry is above all of them
MIN_RATIO = 5.0  # digits measure 25-50; crops of one unflipped photo about 3.5


@dataclass
class MirrorTest:
    ratio: float  # observed asymmetry over the mean of the randomly flipped ones
    p_value: float
    images: int
    classes: int

    @property
    def handed(self) -> bool:
        return self.p_value <= 1 / (TRIALS + 1) and self.ratio >= MIN_RATIO

    def summary(self) -> str:
        return (
            f"the class-mean images of {self.images} training images ({self.classes} classes) are "
            f"{self.ratio:.1f}x as far from their mirror images as with random flips (p={self.p_value:.2f})"
        )


def thumbnail(image) -> np.ndarray | None:
    try:
        rgb = decode_rgb(image, SIDE)
    except Exception:  # noqa: BLE001 - unreadable files are the loader's to count and report
        return None
    return np.asarray(rgb.convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32).ravel() / 255


def sample_by_class(rows, seed: int) -> list[np.ndarray]:
    """Thumbnails of up to MAX_IMAGES training rows, an equal share per class; classes with too few dropped."""
    rng = np.random.default_rng(seed)  # its own stream: the run's seeded ones stay untouched
    labels = np.asarray(rows["label"])
    classes = np.unique(labels)
    share = max(MIN_PER_CLASS, MAX_IMAGES // max(len(classes), 1))
    groups = []
    for c in classes:
        index = np.flatnonzero(labels == c)
        picks = rng.choice(index, size=min(share, len(index)), replace=False)
        thumbs = [t for t in (thumbnail(rows[int(i)]["image"]) for i in picks) if t is not None]
        if len(thumbs) >= MIN_PER_CLASS:
            groups.append(np.stack(thumbs))
        if sum(len(g) for g in groups) >= MAX_IMAGES:
            break
    return groups


def mirrored(thumbs: np.ndarray) -> np.ndarray:
    return thumbs.reshape(-1, SIDE, SIDE)[:, :, ::-1].reshape(len(thumbs), -1)


def asymmetry(groups: list[np.ndarray], flips: list[np.ndarray] | None = None) -> float:
    total = 0.0
    for i, thumbs in enumerate(groups):
        if flips is not None:
            thumbs = np.where(flips[i][:, None], mirrored(thumbs), thumbs)
        mean = thumbs.mean(axis=0, keepdims=True)
        total += float(((mean - mirrored(mean)) ** 2).sum())
    return total


def mirror_test(rows, seed: int) -> MirrorTest | None:
    """None when there is too little to judge by (fewer than two classes of MIN_PER_CLASS readable images)."""
    groups = sample_by_class(rows, seed)
    if len(groups) < 2:
        return None
    rng = np.random.default_rng(seed + 1)
    observed = asymmetry(groups)
    null = [asymmetry(groups, [rng.random(len(g)) < 0.5 for g in groups]) for _ in range(TRIALS)]
    ratio = observed / max(float(np.mean(null)), 1e-12)
    p_value = (1 + sum(n >= observed for n in null)) / (TRIALS + 1)
    return MirrorTest(ratio, p_value, sum(len(g) for g in groups), len(groups))
