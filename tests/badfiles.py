"""Awkward image files, written on demand: the unreadable ones a real folder collects and
the readable ones in unusual modes that a naive ``convert("RGB")`` gets wrong.

``write_awkward(folder)`` writes them all and returns ``(unreadable, readable)`` name lists.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> what makes it awkward
UNREADABLE = {
    "truncated.jpg": "a JPEG cut off half-way",
    "empty.jpg": "zero bytes",
    "notes.png": "a text file with an image extension",
    "bomb.png": "a 30000x30000 PNG header: over PIL's decompression-bomb limit",
}
READABLE = {
    "cmyk.jpg": "CMYK JPEG, pure red",
    "rgba.png": "RGBA PNG: left half transparent, right half half-transparent red",
    "la.png": "greyscale + alpha PNG",
    "palette.gif": "palette GIF with a transparent index",
    "deep16.png": "16-bit greyscale PNG",
    "tiny.png": "3x2 pixels, smaller than any crop",
    "rotated.jpg": "40x20 JPEG with EXIF orientation 6 (shown as 20x40)",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels with almost no data: the
    real check (size from the header, before decoding) runs without a giant file."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bytes(colour=(200, 40, 40), size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_awkward(folder: Path, prefix: str = "") -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    p = lambda name: folder / f"{prefix}{name}"  # noqa: E731

    whole = jpeg_bytes()
    p("truncated.jpg").write_bytes(whole[: len(whole) // 2])
    p("empty.jpg").write_bytes(b"")
    p("notes.png").write_text("these are not pixels\n" * 20)
    p("bomb.png").write_bytes(bomb_png())

    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(p("cmyk.jpg"), quality=95)
    rgba = np.zeros((32, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 0)  # fully transparent: white once composited
    rgba[:, 20:] = (255, 0, 0, 128)  # half red over white: about (255, 127, 127)
    Image.fromarray(rgba, "RGBA").save(p("rgba.png"))
    la = np.zeros((32, 40, 2), np.uint8)
    la[..., 0], la[..., 1] = 0, 255  # opaque black
    la[:, :20, 1] = 0  # left half transparent: white
    Image.fromarray(la, "LA").save(p("la.png"))
    pal = Image.new("P", (40, 32), 1)
    pal.putpalette([0, 0, 0, 40, 180, 60] + [0, 0, 0] * 254)
    pal.paste(0, (0, 0, 20, 32))
    pal.save(p("palette.gif"), transparency=0)  # index 0 transparent: white; index 1 green
    deep = np.full((32, 40), 32768, np.uint16)
    deep[:, 20:] = 65535
    Image.fromarray(deep).save(p("deep16.png"))  # mid grey and white, not both clipped to 255
    Image.fromarray(np.full((2, 3, 3), (40, 60, 200), np.uint8)).save(p("tiny.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(np.full((20, 40, 3), (40, 180, 60), np.uint8)).save(p("rotated.jpg"), exif=exif)
    return [f"{prefix}{n}" for n in UNREADABLE], [f"{prefix}{n}" for n in READABLE]
