"""Reading and writing still images: any common format, depth and channel layout, to RGB uint8.

Grayscale, RGBA (composited on white) and 16-bit images simply work. Images too small to hold a
face or too large to decode safely are refused with a clear message; for PNG and JPEG the size
is read from the header, so a decompression bomb is refused before it is decoded.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .files import atomic_output, check_readable_file

MIN_SIDE = 32            # a face needs at least this many pixels across
MAX_SIDE = 16384
MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")


def check_size(width: int, height: int, what: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{what} is {width}x{height} pixels, too small to hold a face "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} needed)")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"{what} is {width}x{height} pixels, larger than this SDK accepts "
                         f"(at most {MAX_SIDE} px a side and {MAX_PIXELS // 1_000_000} MP); downscale it first")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def to_rgb8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Any decoded array (gray, gray+alpha, BGR(A) as OpenCV gives it, 8/16-bit or float) to
    contiguous RGB uint8. Arrays passed through the Python API are taken as RGB(A) already;
    use :func:`from_cv2` for OpenCV's BGR order."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (2, 3, 4):
        raise InputError(f"{what} has shape {image.shape}; expected H x W, H x W x 3 or H x W x 4")
    if image.shape[2] == 2:  # gray + alpha
        image = np.concatenate([np.repeat(image[:, :, :1], 3, axis=2), image[:, :, 1:]], axis=2)
    image = _to_unit_range(image, what)
    if image.shape[2] == 4:  # composite on white: transparent backgrounds become a plain one
        alpha = image[:, :, 3:4]
        image = image[:, :, :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _to_unit_range(image: np.ndarray, what: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise InputError(f"{what} holds NaN or infinite values")
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise InputError(f"{what} has pixel type {image.dtype}; expected uint8, uint16 or float in [0, 1]")


def from_cv2(image: np.ndarray, what: str = "image") -> np.ndarray:
    """OpenCV's BGR / BGRA decode result to RGB uint8."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    return to_rgb8(image, what)


def load_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Decode an image file to RGB uint8, or raise :class:`InputError` with the reason."""
    path = check_readable_file(path, what)
    data = path.read_bytes()
    size = header_size(data)
    if size is not None:
        check_size(*size, what=f"{what} {str(path)!r}")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. beyond OpenCV's own pixel limit
        decoded = None
    if decoded is None or decoded.size == 0:
        raise InputError(f"{what} {str(path)!r} is not an image this SDK can read "
                         f"(supported: {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    check_size(decoded.shape[1], decoded.shape[0], what=f"{what} {str(path)!r}")
    return from_cv2(decoded, f"{what} {str(path)!r}")


def as_rgb_image(image, what: str = "image") -> np.ndarray:
    """A path or an array (RGB / RGBA / gray, any depth) to a checked RGB uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, what)
    rgb = to_rgb8(image, what)
    check_size(rgb.shape[1], rgb.shape[0], what=what)
    return rgb


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Encode, then write through a temporary file so a failure leaves nothing behind."""
    path = Path(path)
    ext = path.suffix.lower() or ".png"
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write an image with extension {ext!r}; use .png or .jpg")
    with atomic_output(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path
