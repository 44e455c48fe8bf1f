"""Inputs the hardening tests make for themselves (issue 12), and the checks they share:
what a CLI run printed, which files it left, whether any input changed."""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from drawn_faces import draw_face
from media import write_video

N_FRAMES = 12
REPO = Path(__file__).resolve().parents[2]


def write_rgb(path, rgb) -> Path:
    """Any image format by extension, from RGB (or gray)."""
    ok, data = cv2.imencode(Path(path).suffix, np.ascontiguousarray(rgb[:, :, ::-1] if rgb.ndim == 3 else rgb))
    assert ok
    Path(path).write_bytes(data.tobytes())
    return Path(path)


def driver_frames(n=N_FRAMES, size=256):
    return [draw_face(size=size, cx=size / 2 + 6 * np.sin(i / 2), cy=size / 2, scale=size / 256 * (1.0 + 0.03 * np.cos(i / 3)),
                      noise_seed=i) for i in range(n)]


def make_media(d: Path) -> dict:
    """The usual inputs: a source portrait, a driver video with audio, a driver image."""
    d.mkdir(parents=True, exist_ok=True)
    frames = driver_frames()
    paths = {
        "source": write_rgb(d / "source.png", draw_face(size=257, width=301, cx=150, cy=130)),
        "driver": write_video(d / "driver.mp4", frames, fps=25, audio="aac"),
        "driver_png": write_rgb(d / "driver.png", frames[3]),
    }
    return paths


def exif_block(orientation: int, big_endian: bool = False) -> bytes:
    """A TIFF-structured EXIF block with one IFD entry: Orientation."""
    order = ">" if big_endian else "<"
    head = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    ifd = struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return head + ifd + struct.pack(order + "I", 0)


def jpeg_with_orientation(stored_rgb, orientation: int) -> bytes:
    """A JPEG of ``stored_rgb`` whose EXIF says how to turn it for display."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(stored_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    data = data.tobytes()
    payload = b"Exif\x00\x00" + exif_block(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def webp_header(width: int, height: int) -> bytes:
    """A lossless WebP whose header claims width x height (the data after it is junk)."""
    bits = (width - 1) | ((height - 1) << 14)
    chunk = b"\x2f" + struct.pack("<I", bits) + bytes(64)
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_header(width: int, height: int) -> bytes:
    """A TIFF whose first IFD claims width x height, 8-bit RGB, one uncompressed strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 512),
               (277, 3, 3), (278, 4, height), (279, 4, width * height * 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries) + struct.pack("<I", 0)
    data = b"II" + struct.pack("<HI", 42, 8) + ifd
    return data + bytes(512 - len(data)) + bytes(4096)


def vfr_video(path, times, audio_seconds=None, rotation=None, frames=None) -> Path:
    """An H.264 MP4 with frames at the given times (seconds); optionally a 440 Hz AAC tone
    of ``audio_seconds`` and a display rotation."""
    tb = Fraction(1, 1000)
    frames = frames or driver_frames(len(times))
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = vs.time_base = tb
        if rotation is not None:
            vs.set_display_rotation(rotation)
        a = None
        if audio_seconds:
            a = out.add_stream("aac", rate=16000)
            a.layout = "mono"
        for t, rgb in zip(times, frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), tb
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a is not None:
            n = int(audio_seconds * 16000)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)
            for start in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, start
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return Path(path)


def frame_times(path) -> list:
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(c.streams.video[0])]


def audio_seconds(path) -> float:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return 0.0
        return sum(f.samples for f in c.decode(c.streams.audio[0])) / c.streams.audio[0].codec_context.sample_rate


def count_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def digest(paths) -> dict:
    """sha256 of every file (following symlinks) among ``paths``."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def temporary_files(directory) -> list:
    """Hidden temporary outputs (.NAME.XXXX.partial.EXT) left anywhere under ``directory``."""
    return sorted(str(p) for p in Path(directory).rglob("*.partial*"))


def run_cli(capsys, *argv):
    """The CLI in-process: (exit status, stdout, stderr)."""
    from megaportraits import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


SIGNAL_SCRIPT = """
import os, signal, sys
from megaportraits import animator, cli
original = animator.Performance.__call__
state = {{"n": 0}}
def call(self, frame):
    state["n"] += 1
    if state["n"] == {at}:
        os.kill(os.getpid(), signal.{signal})
    return original(self, frame)
animator.Performance.__call__ = call
sys.exit(cli.main(sys.argv[1:]))
"""


def run_with_signal(argv, signal_name: str, at_frame: int, timeout=120) -> subprocess.CompletedProcess:
    """The CLI in a fresh process that sends itself ``signal_name`` while animating frame
    ``at_frame``: the real signal, delivered at a known point of the work."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests" / "sdk"))
    return subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT.format(at=at_frame, signal=signal_name),
                           *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


def driver_with_pose(nodes_after, extra_inits=()) -> bytes:
    """The toy driver graph with its pose replaced by what ``nodes_after`` make of
    ``pose_raw`` (a broken model: zero, NaN or misshapen poses)."""
    from onnx import numpy_helper

    import toy_bundle as toy_graphs

    model = toy_graphs.driver_graph()
    for node in model.graph.node:
        node.output[:] = ["pose_raw" if o == "pose" else o for o in node.output]
    model.graph.node.extend(nodes_after)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in extra_inits)
    return model.SerializeToString()


def bundle_with(toy_bundle, directory, role: str, model_bytes: bytes) -> Path:
    """A copy of the toy bundle with one graph file replaced and the manifest's hashes updated
    (so only the content is wrong, as with a tampered or badly exported bundle)."""
    import shutil

    from megaportraits import manifest as mf

    directory = Path(directory)
    shutil.copytree(toy_bundle, directory)
    (directory / f"{role}.onnx").write_bytes(model_bytes)
    mf.write_manifest(directory, mf.load_manifest(directory))
    return directory


def tiff_with_orientation(rgb, orientation: int, big_endian: bool = False) -> bytes:
    """An uncompressed 8-bit RGB TIFF of ``rgb`` (as stored) with an Orientation tag."""
    h, w = rgb.shape[:2]
    order = ">" if big_endian else "<"
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 0), (274, 3, orientation),
            (277, 3, 3), (278, 4, h), (279, 4, w * h * 3)]
    start = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack(order + "H", len(tags)) + b"".join(
        struct.pack(order + "HHI", tag, kind, 1)
        + (struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", start if tag == 273 else value))
        for tag, kind, value in tags) + struct.pack(order + "I", 0)
    return (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8) + ifd + np.ascontiguousarray(rgb).tobytes()


def png_with_orientation(stored_rgb, orientation: int) -> bytes:
    """A PNG of ``stored_rgb`` with an eXIf chunk after IHDR."""
    import zlib

    data = cv2.imencode(".png", np.ascontiguousarray(stored_rgb[:, :, ::-1]))[1].tobytes()
    exif = exif_block(orientation)
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    return data[:33] + chunk + data[33:]  # signature (8) + IHDR (25)


def webp_with_orientation(stored_rgb, orientation: int) -> bytes:
    """A lossless WebP of ``stored_rgb`` in the extended (VP8X) layout with an EXIF chunk."""
    data = cv2.imencode(".webp", np.ascontiguousarray(stored_rgb[:, :, ::-1]), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    h, w = stored_rgb.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    exif = exif_block(orientation)
    body = b"WEBP" + vp8x + data[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif + (b"\0" if len(exif) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body
