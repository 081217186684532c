"""Helpers for tests/data/test_data.py and tests/data/test_crops.py: small image files of every awkward
kind (modes, bit depths, EXIF, truncated, corrupt, decompression-bomb headers)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def skin_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [h, w, 3] textured skin-like photo (enough contrast not to be 'low contrast')."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 150, 120], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 0.75 + 0.25 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    img = base * shade[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def blob_mask(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def save(path: Path, array, mode: str | None = None, fmt: str | None = None, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array))
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    im.save(path, format=fmt, **kw)
    return path


def png_raw(array: np.ndarray, bitdepth: int, colortype: int) -> bytes:
    """PNG bytes written by hand (Pillow cannot write 16-bit RGB): colortype 0 grey, 2 RGB."""
    h, w = array.shape[:2]
    dt = ">u2" if bitdepth == 16 else "u1"
    raw = b"".join(b"\x00" + np.ascontiguousarray(array[y]).astype(dt).tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny file whose PNG header claims ``side`` x ``side`` pixels (no real data)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated(path: Path, array, fmt: str = "PNG", keep: float = 0.5) -> Path:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def jpeg_with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=95, exif=exif)
    return path
