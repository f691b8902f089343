"""transforms.py: imgtune's direct-call crops must equal torchvision v2's Compose, draw for draw."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from imgtune.data.transforms import BatchNormalizer, EvalCrop, ImageSpec, TrainCrop

SHAPES = [(3, 300, 410), (3, 410, 300), (3, 224, 224), (3, 3, 2), (3, 90, 1000)]


def layouts(shape, seed=0):
    """The same pixels planar (pil_to_tensor's layout) and channels-last (a permuted HWC array)."""
    planar = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    hwc = np.ascontiguousarray(planar.permute(1, 2, 0).numpy())
    return planar, torch.from_numpy(hwc).permute(2, 0, 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_train_crop_equals_v2_compose(shape):
    for image in layouts(shape):
        for seed in range(5):
            torch.manual_seed(seed)
            want = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip()])(
                image
            )
            torch.manual_seed(seed)
            got = TrainCrop(32, scale=(0.2, 1.0))(image)
            assert got.dtype == torch.uint8 and got.shape == (3, 32, 32)
            assert torch.equal(got, want), (shape, seed)


def test_train_crop_without_flip_never_flips():
    image = layouts((3, 40, 40))[0]
    crop = TrainCrop(40, scale=(1.0, 1.0), hflip=False)
    assert all(torch.equal(crop(image), image) for _ in range(10))


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_crop_equals_v2_resize_center_crop(shape):
    for image in layouts(shape):
        want = v2.Compose([v2.Resize(224, antialias=True), v2.CenterCrop(224)])(image)
        assert torch.equal(EvalCrop(224)(image), want), shape


def test_batch_normalizer_matches_float_normalize():
    spec = ImageSpec(8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    want = v2.Normalize(spec.mean, spec.std)(batch.float() / 255.0)
    torch.testing.assert_close(BatchNormalizer(spec)(batch), want, atol=1e-5, rtol=1e-5)


def test_collated_batches_are_channels_last_and_normalize_to_planar_floats():
    from imgtune.data.samples import collate

    spec = ImageSpec(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    torch.manual_seed(0)
    images = [TrainCrop(16)(layouts((3, 40, 30))[1]) for _ in range(4)]
    batch = collate([(im, i % 2, i) for i, im in enumerate(images)]).pixel_values
    assert torch.equal(batch, torch.stack([im.contiguous() for im in images]))
    assert batch.is_contiguous(memory_format=torch.channels_last)  # stacked without a transpose
    out = BatchNormalizer(spec)(batch)
    assert out.is_contiguous() and out.dtype == torch.float32
    want = v2.Normalize(spec.mean, spec.std)(torch.stack(images).float() / 255.0)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_cpu_normalize_leaves_the_thread_count_as_it_found_it():
    threads = torch.get_num_threads()
    BatchNormalizer(ImageSpec(8, (0.5,) * 3, (0.5,) * 3))(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert torch.get_num_threads() == threads
