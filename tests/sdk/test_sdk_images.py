"""Image loading: every layout and depth works; sizes and non-images get clear errors."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from megaportraits.errors import InputError, MegaportraitsError
from megaportraits.images import as_rgb_image, header_size, load_image, save_image


def test_grayscale_rgba_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert np.array_equal(load_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    bgra = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    bgra[:, :25, 3] = 0
    bgra[:, 25:, 3] = 255
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = load_image(tmp_path / "rgba.png")
    assert (rgb[:, :25] == 255).all()  # transparent: composited on white
    assert np.array_equal(rgb[:, 25:], bgra[:, 25:, 2::-1])

    deep = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    expected = np.round(deep[:, :, ::-1] / 65535.0 * 255.0).astype(np.uint8)
    assert np.abs(load_image(tmp_path / "deep.png").astype(int) - expected).max() <= 1


def test_arrays_from_python():
    assert as_rgb_image(np.full((40, 40), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(InputError, match="NaN"):
        as_rgb_image(np.full((40, 40, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="shape"):
        as_rgb_image(np.zeros((40, 40, 5), np.uint8))


def _png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
    return path


def test_sizes(tmp_path):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match="is 1x1 pixels, too small to hold a face"):
        load_image(tmp_path / "tiny.png")
    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 30000)
    with pytest.raises(InputError, match="is 40000x30000 pixels, larger than this SDK accepts"):
        load_image(bomb)
    wide = _png_header_only(tmp_path / "wide.png", 20000, 100)
    with pytest.raises(InputError, match="at most 16384 px a side"):
        load_image(wide)


def test_jpeg_header_size(tmp_path):
    ok, data = cv2.imencode(".jpg", np.zeros((37, 53, 3), np.uint8))
    assert header_size(data.tobytes()) == (53, 37)


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"), (b"", "is empty"), (b"hello, not an image", "is not an image this SDK can read")])
def test_not_images(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(path, "source image")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        load_image(tmp_path)


def test_save_is_atomic(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    save_image(tmp_path / "out.png", img)
    assert np.array_equal(load_image(tmp_path / "out.png"), img)
    with pytest.raises(InputError, match="extension"):
        save_image(tmp_path / "out.nope", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_nothing_else(tmp_path):
    """A real failure in the middle of writing: the file-size limit (RLIMIT_FSIZE, what a full
    disk or a quota does to a writer) stops the encoded PNG after 4 KiB. The file that was
    there is untouched, no partial file is left, and the error is one line naming the file."""
    import resource
    import signal

    old = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    new = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # ~12 KiB as PNG
    save_image(tmp_path / "out.png", old)
    before = (tmp_path / "out.png").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        with pytest.raises(MegaportraitsError) as failure:
            save_image(tmp_path / "out.png", new)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    message = str(failure.value)
    assert "\n" not in message and "out.png" in message, message
    assert (tmp_path / "out.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    save_image(tmp_path / "out.png", new)  # and without the limit it works
    assert np.array_equal(load_image(tmp_path / "out.png"), new)
