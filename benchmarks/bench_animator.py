"""Per-frame latency of the whole Animator, as a user calls it: ``Performance(frame)``.

Where ``megaportraits benchmark`` times each stage on its own (graphs, warp, crop, paste-back),
this times the complete call per driver frame in three set-ups:

- already-cropped frames, ONNX Runtime fed through IOBinding;
- the same with plain ``session.run``;
- the bundled demo driver video with face tracking, pasted back into the bundled demo photo
  (a real tracking workload).

(These figures were printed by tests/sdk/test_sdk_tiny.py, which asserted a timing; tests now
check only results, and speed is measured here.) No torch needed: the default bundle is the
bundled demo model; the demo photo and driver come with the SDK.

    python benchmarks/bench_animator.py                       # the demo bundle, 1 thread
    python benchmarks/bench_animator.py --bundle /tmp/tiny --threads 2 --frames 100
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from megaportraits import Animator
from megaportraits.benchmark.io_stages import demo_driver_frames
from megaportraits.benchmark.stats import measure
from megaportraits.cli import DEMO_SOURCE
from megaportraits.errors import MegaportraitsError
from megaportraits.images import load_image


def cycling(performance, frames):
    """A no-argument call that animates the next frame of ``frames``, round and round."""
    state = {"k": 0}

    def step():
        performance(frames[state["k"] % len(frames)])
        state["k"] += 1
    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle directory (default: the bundled demo model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=60, help="timed frames per set-up (default 60)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time cap per set-up")
    args = parser.parse_args(argv)
    if args.frames < 3 or args.threads < 1:
        print("error: --frames must be at least 3 and --threads at least 1", file=sys.stderr)
        return 2
    try:
        plain = {io: Animator(args.bundle, provider="cpu", threads=args.threads, crop=False, paste_back=False,
                              io_binding=io) for io in (True, False)}
        tracked = Animator(args.bundle, provider="cpu", threads=args.threads)
    except MegaportraitsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = tracked.image_size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
    cropped = [np.clip(base + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    photo, driver = load_image(DEMO_SOURCE, "demo photo"), demo_driver_frames(30)
    if not driver:
        print("error: the bundled demo driver video cannot be read here (is PyAV installed?)", file=sys.stderr)
        return 2
    dh, dw = driver[0].shape[:2]

    setups = [
        (f"{size}px crops, IOBinding", plain[True], cropped[0], cropped),
        (f"{size}px crops, session.run", plain[False], cropped[0], cropped),
        (f"{dw}x{dh} demo driver, tracking + paste-back into {photo.shape[1]}x{photo.shape[0]}",
         tracked, photo, driver),
    ]
    print(f"bundle {args.bundle or 'the bundled demo model'}, "
          f"cpu, {args.threads} thread(s); per frame, {args.frames} frames after 5 warm-up")
    for label, animator, source, frames in setups:
        performance = animator.performance(animator.prepare(source))
        timing = measure(cycling(performance, frames), warmup=5, runs=args.frames, max_seconds=args.max_seconds)
        print(f"  {label:58} median {timing.median_ms:7.2f} ms  p90 {timing.p90_ms:7.2f} ms  "
              f"({timing.runs} frames)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
