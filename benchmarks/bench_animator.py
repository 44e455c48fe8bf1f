"""Per-frame latency of the whole Animator, as a user calls it: ``Performance(frame)``.

Where ``megaportraits benchmark`` times each stage on its own (graphs, warp, crop, paste-back),
this times the complete call per driver frame in three set-ups:

- already-cropped frames, ONNX Runtime fed through IOBinding;
- the same with plain ``session.run``;
- 640x480 driver frames with face tracking, pasted back into a 512x512 photo.

(These figures were printed by tests/sdk/test_sdk_tiny.py, which asserted a timing; tests now
check only results, and speed is measured here.) No torch needed: the default bundle is the
bundled demo model.

    python benchmarks/bench_animator.py                       # the demo bundle, 1 thread
    python benchmarks/bench_animator.py --bundle /tmp/tiny --threads 2 --frames 100
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from megaportraits import Animator
from megaportraits.benchmark.stats import measure
from megaportraits.errors import MegaportraitsError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "sdk"))  # drawn_faces


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
    from drawn_faces import draw_face

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
    photo = draw_face(size=512, cx=256, cy=250, scale=1.6)
    driver = [draw_face(size=480, width=640, cx=320 + 8 * np.sin(i / 3), cy=240, scale=1.4, noise_seed=i)
              for i in range(20)]

    setups = [
        (f"{size}px crops, IOBinding", plain[True], cropped[0], cropped),
        (f"{size}px crops, session.run", plain[False], cropped[0], cropped),
        ("640x480 driver, face tracking + paste-back into 512x512", tracked, photo, driver),
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
