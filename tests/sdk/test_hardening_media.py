"""Issue 12, what the readers take in: orientation (4), truncated videos (5), decompression
bombs of every format (8), variable frame rates (11), float arrays (14), odd frames and frame
rates (15)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from megaportraits import images as images_mod
from megaportraits.animator import Animator
from megaportraits.errors import InputError, MegaportraitsError
from megaportraits.images import header_size, load_image
from megaportraits.video import DamagedVideoWarning, VideoReader

from drawn_faces import draw_face
from hardening_inputs import (audio_seconds, count_frames, digest, driver_frames, frame_times, jpeg_with_orientation,
                              png_with_orientation, tiff_with_orientation, webp_with_orientation, run_cli, temporary_files, tiff_header, vfr_video, webp_header, write_rgb)
from media import write_video


# ---- 4: orientation ------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_4_exif_orientation_matches_opencvs_own_reading(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    stored = cv2.GaussianBlur(stored, (7, 7), 3)  # smooth: JPEG keeps it close
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_with_orientation(stored, orientation))
    # OpenCV's IMREAD_COLOR applies EXIF orientation itself: an independent reference
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    got = load_image(path)
    assert got.shape == expected.shape == ((48, 80, 3) if orientation <= 4 else (80, 48, 3))
    assert np.array_equal(got, expected)


# how each EXIF orientation is shown, written from the EXIF specification's table
SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a[:, ::-1], -1),
         8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_4_tiff_orientation_is_applied_once(tmp_path, orientation, big_endian):
    stored = np.random.default_rng(orientation).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff_with_orientation(stored, orientation, big_endian))
    assert np.array_equal(load_image(path), SHOWN[orientation](stored))
    if orientation <= 4:  # OpenCV turns these itself (and fails on 5-8): an independent check
        assert np.array_equal(load_image(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1])


@pytest.mark.parametrize("kind", ["png", "webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_4_png_and_webp_exif_orientation(tmp_path, orientation, kind):
    stored = np.random.default_rng(orientation).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    path = tmp_path / f"photo.{kind}"
    path.write_bytes((png_with_orientation if kind == "png" else webp_with_orientation)(stored, orientation))
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]  # OpenCV applies EXIF here
    assert np.array_equal(load_image(path), SHOWN[orientation](stored)) and np.array_equal(expected, SHOWN[orientation](stored))


def test_4_a_sideways_phone_photo_finds_its_face(toy, tmp_path):
    upright = draw_face(size=256)
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_with_orientation(np.rot90(upright, 1), 6))  # stored turned left; EXIF 6 turns it back
    avatar = toy.prepare(path)
    assert avatar.image.shape == (256, 256, 3)
    assert np.abs(avatar.image.astype(int) - upright).mean() < 3


def test_4_a_rotated_phone_video_is_read_upright(tmp_path):
    upright = driver_frames(4)
    stored = [np.ascontiguousarray(np.rot90(f, -1)) for f in upright]  # display turns it back by +90
    path = vfr_video(tmp_path / "phone.mp4", [0, 0.04, 0.08, 0.12], rotation=90, frames=stored)
    with VideoReader(path) as reader:
        frames = list(reader)
    for got, want in zip(frames, upright):
        assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 4


@pytest.mark.parametrize("rotation", [90, 180, 270, -90])
def test_4_every_quarter_turn_is_undone(tmp_path, rotation):
    upright = driver_frames(2)
    stored = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) for f in upright]  # what the display turns back
    path = vfr_video(tmp_path / "turned.mp4", [0, 0.04], rotation=rotation, frames=stored)
    with VideoReader(path) as reader:
        for got, want in zip(reader, upright):
            assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 4


def test_4_cli_animates_a_rotated_driver(media, toy_bundle, tmp_path, capsys):
    stored = [np.ascontiguousarray(np.rot90(f, -1)) for f in driver_frames(6)]
    driver = vfr_video(tmp_path / "phone.mp4", [i / 25 for i in range(6)], rotation=90, frames=stored)
    code, _, err = run_cli(capsys, "animate", media["source"], driver, "-o", tmp_path / "out.mp4",
                           "--bundle", toy_bundle, "--quiet")
    assert code == 0 and "wrote" in err and count_frames(tmp_path / "out.mp4") == 6, err


# ---- 5: a truncated driver -------------------------------------------------------------
def test_5_truncated_mp4_is_kept_with_a_clear_warning(media, toy_bundle, tmp_path, capsys):
    full = write_video(tmp_path / "full.mp4", driver_frames(60), fps=25, options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 3 // 10])  # index first, samples cut at 30 %
    with VideoReader(cut) as reader, pytest.warns(DamagedVideoWarning) as caught:
        decoded = sum(1 for _ in reader)
    assert 0 < decoded < 60 and reader.damage is not None
    assert str(caught[0].message).startswith(f"driver video {str(cut)!r} is truncated or damaged: ")
    before = digest([cut])
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "animate", media["source"], cut, "-o", out, "--bundle", toy_bundle, "--quiet")
    lines = err.splitlines()
    assert code == 0 and len(lines) == 2, err
    assert lines[0].startswith("megaportraits: warning: driver video") and "is truncated or damaged" in lines[0]
    assert f"the output holds the {decoded} frame(s) that could be decoded" in lines[0]
    assert lines[1] == f"megaportraits: wrote {out} ({decoded} frames at 25 fps, no audio, the driver is truncated: see the warning)"
    assert count_frames(out) == decoded and digest([cut]) == before and temporary_files(tmp_path) == []


def test_5_a_whole_video_gives_no_warning(media, recwarn):
    with VideoReader(media["driver"]) as reader:
        assert sum(1 for _ in reader) == 12 and reader.damage is None
    assert not [w for w in recwarn if issubclass(w.category, DamagedVideoWarning)]


# ---- 8: decompression bombs of every format ------------------------------------------------
BOMBS = {
    "webp": lambda: webp_header(16383, 16383),
    "tiff": lambda: tiff_header(16000, 16000),
    "bmp": lambda: b"BM" + bytes(12) + (40).to_bytes(4, "little") + (20000).to_bytes(4, "little")
    + (20000).to_bytes(4, "little", signed=True) + bytes(64),
    "ppm": lambda: b"P6\n# big\n20000 20000\n255\n" + bytes(64),
    "png": lambda: b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (20000).to_bytes(4, "big") * 2 + bytes(64),
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_8_bombs_are_refused_before_decoding(tmp_path, monkeypatch, kind):
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(BOMBS[kind]())
    monkeypatch.setattr(images_mod.cv2, "imdecode", lambda *a: pytest.fail("decoding began"))
    with pytest.raises(InputError, match=r"is \d+x\d+ pixels, larger than this SDK accepts"):
        load_image(path, "source image")


def test_8_a_huge_video_is_refused_before_a_frame_is_decoded(tmp_path):
    path = write_video(tmp_path / "wide.mkv", [np.zeros((16, 17000, 3), np.uint8)], fps=25, codec="ffv1", pix_fmt="yuv444p")
    with pytest.raises(InputError, match=r"is 17000x16 pixels, larger than this SDK accepts"):
        VideoReader(path)


def test_8_unmeasurable_formats_are_not_decoded(tmp_path, monkeypatch):
    path = tmp_path / "odd.png"
    ok, hdr = cv2.imencode(".hdr", np.ones((40, 40, 3), np.float32))  # OpenCV decodes it, we cannot measure it
    assert ok and cv2.imdecode(hdr, cv2.IMREAD_UNCHANGED).shape == (40, 40, 3)
    path.write_bytes(hdr.tobytes())
    monkeypatch.setattr(images_mod.cv2, "imdecode", lambda *a: pytest.fail("decoding began"))
    with pytest.raises(InputError, match="is not an image this SDK can read"):
        load_image(path)


@pytest.mark.parametrize("extension,params", [(".png", []), (".jpg", []), (".bmp", []), (".tif", []), (".ppm", []),
                                              (".pgm", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
                                              (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])])
def test_8_header_sizes_match_the_decoded_sizes(extension, params):
    rng = np.random.default_rng(3)
    for height, width in ((33, 47), (64, 40)):
        image = rng.integers(0, 256, (height, width) if extension == ".pgm" else (height, width, 3), dtype=np.uint8)
        ok, data = cv2.imencode(extension, image, params)
        assert ok
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        assert header_size(data.tobytes()) == (decoded.shape[1], decoded.shape[0]) == (width, height)


def test_8_webp_with_alpha_is_measured(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (50, 70, 4), dtype=np.uint8)
    ok, data = cv2.imencode(".webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, 90])
    assert ok and header_size(data.tobytes()) == (70, 50)


# ---- 11: variable frame rate -----------------------------------------------------------
def test_11_vfr_driver_keeps_its_timing_and_audio(media, toy_bundle, tmp_path, capsys):
    times = [0.0, 0.04, 0.08, 0.30, 0.34, 0.38, 0.90, 0.94, 1.50, 1.54]
    driver = vfr_video(tmp_path / "vfr.mp4", times, audio_seconds=1.58)
    assert np.allclose(frame_times(driver), times, atol=1e-3)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "animate", media["source"], driver, "-o", out, "--bundle", toy_bundle, "--quiet")
    assert code == 0, err
    assert np.allclose(frame_times(out), times, atol=1e-3)
    # the audio runs to the end of the last frame (1.54 s + its 0.04 s), not to 10 frames / rate
    assert abs(audio_seconds(out) - 1.58) < 0.08


# ---- 14: float arrays ----------------------------------------------------------------------
def test_14_float_arrays_in_0_255_are_refused_with_the_reason(toy):
    face = draw_face().astype(np.float32)
    for call in (lambda: toy.prepare(face), lambda: list(toy.stream(toy.prepare(face / 255), [face]))):
        with pytest.raises(InputError, match=r"is a float image with values from [\d.]+ to 2\d\d; float images "
                                             r"must lie in \[0, 1\]; for 0..255 values pass uint8 or divide by 255"):
            call()


def test_14_float_arrays_in_0_1_equal_uint8(toy):
    face = draw_face()
    by_uint8 = toy.animate_frame(toy.prepare(face), face)
    by_float = toy.animate_frame(toy.prepare(face / 255.0), face.astype(np.float64) / 255.0)
    assert np.array_equal(by_uint8, by_float)


# ---- 15: odd frames and frame rates ------------------------------------------------------
def test_15_empty_frames_and_bad_fps_are_one_clear_error(toy):
    avatar = toy.prepare(draw_face())
    with pytest.raises(InputError, match="driver frame is 0x0 pixels, too small to hold a face"):
        list(toy.stream(avatar, [np.zeros((0, 0, 3), np.uint8)]))
    for fps in (0, -5, float("nan"), float("inf")):
        with pytest.raises(InputError, match="fps must be a positive frame rate of at most 1000"):
            list(toy.stream(avatar, [draw_face()], fps=fps))


def test_15_smoothing_needs_a_real_rate(toy_bundle):
    with Animator(toy_bundle, provider="cpu", smooth=True) as a:
        avatar = a.prepare(draw_face())
        with pytest.raises(InputError, match="fps must be a positive"):
            a.performance(avatar, fps=0)
        assert a.performance(avatar, fps=12.5)(draw_face()).shape == (256, 256, 3)
