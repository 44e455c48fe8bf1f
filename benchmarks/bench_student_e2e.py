"""End to end with a student bundle: a 640x480 driver animating a 512x512 photo, crop and paste-back.

What a webcam avatar costs per frame on this CPU: the SDK's ``StudentPerformance`` (face tracking
on the driver frame, the crop cut and converted, the student graph, compositing onto the avatar's
backdrop, the paste-back into the avatar's photo), timed as one call per frame, plus the same
steps timed one by one on the same frames (per-stage medians). Frames/s is 1000 / median frame.

The driver is the bundled demo clip (a held-out synthetic identity talking and turning) scaled
to a 400 px head inside a 640x480 frame, so the tracker works on a webcam-sized image. The
student is ``--bundle`` (default: the shipped demo student); its avatar's photo is replaced by
a 512x512 upscale of itself with the crop scaled to match, so the paste-back works at 512.

    OMP_NUM_THREADS=1 python benchmarks/bench_student_e2e.py --threads 1 --frames 100

Writes ``benchmarks/results/student_e2e.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FRAME_W, FRAME_H, HEAD = 640, 480, 400
PHOTO = 512


def driver_frames(count: int) -> list:
    """``count`` 640x480 RGB frames: the demo clip's head, 400 px, on a grey webcam-sized frame."""
    from megaportraits.cli import DEMO_DRIVER
    from megaportraits.video import VideoReader

    frames = []
    while len(frames) < count:
        for frame in VideoReader(DEMO_DRIVER):
            canvas = np.full((FRAME_H, FRAME_W, 3), 96, np.uint8)
            y, x = (FRAME_H - HEAD) // 2, (FRAME_W - HEAD) // 2 + 40
            canvas[y:y + HEAD, x:x + HEAD] = cv2.resize(frame, (HEAD, HEAD), interpolation=cv2.INTER_LINEAR)
            frames.append(canvas)
            if len(frames) == count:
                break
    return frames


def photo_avatar(animator, name: str):
    """The bundle's avatar with its photo upscaled to 512x512 (crop and paste-back scaled to match)."""
    from megaportraits.faces import CropBox, PasteBack

    avatar = animator.prepare(name)
    factor = PHOTO / max(avatar.image.shape[:2])
    photo = cv2.resize(avatar.image, (round(avatar.image.shape[1] * factor), round(avatar.image.shape[0] * factor)),
                       interpolation=cv2.INTER_CUBIC)
    crop = CropBox(round(avatar.crop.x * factor), round(avatar.crop.y * factor), round(avatar.crop.side * factor))
    return dataclasses.replace(avatar, image=photo, crop=crop, paste=PasteBack(photo, crop))


def stages(animator, avatar, frames: list) -> dict:
    """The per-frame steps of StudentPerformance, each timed (ms per frame, one list per stage)."""
    from megaportraits.animator import run_graph, to_image, to_tensor
    from megaportraits.compositing import composite
    from megaportraits.faces import cut_crop
    from megaportraits.schema import AVATAR_INDEX, DRIVER_IMAGE, STUDENT

    performance = animator.performance(avatar)
    tracker, session = performance._tracker, performance._session
    size = animator.image_size
    buffer = np.empty((1, 3, size, size), np.float32)
    plate = np.empty((1, 3, size, size), np.float32)
    index = np.array([avatar.index], np.int64)
    times = {k: [] for k in ("track", "crop", "student", "composite", "paste_back")}
    for frame in frames:
        t0 = time.perf_counter()
        box = tracker.update(frame)
        t1 = time.perf_counter()
        to_tensor(cut_crop(frame, box, size), out=buffer)
        t2 = time.perf_counter()
        outputs = run_graph(session, STUDENT, animator._outputs, {DRIVER_IMAGE: buffer, AVATAR_INDEX: index},
                            animator.output_specs[STUDENT])
        t3 = time.perf_counter()
        image = outputs[0]
        if animator.composites and avatar.backdrop is not None:
            image = composite(image, outputs[1], avatar.backdrop, out=plate)
        rgb = to_image(image)
        t4 = time.perf_counter()
        avatar.paste(rgb)
        t5 = time.perf_counter()
        for key, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            times[key].append((b - a) * 1000)
    return times


def whole_frames(animator, avatar, frames: list) -> list:
    performance = animator.performance(avatar)
    samples = []
    for frame in frames:
        started = time.perf_counter()
        performance(frame)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main(argv=None) -> int:
    from megaportraits import Animator
    from megaportraits.student import DEMO_STUDENT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="a student bundle (default: the shipped demo student)")
    p.add_argument("--avatar", default=None, help="the avatar's name (default: the bundle's first)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--output", default=str(RESULTS / "student_e2e.json"))
    args = p.parse_args(argv)
    bundle = args.bundle or DEMO_STUDENT
    frames = driver_frames(args.frames)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"{len(frames)} frames {FRAME_W}x{FRAME_H}, photo {PHOTO}x{PHOTO}, {args.threads} thread(s)", flush=True)
    with Animator(bundle, provider="cpu", threads=args.threads) as animator:
        name = args.avatar or animator.avatar_names[0]
        avatar = photo_avatar(animator, name)
        whole_frames(animator, avatar, frames[:5])  # warm-up: kernel selection, first allocations
        # interleaved: whole frames, stages, whole frames, so load changes hit both alike
        half = len(frames) // 2
        total = whole_frames(animator, avatar, frames[:half])
        per_stage = stages(animator, avatar, frames)
        total += whole_frames(animator, avatar, frames[half:])
    medians = {k: statistics.median(v) for k, v in per_stage.items()}
    frame_ms = statistics.median(total)
    for key, value in medians.items():
        print(f"  {key:<11}{value:7.2f} ms (median)", flush=True)
    print(f"  {'sum':<11}{sum(medians.values()):7.2f} ms")
    print(f"whole frame {frame_ms:.2f} ms median (p90 {np.percentile(total, 90):.2f}) -> "
          f"{1000 / frame_ms:.1f} frames/s", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "bundle": str(bundle), "avatar": name, "threads": args.threads, "frames": len(frames),
        "driver": [FRAME_W, FRAME_H], "photo": PHOTO, "load_average": load,
        "stage_median_ms": medians, "frame_median_ms": frame_ms, "frame_p90_ms": float(np.percentile(total, 90)),
        "frames_per_second": 1000 / frame_ms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
