"""Reading and writing still images: any common format, depth and channel layout, to RGB uint8.

One reader (:func:`load_image`) for every format the SDK lists (:data:`IMAGE_EXTENSIONS`):

* the decoded size is measured from the file's header before anything is decoded
  (:func:`header_size`: PNG, JPEG, WebP, TIFF, BMP, PNM), so a decompression bomb (a 10 KB
  WebP of 16383^2 pixels) is refused before memory is allocated; a file whose size cannot be
  measured is refused too, rather than decoded blind;
* the EXIF orientation (JPEG, PNG, WebP, TIFF) is applied, so a phone photo comes out upright
  (:func:`exif_orientation`);
* grayscale, RGBA (composited on white) and 16-bit images simply work.

Arrays given to the Python API follow one rule (:func:`to_rgb8`): uint8 is 0..255, uint16 is
0..65535, float is 0..1. A float array outside [0, 1] (beyond rounding, :data:`FLOAT_SLACK`),
such as one in 0..255, is refused with a message saying so, not clipped to white.

Images are written by :func:`save_image` through the shared output guard and a temporary
file; only formats that can hold an RGB image are offered (:data:`OUTPUT_IMAGE_EXTENSIONS`:
PGM holds gray only, so it is read but not written).
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from .errors import InputError
from .files import atomic_output, check_output_path, check_readable_file

MIN_SIDE = 32            # a face needs at least this many pixels across
MAX_SIDE = 16384
MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
OUTPUT_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pnm")
#: how far a float image may stray outside [0, 1] (resampling overshoot) before it is refused
FLOAT_SLACK = 0.01
_ORIENTATION_TAG = 0x0112


def check_size(width: int, height: int, what: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{what} is {width}x{height} pixels, too small to hold a face "
                         f"(at least {MIN_SIDE}x{MIN_SIDE} needed)")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"{what} is {width}x{height} pixels, larger than this SDK accepts "
                         f"(at most {MAX_SIDE} px a side and {MAX_PIXELS // 1_000_000} MP); downscale it first")


# ---- measuring before decoding -----------------------------------------------------------
def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header of a PNG, JPEG, WebP, TIFF, BMP or PNM file
    without decoding it; None when the format is not one of these or the header is cut."""
    try:
        for measure in (_png_size, _jpeg_size, _webp_size, _tiff_size, _bmp_size, _pnm_size):
            size = measure(data)
            if size is not None:
                return size
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png_size(data: bytes):
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _jpeg_segments(data: bytes):
    """(marker, payload start, payload end) of a JPEG's header segments, up to the scan."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        yield marker, i + 4, i + 2 + length
        i += 2 + length


def _jpeg_size(data: bytes):
    if data[:2] != b"\xff\xd8":
        return None
    for marker, start, _ in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[start + 1:start + 5])
            return width, height
    return None


def _riff_chunks(data: bytes):
    i = 12
    while i + 8 <= len(data):
        kind, length = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        yield kind, i + 8, i + 8 + length
        i += 8 + length + (length & 1)


def _webp_size(data: bytes):
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    for kind, start, _ in _riff_chunks(data):
        if kind == b"VP8X":
            width = int.from_bytes(data[start + 4:start + 7], "little") + 1
            height = int.from_bytes(data[start + 7:start + 10], "little") + 1
            return width, height
        if kind == b"VP8L" and data[start] == 0x2F:
            bits = struct.unpack("<I", data[start + 1:start + 5])[0]
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 " and data[start + 3:start + 6] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", data[start + 6:start + 10])
            return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_tags(data: bytes, base: int = 0, where: dict | None = None) -> dict | None:
    """The first IFD's {tag: first value} of a TIFF structure starting at ``base`` (a TIFF
    file, or the EXIF block of another format); None if it is not one. ``where``, when
    given, receives {tag: (byte offset of the value, struct format)}."""
    order = {b"II": "<", b"MM": ">"}.get(data[base:base + 2])
    if order is None or struct.unpack(order + "H", data[base + 2:base + 4])[0] != 42:
        return None
    offset = base + struct.unpack(order + "I", data[base + 4:base + 8])[0]
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    tags = {}
    for k in range(count):
        entry = offset + 2 + 12 * k
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        code = {3: "H", 4: "I"}.get(kind)  # SHORT, LONG
        if code is not None:
            tags[tag] = struct.unpack(order + code, data[entry + 8:entry + 8 + struct.calcsize(code)])[0]
            if where is not None:
                where[tag] = (entry + 8, order + code)
    return tags


def _tiff_size(data: bytes):
    tags = _tiff_tags(data)
    if tags is None:
        return None
    if 256 not in tags or 257 not in tags:
        raise ValueError("TIFF without its size")
    return tags[256], tags[257]


def _bmp_size(data: bytes):
    if data[:2] != b"BM":
        return None
    if struct.unpack("<I", data[14:18])[0] == 12:  # the old OS/2 header
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


_PNM_HEADER = re.compile(rb"P[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)")


def _pnm_size(data: bytes):
    if data[:1] != b"P":
        return None
    match = _PNM_HEADER.match(data[:1024])
    if match:
        return int(match.group(1)), int(match.group(2))
    if data[:3] == b"P7\n":  # PAM: WIDTH and HEIGHT lines
        head = data[:1024]
        width, height = re.search(rb"\nWIDTH\s+(\d+)", head), re.search(rb"\nHEIGHT\s+(\d+)", head)
        if width and height:
            return int(width.group(1)), int(height.group(1))
    return None


# ---- orientation -------------------------------------------------------------------------
def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8; 1 = as stored) of a JPEG, PNG, WebP or TIFF file."""
    try:
        tags = _exif_tags(data)
    except (struct.error, IndexError, ValueError):
        return 1
    value = (tags or {}).get(_ORIENTATION_TAG, 1)
    return value if 1 <= value <= 8 else 1


def _exif_tags(data: bytes) -> dict | None:
    if data[:2] == b"\xff\xd8":
        for marker, start, end in _jpeg_segments(data):
            if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
                return _tiff_tags(data[start + 6:end])
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[i:i + 8])
            if kind == b"eXIf":
                return _tiff_tags(data[i + 8:i + 8 + length])
            if kind in (b"IDAT", b"IEND"):
                return None
            i += 12 + length
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        for kind, start, end in _riff_chunks(data):
            if kind == b"EXIF":
                block = data[start:end]
                return _tiff_tags(block[6:] if block[:6] == b"Exif\x00\x00" else block)
        return None
    return _tiff_tags(data)


def _tiff_stored_as_is(data: bytes) -> bytes:
    """A TIFF file with its orientation tag set to 1. OpenCV's TIFF decoder turns the image
    itself (even with IMREAD_UNCHANGED) and fails outright on the quarter turns, 5 to 8; so it
    is given the pixels as stored and :func:`apply_orientation` turns them, as for every format."""
    where: dict = {}
    try:
        _tiff_tags(data, where=where)
    except (struct.error, IndexError, ValueError):
        return data
    if _ORIENTATION_TAG not in where:
        return data
    offset, code = where[_ORIENTATION_TAG]
    patched = bytearray(data)
    struct.pack_into(code, patched, offset, 1)
    return bytes(patched)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned the way EXIF ``orientation`` says they are to be shown."""
    if orientation in (2, 4, 5, 7):  # mirrored: undo the mirror first, then rotate as 1/3/8/6
        image = image[:, ::-1]
    turns = {1: 0, 2: 0, 3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}[orientation]  # quarter turns anticlockwise
    return np.ascontiguousarray(np.rot90(image, turns)) if turns or orientation != 1 else image


# ---- arrays --------------------------------------------------------------------------------
def to_rgb8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Any decoded array (gray, gray+alpha, BGR(A) as OpenCV gives it, 8/16-bit or float) to
    contiguous RGB uint8. Arrays passed through the Python API are taken as RGB(A) already;
    use :func:`from_cv2` for OpenCV's BGR order. Float arrays must be in [0, 1]."""
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
        if image.size == 0:
            return image.astype(np.float32)
        if not np.all(np.isfinite(image)):
            raise InputError(f"{what} holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
            hint = "; for 0..255 values pass uint8 or divide by 255" if high > 1.0 + FLOAT_SLACK else ""
            raise InputError(f"{what} is a float image with values from {low:g} to {high:g}; float images "
                             f"must lie in [0, 1]{hint}")
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise InputError(f"{what} has pixel type {image.dtype}; expected uint8, uint16 or float in [0, 1]")


def from_cv2(image: np.ndarray, what: str = "image") -> np.ndarray:
    """OpenCV's BGR / BGRA decode result to RGB uint8."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    return to_rgb8(image, what)


# ---- files ---------------------------------------------------------------------------------
def load_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Decode an image file to upright RGB uint8, or raise :class:`InputError` with the reason.
    The size is checked from the header before decoding; a file whose size cannot be read
    from its header is not decoded."""
    path = check_readable_file(path, what)
    data = path.read_bytes()
    label = f"{what} {str(path)!r}"
    size = header_size(data)
    if size is None:
        raise InputError(f"{label} is not an image this SDK can read "
                         f"(supported: {', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    check_size(*size, what=label)
    orientation = exif_orientation(data)
    if orientation != 1 and data[:2] in (b"II", b"MM"):
        data = _tiff_stored_as_is(data)
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. beyond OpenCV's own pixel limit
        decoded = None
    if decoded is None or decoded.size == 0:
        raise InputError(f"{label} is damaged: its header says {size[0]}x{size[1]} pixels but it "
                         "cannot be decoded")
    if decoded.ndim == 3 and decoded.shape[2] > 4:  # multi-sample TIFF: the first four are colour
        decoded = decoded[:, :, :4]
    decoded = apply_orientation(decoded, orientation)
    check_size(decoded.shape[1], decoded.shape[0], what=label)
    return from_cv2(decoded, label)


def as_rgb_image(image, what: str = "image") -> np.ndarray:
    """A path or an array (RGB / RGBA / gray, any depth) to a checked RGB uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, what)
    rgb = to_rgb8(image, what)
    check_size(rgb.shape[1], rgb.shape[0], what=what)
    return rgb


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def save_image(path: str | os.PathLike, rgb: np.ndarray,
               inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Encode an RGB uint8 image by the name's extension (:data:`OUTPUT_IMAGE_EXTENSIONS`) and
    write it through a temporary file, so a failure (a full disk) leaves nothing behind.
    ``path`` passes the shared output guard first: it may be none of ``inputs``
    (``{"source image": path, ...}``). An existing file there is replaced."""
    path = check_output_path(path, OUTPUT_IMAGE_EXTENSIONS, inputs)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise InputError(f"save_image takes an H x W x 3 uint8 RGB image, not {rgb.dtype} {rgb.shape}")
    try:
        ok, encoded = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(rgb[:, :, ::-1]))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot encode a {rgb.shape[1]}x{rgb.shape[0]} image as {path.suffix!r}; use .png or .jpg")
    with atomic_output(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path
