"""Issue 12: the CLI over a corpus of bad and odd inputs (sources, drivers, outputs, bundles,
options, signals). For every case: no traceback; either a non-zero exit with one line naming
the problem, or (valid but odd input) exit 0 and a correct output; no partial or temporary
file anywhere; every input file's bytes unchanged.

Everything runs in-process on the toy bundle and inputs of a few KB (90 cases; all 96 tests take
about 90 s on the shared two cores at load 12), except the signal cases, each a fresh process sending itself the
real signal.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np
import pytest
from onnx import helper

from megaportraits.files import TEMPORARY_NAME_EXTRA
from megaportraits.images import load_image

from drawn_faces import draw_face
from hardening_inputs import (bundle_with, count_frames, digest, driver_frames, driver_with_pose, jpeg_with_orientation,
                              run_cli, run_with_signal, temporary_files, tiff_header, vfr_video, webp_header, write_rgb)
from media import write_video


@dataclass
class Case:
    name: str
    argv: Callable  # (corpus dir, output dir) -> argv after "megaportraits"
    problem: str | None = None  # the error line must contain this; None: the run must succeed
    code: int = 1
    check: Callable | None = None  # (output dir, stderr) -> None, for successful runs
    setup: Callable | None = None  # (output dir) -> None, before the run
    stream: str = "err"  # where the problem is named ("out" for info's report)


def _animate(source, driver, output, *extra, bundle=True):
    def argv(c, o):
        args = ["animate", _at(c, source), _at(c, driver), "-o", _at(o, output) if isinstance(output, str) else output(c, o)]
        return args + (["--bundle", c / "toy"] if bundle else []) + ["--quiet", *extra]
    return argv


def _at(directory, name):
    return directory / name if isinstance(name, str) else name(directory)


def _video_ok(frames, replaced=False):
    def check(o, err):
        (out,) = [p for p in o.iterdir()]
        assert count_frames(out) == frames and ("replaced the existing file" in err) == replaced, err
    return check


def _image_ok(shape):
    def check(o, err):
        (out,) = [p for p in o.iterdir()]
        assert load_image(out).shape == shape, err
    return check


SRC, DRV = "source.png", "driver.mp4"
LONG = "n" * (255 - TEMPORARY_NAME_EXTRA - 4) + ".mp4"  # the longest name that fits
CASES = [
    # ---- sources
    Case("source-missing", _animate("nope.png", DRV, "o.mp4"), "source image"),
    Case("source-empty", _animate("empty.png", DRV, "o.mp4"), "is empty"),
    Case("source-directory", _animate("adir", DRV, "o.mp4"), "is not a file"),
    Case("source-text", _animate("text.png", DRV, "o.mp4"), "is not an image this SDK can read"),
    Case("source-1x1", _animate("tiny.png", DRV, "o.mp4"), "is 1x1 pixels, too small to hold a face"),
    Case("source-no-face", _animate("noise.png", DRV, "o.mp4"), "no face found in the source image"),
    Case("source-png-cut", _animate("cut.png", DRV, "o.mp4"), "is damaged: its header says 301x257 pixels"),
    Case("source-webp-bomb", _animate("bomb.webp", DRV, "o.mp4"), "is 16383x16383 pixels, larger than this SDK accepts"),
    Case("source-tiff-bomb", _animate("bomb.tiff", DRV, "o.mp4"), "is 16000x16000 pixels, larger than this SDK accepts"),
    Case("source-png-bomb", _animate("bomb.png", DRV, "o.mp4"), "is 20000x20000 pixels, larger than this SDK accepts"),
    Case("source-ppm-bomb", _animate("bomb.ppm", DRV, "o.mp4"), "is 20000x20000 pixels, larger than this SDK accepts"),
    Case("source-hdr", _animate("radiance.png", DRV, "o.mp4"), "is not an image this SDK can read"),
    Case("source-video-as-image", _animate("video.png", DRV, "o.mp4"), "is not an image this SDK can read"),
    Case("source-fifo", _animate("fifo.png", DRV, "o.mp4"), "is not a file"),
    Case("source-path-too-long", _animate(lambda c: Path("/" + "x" * 5000 + ".png"), DRV, "o.mp4"),
         "cannot be opened: File name too long"),
    Case("source-under-a-file", _animate(lambda c: c / SRC / "x.png", DRV, "o.mp4"), "cannot be opened: Not a directory"),
    Case("source-exif-rotated", _animate("phone.jpg", "driver.png", "o.png", "--absolute"), check=_image_ok((256, 256, 3))),
    Case("source-gray", _animate("gray.png", DRV, "o.mp4", "--max-frames", "3"), check=_video_ok(3)),
    Case("source-rgba", _animate("rgba.png", DRV, "o.mp4", "--max-frames", "3"), check=_video_ok(3)),
    Case("source-16bit", _animate("deep.png", DRV, "o.mp4", "--max-frames", "3"), check=_video_ok(3)),
    Case("source-tiff", _animate("source.tif", DRV, "o.mp4", "--max-frames", "2"), check=_video_ok(2)),
    Case("source-webp", _animate("source.webp", DRV, "o.mp4", "--max-frames", "2"), check=_video_ok(2)),
    Case("source-bmp", _animate("source.bmp", DRV, "o.mp4", "--max-frames", "2"), check=_video_ok(2)),
    # ---- drivers
    Case("driver-missing", _animate(SRC, "nope.mp4", "o.mp4"), "driver video"),
    Case("driver-empty", _animate(SRC, "empty.mp4", "o.mp4"), "is empty"),
    Case("driver-directory", _animate(SRC, "adir", "o.mp4"), "is not a file"),
    Case("driver-text", _animate(SRC, "text.mp4", "o.mp4"), "is not a video this SDK can read"),
    Case("driver-index-cut", _animate(SRC, "truncated.mp4", "o.mp4"), "is not a video this SDK can read"),
    Case("driver-no-samples", _animate(SRC, "noframes.mp4", "o.mp4"), "has no video track"),
    Case("driver-audio-only", _animate(SRC, "audio_only.mp4", "o.mp4"), "has no video track"),
    Case("driver-no-face", _animate(SRC, "noise.mp4", "o.mp4"), "no face found in the driver's first frame"),
    Case("driver-17000px-wide", _animate(SRC, "wide.mkv", "o.mp4"), "is 17000x16 pixels, larger than this SDK accepts"),
    Case("driver-16px-frames", _animate(SRC, "small.mp4", "o.mp4"), "driver frame is 16x16 pixels, too small"),
    Case("driver-image-no-face", _animate(SRC, "noise.png", "o.png"), "no face found in the driver's first frame"),
    Case("driver-image-1x1", _animate(SRC, "tiny.png", "o.png"), "is 1x1 pixels, too small to hold a face"),
    Case("driver-data-cut", _animate(SRC, "cut.mp4", "o.mp4"),
         check=lambda o, err: (_video_ok(count_frames(o / "o.mp4"))(o, err),
                               _assert("is truncated or damaged" in err and count_frames(o / "o.mp4") < 60, err))),
    Case("driver-fifo", _animate(SRC, "fifo.mp4", "o.mp4"), "is not a file"),
    Case("driver-gif", _animate(SRC, "anim.gif", "o.mp4"), check=_video_ok(4)),
    Case("driver-image-named-mp4", _animate(SRC, "image.mp4", "o.mp4"), check=_video_ok(1)),
    Case("driver-rotated", _animate(SRC, "phone.mp4", "o.mp4"), check=_video_ok(6)),
    Case("driver-vfr", _animate(SRC, "vfr.mp4", "o.mp4"), check=_video_ok(8)),
    Case("driver-mkv-pcm", _animate(SRC, "driver.mkv", "o.mp4", "--max-frames", "4"), check=_video_ok(4)),
    Case("driver-odd-size", _animate(SRC, "odd.mkv", "o.mp4", "--no-paste-back"), check=_video_ok(5)),
    # ---- outputs
    Case("output-is-source", _animate(SRC, "driver.png", lambda c, o: c / SRC), "would overwrite the source image"),
    Case("output-is-driver", _animate(SRC, DRV, lambda c, o: c / DRV), "would overwrite the driver video"),
    Case("output-symlink-to-driver", _animate(SRC, DRV, lambda c, o: c / "link.mp4"), "would overwrite the driver video"),
    Case("output-dotdot-driver", _animate(SRC, DRV, lambda c, o: c / "adir" / ".." / DRV), "would overwrite the driver video"),
    Case("output-hardlink-source", _animate(SRC, "driver.png", lambda c, o: c / "hard.png"), "would overwrite the source image"),
    Case("output-missing-dir", _animate(SRC, DRV, "missing/o.mp4"), "does not exist; create it first"),
    Case("output-is-directory", _animate(SRC, DRV, lambda c, o: o), "is a directory; give a file name"),
    Case("output-pgm", _animate(SRC, "driver.png", "o.pgm"), "has the extension '.pgm'"),
    Case("output-gif", _animate(SRC, "driver.png", "o.gif"), "has the extension '.gif'"),
    Case("output-avi", _animate(SRC, DRV, "o.avi"), "has the extension '.avi'; it must end in .mp4"),
    Case("output-no-extension", _animate(SRC, DRV, "o"), "has the extension '(none)'"),
    Case("output-mp4-for-image", _animate(SRC, "driver.png", "o.mp4"), "has the extension '.mp4'; it must end in .png"),
    Case("output-name-too-long", _animate(SRC, DRV, "n" + LONG), "choose a shorter name"),
    Case("output-longest-name", _animate(SRC, "driver.png", LONG[:-4] + ".png"), check=_image_ok((257, 301, 3))),
    Case("output-path-too-long", _animate(SRC, DRV, lambda c, o: o / ("d" * 200) / ("d" * 200) / ("e" * 4000 + ".mp4")),
         "more than a path may be (4095)"),
    Case("output-dash", _animate(SRC, DRV, lambda c, o: "-"), "has the extension '(none)'"),
    Case("output-empty-name", _animate(SRC, DRV, lambda c, o: ""), "is not a file name"),
    Case("output-dot-mp4", _animate(SRC, DRV, ".mp4"), "has the extension '(none)'"),
    Case("output-newline-in-name", _animate(SRC, "driver.png", "o\nx.png"),
         check=lambda o, err: (_image_ok((257, 301, 3))(o, err), _assert(err.count("\n") == 1, err))),
    Case("output-exists", _animate(SRC, DRV, "o.mp4", "--max-frames", "2"), check=_video_ok(2, replaced=True),
         setup=lambda o: (o / "o.mp4").write_bytes(b"old")),
    Case("output-image", _animate(SRC, "driver.png", "o.jpg"), check=_image_ok((257, 301, 3))),
    # ---- bundles
    Case("bundle-missing", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "nope"],
         "does not exist"),
    Case("bundle-is-file", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / SRC], "bundle"),
    Case("bundle-no-manifest", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "adir"],
         "manifest"),
    Case("bundle-bad-json", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "badjson"],
         "manifest"),
    Case("bundle-hash-mismatch", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "tampered"],
         "does not match its sha256"),
    Case("bundle-truncated-graph", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "cutgraph"],
         "is not a valid ONNX model"),
    Case("bundle-nan-pose", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "nanpose"],
         "the 'driver' graph's output 'pose' holds NaN"),
    Case("bundle-zero-pose", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "zeropose"],
         "pose for the reference (first) frame is singular"),
    Case("bundle-wrong-shape", lambda c, o: _animate(SRC, DRV, "o.mp4", bundle=False)(c, o) + ["--bundle", c / "badshape"],
         "has shape (1, 4, 3), the manifest says (1, 3, 4)"),
    # ---- options
    Case("threads-huge", _animate(SRC, DRV, "o.mp4", "--threads", "99999999999"), "--threads must be between 0", code=2),
    Case("threads-negative", _animate(SRC, DRV, "o.mp4", "--threads", "-1"), "--threads must be between 0", code=2),
    Case("threads-word", _animate(SRC, DRV, "o.mp4", "--threads", "many"), "--threads takes a whole number", code=2),
    Case("max-frames-zero", _animate(SRC, DRV, "o.mp4", "--max-frames", "0"), "--max-frames must be at least 1"),
    Case("max-frames-negative", _animate(SRC, DRV, "o.mp4", "--max-frames", "-3"), "--max-frames must be at least 1"),
    Case("max-frames-word", _animate(SRC, DRV, "o.mp4", "--max-frames", "x"), "invalid int value", code=2),
    Case("provider-bogus", _animate(SRC, DRV, "o.mp4", "--provider", "bogus"), "invalid choice", code=2),
    Case("background-bogus", _animate(SRC, DRV, "o.mp4", "--background", "pink"), "invalid choice", code=2),
    Case("unknown-option", _animate(SRC, DRV, "o.mp4", "--frobnicate"), "unrecognized arguments", code=2),
    Case("both-motions", _animate(SRC, DRV, "o.mp4", "--absolute", "--relative"), "not allowed with argument", code=2),
    Case("no-output", lambda c, o: ["animate", c / SRC, c / DRV], "required", code=2),
    Case("benchmark-missing-dir", lambda c, o: ["benchmark", "--bundle", c / "toy", "--output", o / "no" / "r.json"],
         "does not exist; create it first"),
    Case("benchmark-threads-huge", lambda c, o: ["benchmark", "--threads", "99999999999"], "from 1 to 1024", code=2),
    Case("info-missing-bundle", lambda c, o: ["info", "--bundle", c / "nope"], "does not exist", stream="out"),
    Case("info-provider-bogus", lambda c, o: ["info", "--bundle", c / "toy", "--provider", "bogus"],
         "unknown provider 'bogus'"),
    Case("max-frames-two", _animate(SRC, DRV, "o.mp4", "--max-frames", "2", "--smooth"), check=_video_ok(2)),
    Case("no-crop", _animate("rgba.png", "driver.png", "o.png", "--no-crop"), check=_image_ok((256, 256, 3))),
]


def _assert(condition, message):
    assert condition, message


def _make_corpus(c: Path, toy_bundle: Path) -> None:
    c.mkdir(parents=True, exist_ok=True)
    (c / "adir").mkdir()
    face = draw_face(size=257, width=301, cx=150, cy=130)
    write_rgb(c / SRC, face)
    for ext in ("tif", "webp", "bmp"):
        write_rgb(c / f"source.{ext}", face)
    frames = driver_frames()
    write_video(c / DRV, frames, fps=25, audio="aac")
    write_video(c / "driver.mkv", frames, fps=30, codec="mpeg4", audio="pcm_s16le")
    write_rgb(c / "driver.png", frames[3])
    (c / "empty.png").write_bytes(b"")
    (c / "empty.mp4").write_bytes(b"")
    (c / "text.png").write_text("not an image\n")
    (c / "text.mp4").write_text("not a video\n")
    write_rgb(c / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    write_rgb(c / "noise.png", noise)
    write_video(c / "noise.mp4", [noise] * 3, fps=25)
    data = (c / SRC).read_bytes()
    (c / "cut.png").write_bytes(data[: len(data) // 3])
    (c / "bomb.webp").write_bytes(webp_header(16383, 16383))
    (c / "bomb.tiff").write_bytes(tiff_header(16000, 16000))
    (c / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (20000).to_bytes(4, "big") * 2
                                 + bytes(64))
    (c / "bomb.ppm").write_bytes(b"P6\n20000 20000\n255\n" + bytes(64))
    (c / "radiance.png").write_bytes(cv2.imencode(".hdr", np.ones((40, 40, 3), np.float32))[1].tobytes())
    shutil.copy(c / DRV, c / "video.png")
    upright = draw_face()
    (c / "phone.jpg").write_bytes(jpeg_with_orientation(np.rot90(upright, 1), 6))
    write_rgb(c / "gray.png", cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))
    rgba = np.dstack([draw_face(), np.full((256, 256), 255, np.uint8)])
    cv2.imwrite(str(c / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(c / "deep.png"), (face[:, :, ::-1].astype(np.uint16) * 257))
    data = (c / DRV).read_bytes()
    (c / "truncated.mp4").write_bytes(data[: len(data) // 2])
    long = write_video(c / "faststart.mp4", driver_frames(60), fps=25, options={"movflags": "faststart"})
    data = long.read_bytes()
    (c / "cut.mp4").write_bytes(data[: len(data) * 3 // 10])
    long.unlink()
    with av.open(str(c / "noframes.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 64
        out.start_encoding()
    with av.open(str(c / "audio_only.mp4"), "w") as out:
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, 0
        out.mux(a.encode(f))
        out.mux(a.encode(None))
    write_video(c / "wide.mkv", [np.zeros((16, 17000, 3), np.uint8)], fps=25, codec="ffv1", pix_fmt="yuv444p")
    write_video(c / "small.mp4", [cv2.resize(f, (16, 16)) for f in frames[:3]], fps=25)
    vfr_video(c / "phone.mp4", [i / 25 for i in range(6)], rotation=90,
              frames=[np.ascontiguousarray(np.rot90(f, -1)) for f in driver_frames(6)])
    vfr_video(c / "vfr.mp4", [0, 0.04, 0.08, 0.3, 0.34, 0.9, 0.94, 1.5], audio_seconds=1.54)
    write_video(c / "odd.mkv", [draw_face(size=251, width=255, cx=127, cy=125, noise_seed=i) for i in range(5)], fps=25,
                codec="ffv1", pix_fmt="yuv444p")
    (c / "link.mp4").symlink_to(c / DRV)
    os.mkfifo(c / "fifo.png")
    os.mkfifo(c / "fifo.mp4")
    shutil.copy(c / SRC, c / "image.mp4")
    with av.open(str(c / "anim.gif"), "w") as out:
        gif = out.add_stream("gif", rate=10)
        gif.width, gif.height, gif.pix_fmt = 256, 256, "rgb8"
        for i, rgb in enumerate(driver_frames(4)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="rgb8")
            frame.pts = i
            out.mux(gif.encode(frame))
        out.mux(gif.encode(None))
    os.link(c / SRC, c / "hard.png")
    shutil.copytree(toy_bundle, c / "toy")
    shutil.copytree(toy_bundle, c / "badjson")
    (c / "badjson" / "manifest.json").write_text("{ not json")
    shutil.copytree(toy_bundle, c / "tampered")
    with open(c / "tampered" / "driver.onnx", "ab") as f:
        f.write(b"x")
    graph = (toy_bundle / "generator.onnx").read_bytes()
    bundle_with(toy_bundle, c / "cutgraph", "generator", graph[:-4])
    mul = [helper.make_node("Mul", ["pose_raw", "k"], ["pose"])]
    bundle_with(toy_bundle, c / "nanpose", "driver", driver_with_pose(mul, [("k", np.float32(np.nan))]))
    bundle_with(toy_bundle, c / "zeropose", "driver", driver_with_pose(mul, [("k", np.float32(0))]))
    bundle_with(toy_bundle, c / "badshape", "driver", driver_with_pose(
        [helper.make_node("Reshape", ["pose_raw", "s"], ["pose"])], [("s", np.array([1, 4, 3], np.int64))]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, toy_bundle):
    c = tmp_path_factory.mktemp("corpus")
    _make_corpus(c, toy_bundle)
    return c


def _files(c: Path) -> list:
    return [p for p in c.rglob("*") if p.is_file()]


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_corpus(corpus, tmp_path, capsys, case):
    inputs = _files(corpus)
    before = digest(inputs)
    if case.setup:
        case.setup(tmp_path)
    code, out, err = run_cli(capsys, *case.argv(corpus, tmp_path))
    assert "Traceback" not in out + err
    if case.problem is None:
        assert code == 0, err
        case.check(tmp_path, err)
        assert err.count("\n") <= 2, err  # "wrote ...", and at most one warning
    else:
        where = out if case.stream == "out" else err
        assert code == case.code and case.problem in where, (code, out, err)
        if case.stream == "err":
            assert err.count("\n") == 1 and err.startswith("megaportraits: error: "), err
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert temporary_files(tmp_path) == [] and temporary_files(corpus) == []
    assert digest(inputs) == before and sorted(map(str, _files(corpus))) == sorted(map(str, inputs))


SIGNALS = [("SIGTERM", 3), ("SIGHUP", 3), ("SIGINT", 3), ("SIGTERM", 1)]


@pytest.mark.parametrize("name,at", SIGNALS, ids=[f"{n}-frame{a}" for n, a in SIGNALS])
def test_cli_corpus_signals(corpus, tmp_path, name, at):
    inputs = _files(corpus)
    before = digest(inputs)
    out = tmp_path / "o.mp4"
    result = run_with_signal(["animate", corpus / SRC, corpus / DRV, "-o", out, "--bundle", corpus / "toy", "--quiet"],
                             name, at)
    assert result.returncode == 128 + getattr(signal, name) and "Traceback" not in result.stderr
    assert result.stderr == f"megaportraits: interrupted: wrote {at} frame(s) to {out}\n"
    assert count_frames(out) == at and [p.name for p in tmp_path.iterdir()] == ["o.mp4"]
    assert temporary_files(corpus) == [] and digest(inputs) == before


def test_info_json_is_still_json(corpus, capsys):
    code, out, err = run_cli(capsys, "info", "--bundle", corpus / "toy", "--json")
    assert code == 0 and json.loads(out)["bundle"]["status"] == "ok", err
