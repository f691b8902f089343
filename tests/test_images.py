"""decode_rgb on every awkward file a real folder collects: unreadable ones raise BadImage
(never hang), readable ones come back as correct RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from badfiles import READABLE, UNREADABLE, jpeg_bytes, write_awkward
from imgtune.data.decode import BadImage, decode_rgb


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    write_awkward(folder)
    return folder


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_files_raise_bad_image(awkward, name):
    with pytest.raises(BadImage):
        decode_rgb(awkward / name)


def test_pixel_limit_is_checked_from_the_header():
    # a lower limit exercises the same check a 100-megapixel file would meet
    with pytest.raises(BadImage, match="over the 1,000-pixel limit"):
        decode_rgb(jpeg_bytes(size=(64, 48)), max_pixels=1000)
    assert decode_rgb(jpeg_bytes(size=(64, 48)), max_pixels=64 * 48).size == (64, 48)


def px(img, x, y):
    return np.array(img.getpixel((x, y)), dtype=int)


def test_every_readable_mode_becomes_correct_rgb(awkward):
    images = {name: decode_rgb(awkward / name) for name in READABLE}
    assert all(img.mode == "RGB" for img in images.values())
    # CMYK (0, 255, 255, 0) is pure red
    assert np.abs(px(images["cmyk.jpg"], 10, 10) - (255, 0, 0)).max() <= 8
    # alpha composited on white, not dropped (which would give black/red)
    assert tuple(px(images["rgba.png"], 5, 5)) == (255, 255, 255)
    assert np.abs(px(images["rgba.png"], 30, 5) - (255, 127, 127)).max() <= 2
    assert tuple(px(images["la.png"], 5, 5)) == (255, 255, 255) and tuple(px(images["la.png"], 30, 5)) == (0, 0, 0)
    # palette transparency honoured, palette colour kept
    assert tuple(px(images["palette.gif"], 5, 5)) == (255, 255, 255)
    assert tuple(px(images["palette.gif"], 30, 5)) == (40, 180, 60)
    # 16-bit scaled to 8 bits: 32768 -> 128, 65535 -> 255 (clipping would make both 255)
    assert tuple(px(images["deep16.png"], 5, 5)) == (128, 128, 128)
    assert tuple(px(images["deep16.png"], 30, 5)) == (255, 255, 255)
    assert images["tiny.png"].size == (3, 2) and tuple(px(images["tiny.png"], 0, 0)) == (40, 60, 200)
    # EXIF orientation applied: stored 40x20, shown 20x40
    assert images["rotated.jpg"].size == (20, 40)


def test_sources_can_be_bytes_dicts_and_pil_images(awkward):
    data = (awkward / "cmyk.jpg").read_bytes()
    assert decode_rgb(data).size == (48, 40)
    assert decode_rgb({"bytes": data, "path": None}).size == (48, 40)
    assert decode_rgb({"bytes": None, "path": str(awkward / "cmyk.jpg")}).size == (48, 40)
    assert decode_rgb(Image.open(io.BytesIO(data))).mode == "RGB"
    with pytest.raises(BadImage):
        decode_rgb({"bytes": None, "path": None})


def test_jpeg_draft_decodes_at_reduced_scale_but_never_below_the_target():
    big = jpeg_bytes(size=(1024, 768))
    full = decode_rgb(big)
    reduced = decode_rgb(big, min_side=224)
    assert full.size == (1024, 768)
    assert reduced.size == (512, 384)  # DCT scaling by 1/2; 1/4 (256x192) would go below 224
    assert min(decode_rgb(big, min_side=100).size) >= 100 and decode_rgb(big, min_side=100).size == (256, 192)
    assert decode_rgb(big, min_side=500).size == (1024, 768)  # no room to shrink
    # same picture: mean colour within a few levels of the full decode
    assert np.abs(np.asarray(reduced).mean((0, 1)) - np.asarray(full).mean((0, 1))).max() < 3
