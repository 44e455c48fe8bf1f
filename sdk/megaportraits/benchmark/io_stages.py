"""The image-side work around the networks, timed with the SDK's own code: the driver frame's
face crop (tracker + crop + tensor), paste-back into the source photo, and video decode and
encode (PyAV, H.264), each per frame.

No face video ships with the benchmark, so frames are synthetic: a smooth moving pattern with a
little noise (so the encoder has real work) at a typical webcam size. The Haar detector finds no
face in them, so the face-crop stage measures the tracker's worst case: a failed search near the
last face, a full-frame scan, then the fallback crop. On a real face the near search usually
succeeds and the stage is cheaper.
"""
from __future__ import annotations

import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .. import manifest as mf
from .machine import usable_cores
from .report import StageResult
from .stages import RunSettings
from .stats import reset_peak_rss, peak_rss_mb, summarize

FRAME_WIDTH, FRAME_HEIGHT = 1280, 720  # a typical driver video / webcam frame
VIDEO_FRAMES = 48


def synthetic_frames(count: int, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, seed: int = 0) -> list:
    """RGB uint8 frames of a drifting colour pattern with mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        phase = 0.15 * i
        r = 128 + 90 * np.sin(x / 53.0 + phase)
        g = 128 + 90 * np.sin(y / 41.0 - phase)
        b = 128 + 60 * np.sin((x + y) / 97.0 + 0.5 * phase)
        rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
        frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return frames


def _timed_per_call(fn, inputs, warmup: int) -> tuple:
    """Call ``fn`` on each input; the first ``warmup`` calls are not timed."""
    reset_peak_rss()
    samples = []
    for i, item in enumerate(inputs):
        t0 = time.perf_counter()
        fn(item)
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return samples, peak_rss_mb()


def _result(stage: str, samples: list, warmup: int, peak: float | None, note: str) -> StageResult:
    return StageResult(stage=stage, variant="ours", provider="cpu", threads=usable_cores(), batch=1,
                       timing=summarize(samples, warmup=warmup, peak_rss_mb=peak), note=note)


def _repeat(frames: list, settings: RunSettings) -> list:
    wanted = settings.warmup + settings.runs
    return [frames[i % len(frames)] for i in range(wanted)]


def demo_driver_frames(count: int) -> list:
    """Up to ``count`` frames of the bundled demo driver video (a real tracking workload), or []."""
    from ..errors import MegaportraitsError
    from ..video import VideoReader
    try:
        from ..cli import DEMO_DRIVER
    except ImportError:
        return []
    if not DEMO_DRIVER.is_file():
        return []
    frames = []
    try:
        with VideoReader(DEMO_DRIVER, "demo driver video") as reader:
            for frame in reader:
                frames.append(frame)
                if len(frames) == count:
                    break
    except MegaportraitsError:
        return []
    return frames


def measure_face_crop(manifest: mf.Manifest, frames: list, settings: RunSettings) -> StageResult:
    """Tracker + crop + tensor per driver frame, on the demo driver video when it is installed
    and its first frame has a face; otherwise on the synthetic frames (worst case)."""
    from ..animator import to_tensor
    from ..errors import NoFaceError
    from ..faces import FaceTracker, HaarFaceDetector, cut_crop

    size = manifest.image_size
    buffer = np.zeros((1, 3, size, size), np.float32)
    demo = demo_driver_frames(settings.warmup + settings.runs)
    for source, centre_fallback in ((demo, False), (frames, True)):
        if not source:
            continue
        tracker = FaceTracker(HaarFaceDetector(), centre_fallback=centre_fallback)

        def crop(frame, tracker=tracker):
            to_tensor(cut_crop(frame, tracker.update(frame), size), out=buffer)

        try:
            samples, peak = _timed_per_call(crop, _repeat(source, settings), settings.warmup)
        except NoFaceError:
            continue  # the demo video's first frame has no face the detector finds
        h, w = source[0].shape[:2]
        what = ("the demo driver video (tracking a real face)" if source is demo
                else "synthetic frames without a face: worst case, a full-frame Haar scan per frame")
        return _result("face_crop", samples, settings.warmup, peak, f"{w}x{h} {what}")
    raise ValueError("no frames to measure the face crop on")


def measure_paste_back(manifest: mf.Manifest, frames: list, settings: RunSettings) -> StageResult:
    from ..animator import to_image
    from ..faces import CropBox, PasteBack

    source = frames[0]
    height, width = source.shape[:2]
    side = int(0.8 * height)
    paste = PasteBack(source, CropBox((width - side) // 2, (height - side) // 2, side))
    rng = np.random.default_rng(1)
    size = manifest.image_size
    outputs = [rng.random((1, 3, size, size), dtype=np.float32) for _ in range(4)]
    wanted = settings.warmup + settings.runs
    samples, peak = _timed_per_call(lambda image: paste(to_image(image)),
                                    [outputs[i % len(outputs)] for i in range(wanted)], settings.warmup)
    return _result("paste_back", samples, settings.warmup, peak,
                   f"{size}px output into a {width}x{height} photo, {side}px crop")


def measure_compositing(manifest: mf.Manifest, frames: list, settings: RunSettings, stages: list) -> list:
    """A matte model's two extra costs (megaportraits.compositing): the backdrop, made once per
    avatar (the source without the person, inpainted), and the composite of every frame. The
    person is a disc over 28% of the crop, about what a portrait crop holds."""
    from ..compositing import background_plate, composite

    size = manifest.image_size
    source = cv2.resize(frames[0], (size, size), interpolation=cv2.INTER_AREA)
    source = source.transpose(2, 0, 1).astype(np.float32) / 255.0
    yy, xx = np.mgrid[:size, :size]
    matte = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.3 * size) ** 2).astype(np.float32)[None]
    wanted = settings.warmup + settings.runs
    results = []
    if "backdrop" in stages:
        samples, peak = _timed_per_call(lambda _: background_plate(source, matte), range(wanted), settings.warmup)
        results.append(_result("backdrop", samples, settings.warmup, peak,
                               f"once per avatar: {size}px source, Telea inpainting of the person"))
    if "composite" in stages:
        rng = np.random.default_rng(2)
        plate = background_plate(source, matte)
        images = [rng.random((1, 3, size, size), dtype=np.float32) for _ in range(4)]
        out = np.empty((1, 3, size, size), np.float32)
        samples, peak = _timed_per_call(lambda image: composite(image, matte[None], plate, out=out),
                                        [images[i % len(images)] for i in range(wanted)], settings.warmup)
        results.append(_result("composite", samples, settings.warmup, peak, f"per frame: {size}px"))
    return results


def measure_video(frames: list, settings: RunSettings, stages: list) -> list:
    """Encode the frames to an H.264 MP4 (per-frame write time; the encoder buffers, so some
    writes are longer than others), then decode it again (per-frame read time)."""
    from ..video import VideoReader, VideoWriter

    results = []
    warmup = min(settings.warmup, len(frames) // 4)
    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="megaportraits-bench-") as tmp:
        path = Path(tmp) / "frames.mp4"
        writer = VideoWriter(path, Fraction(25), width, height)
        try:
            samples, peak = _timed_per_call(writer.write, frames, warmup)
            t0 = time.perf_counter()
            writer.finish()
            samples[-1] += time.perf_counter() - t0  # the flush belongs to the last frame
        except BaseException:
            writer.abort()
            raise
        if "video_encode" in stages:
            results.append(_result("video_encode", samples, warmup, peak,
                                   f"libx264 veryfast crf 18, {width}x{height}, {len(frames)} frames"))
        if "video_decode" in stages:
            with VideoReader(path, "benchmark video") as reader:
                frames_iter = iter(reader)
                samples, peak = _timed_per_call(lambda _: next(frames_iter), range(len(frames)), warmup)
            results.append(_result("video_decode", samples, warmup, peak,
                                   f"H.264 {width}x{height} to RGB, {len(frames)} frames"))
    return results


def measure_io_stages(manifest: mf.Manifest, settings: RunSettings, stages: list, notes: list,
                      frame_size: tuple = (FRAME_WIDTH, FRAME_HEIGHT), video_frames: int = VIDEO_FRAMES) -> list:
    """The requested image-side stages on synthetic frames of ``frame_size`` (width, height)."""
    count = video_frames if any(s.startswith("video") for s in stages) else 4
    frames = synthetic_frames(count, *frame_size)
    results = []
    if "face_crop" in stages:
        results.append(measure_face_crop(manifest, frames, settings))
    if "paste_back" in stages:
        results.append(measure_paste_back(manifest, frames, settings))
    if {"backdrop", "composite"} & set(stages):
        if manifest.has_matte:
            results += measure_compositing(manifest, frames, settings, stages)
        else:
            notes.append("backdrop and composite not measured: this bundle has no matte, so the SDK "
                         "does not composite its frames")
    if any(s.startswith("video") for s in stages):
        results += measure_video(frames, settings, stages)
    notes.append("paste-back and video run on synthetic frames, the face crop on the demo driver video if "
                 "installed (its note says which); see megaportraits.benchmark.io_stages")
    return results
