"""Decode any image file into RGB, fast and safely.

PIL decodes; this module only adds what PIL leaves to the caller: JPEG DCT-domain
downscaling (``Image.draft``) when the target size allows, a correct RGB conversion for
every mode (alpha composited on white, 16-bit scaled, CMYK and palette converted, EXIF
orientation applied), and limits checked from the header before decoding, so a decompression
bomb or a hostile shape is an error instead of a hang or gigabytes of memory:

- a pixel limit (width x height);
- an aspect-ratio limit (longer side / shorter side <= ``MAX_ASPECT``): the eval transform scales
  the SHORTER side to the model size before cropping, so a W x 1 strip of a few hundred bytes would
  become 3 * size^2 * W bytes;
- a memory budget (``max_bytes``): ``decode_cost`` is an upper bound on the bytes one image holds at
  once from decoding through the eval resize (decoded pixels in their own mode, the RGB conversion,
  the uint8 tensor, the resized copy). Over the budget is ``TooLarge``, before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # PIL's own default decompression-bomb limit
MAX_ASPECT = 20.0  # longer / shorter side: wider panoramas are rare, and each unit costs 3 * size^2 bytes in the resize
# bytes one image may hold at once (decode_cost): lets an 89-megapixel RGB file through (about 14 bytes a pixel),
# refuses an RGBA or 16-bit one of the same size (up to 30 bytes a pixel with the alpha compositing)
MAX_DECODE_BYTES = 2 * 1024**3
UNREADABLE = "cannot identify image file (not an image, or an unsupported format)"
# PIL names an in-memory file by its repr ("<_io.BytesIO object at 0x7ff0...>"): an address, no help to anyone
STREAM_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class BadImage(Exception):
    """An image that cannot be decoded; the message says why."""


class TooLarge(BadImage):
    """An image over the pixel, aspect-ratio or memory limit (found from its header, before decoding)."""


# bytes a pixel takes in PIL's storage: one-band 8-bit modes 1, 16-bit greyscale 2, everything else 4
# (PIL keeps RGB, LA and the 32-bit modes in 4 bytes a pixel)
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# what _to_rgb allocates beside the decoded image, per pixel: float32 copy + L + RGB for deep greyscale;
# RGBA copy, white background, composite and RGB for alpha and palette (palette may carry transparency)
_CONVERT = {"RGB": 0, "I": 13, "F": 13, "I;16": 9, "I;16B": 9, "I;16L": 9, "I;16N": 9}
_CONVERT_ALPHA = 16


def decode_cost(width: int, height: int, mode: str, min_side: int | None = None) -> int:
    """Upper bound on the bytes decoding one ``width`` x ``height`` image of PIL ``mode`` holds at once,
    and, with ``min_side`` (the model size), the eval transform's resize of its shorter side to it.

    Per pixel: the decoded image twice (EXIF transposition copies it), the RGB conversion, the uint8
    tensor (3) and its channels-last copy (3); then the resized image, 3 * min_side * (scaled longer side)."""
    stored = _STORED.get(mode, 4)
    convert = _CONVERT.get(mode, _CONVERT_ALPHA if mode in ("RGBA", "LA", "PA", "P") else 4)
    cost = width * height * (2 * stored + convert + 6)
    short, long = sorted((max(1, width), max(1, height)))
    if min_side:
        cost += 3 * min_side * (min_side * long // short + 1)
    return cost


def check_shape(
    width: int, height: int, mode: str, min_side: int | None, max_aspect: float, max_bytes: int | None
) -> None:
    """TooLarge for an extreme aspect ratio or an image over the memory budget, from its header alone."""
    short, long = sorted((width, height))
    if short < 1 or long / short > max_aspect:
        raise TooLarge(f"{width}x{height}: aspect ratio over the {max_aspect:g}:1 limit")
    if max_bytes is not None:
        cost = decode_cost(width, height, mode, min_side)
        if cost > max_bytes:
            raise TooLarge(
                f"{width}x{height} {mode} would take {cost:,} bytes to decode, over the {max_bytes:,}-byte limit"
            )


def source_name(source: Any) -> str:
    """A readable identifier for an image source (path, datasets dict, bytes)."""
    if isinstance(source, dict):
        return source.get("path") or f"<{len(source.get('bytes') or b'')} bytes>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):  # datasets' Image(decode=False) value
        data = source.get("bytes")
        source = io.BytesIO(data) if data else source.get("path")
    elif isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if source is None:
        raise BadImage("no image data")
    if isinstance(source, (str, os.PathLike)):
        check_regular(source)
    return Image.open(source)


def check_regular(path: str | os.PathLike) -> None:
    """Only regular files are data: opening a FIFO blocks forever and a device streams without end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise BadImage(f"{type(err).__name__}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise BadImage("not a regular file (a FIFO, device, socket or folder): not read")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/32-bit greyscale: PIL's convert("L") clips at 255 instead of scaling.
        # I;16 is 0..65535 by definition; I and F carry no range, so judge from the peak.
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_rgb(
    source: Any,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
    max_bytes: int | None = MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode to an RGB PIL image whose shorter side stays >= ``min_side`` when JPEG
    draft mode can shrink it. Raises BadImage for anything unreadable, TooLarge (before decoding)
    for an image over ``max_pixels``, ``max_aspect`` or ``max_bytes`` (see ``decode_cost``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(source)
            width, height = img.size
            if width * height > max_pixels:
                raise TooLarge(f"{width}x{height} is over the {max_pixels:,}-pixel limit")
            if min_side and img.format == "JPEG":
                shrink = min(width, height) / min_side
                if shrink >= 2:
                    img.draft("RGB", (max(1, int(width / shrink)), max(1, int(height / shrink))))
            # after draft: its DCT scaling is what makes a large JPEG cheap
            check_shape(*img.size, img.mode, min_side, max_aspect, max_bytes)
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
            if rgb is not img and not isinstance(source, Image.Image):
                img.close()  # multi-frame files (GIF, TIFF) keep their file open until closed
            return rgb
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise TooLarge(STREAM_REPR.sub("", str(err))) from None
    except UnidentifiedImageError:  # PIL's message is the stream's repr, which says nothing
        raise BadImage(UNREADABLE) from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        TypeError,
    ) as err:
        raise BadImage(f"{type(err).__name__}: {STREAM_REPR.sub('', str(err))}") from None


def list_images(folder: str | Path) -> list[Path]:
    """Every file with an image extension below ``folder``, sorted."""
    # not only regular files: a FIFO or device named like an image is listed, then skipped as unreadable
    return sorted(p for p in Path(folder).rglob("*") if not p.is_dir() and p.suffix.lower() in IMAGE_EXTENSIONS)
