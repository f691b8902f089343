"""Decode any image file into RGB, fast and safely.

PIL decodes; this module only adds what PIL leaves to the caller: JPEG DCT-domain
downscaling (``Image.draft``) when the target size allows, a correct RGB conversion for
every mode (alpha composited on white, 16-bit scaled, CMYK and palette converted, EXIF
orientation applied), and a pixel limit checked from the header before decoding, so a
decompression bomb is an error instead of a hang.
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
UNREADABLE = "cannot identify image file (not an image, or an unsupported format)"
# PIL names an in-memory file by its repr ("<_io.BytesIO object at 0x7ff0...>"): an address, no help to anyone
STREAM_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class BadImage(Exception):
    """An image that cannot be decoded; the message says why."""


class TooLarge(BadImage):
    """An image over the pixel limit (found from its header, before decoding)."""


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


def decode_rgb(source: Any, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode to an RGB PIL image whose shorter side stays >= ``min_side`` when JPEG
    draft mode can shrink it. Raises BadImage for anything unreadable."""
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
