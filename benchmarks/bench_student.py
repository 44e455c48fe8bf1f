"""Per-frame latency of the real-time student beside its teacher's per-frame graphs.

The teacher's per-frame work is its driver graph + generator graph (the source graph runs once
per avatar); the student's is its one graph. Both run in ONNX Runtime on the CPU with the same
intra-op thread count, batch 1, rendering the same output size, with random weights
(``random_model(preset, seed)`` for the teacher, a seeded student of the same size). The
teacher's generator is fed the avatar its own source graph made and the motion its driver graph
read, so it does the work of a real frame. Reported: median and minimum of ``--runs`` timed
runs after one warm-up, and the speed-up (teacher median / student median).

    OMP_NUM_THREADS=1 python benchmarks/bench_student.py --presets small256 paper512 --threads 1

Teacher bundles are exported once into ``--bundle-root`` and reused (same preset and seed: same
weights). Writes ``benchmarks/results/student_latency.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(run, runs: int) -> list:
    run()  # warm-up: first-run allocations and kernel selection
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def teacher_bundle(root: Path, preset: str, seed: int) -> Path:
    from megaportraits import manifest as mf
    from megaportraits_export.onnx_export import export_random_init

    path = root / f"{preset}-seed{seed}"
    for candidate in (path, root / f"{preset}-seed{seed}-fp32"):  # the latter: precision_benchmark.py's
        try:
            m = mf.load_manifest(candidate)
        except mf.BundleError:
            continue
        if (m.preset == preset and m.precision == "fp32" and m.provenance.get("weights") == "random-init"
                and m.provenance.get("seed") == seed):
            return candidate
    print(f"exporting the random-weight {preset} teacher to {path} ...", file=sys.stderr, flush=True)
    return export_random_init(preset, seed, path)


def measure_teacher(bundle: Path, threads: int, runs: int) -> dict:
    from megaportraits.bundle import open_bundle

    b = open_bundle(bundle, provider="cpu", threads=threads)
    size = b.image_size
    rng = np.random.default_rng(0)
    source = rng.random((1, 3, size, size), dtype=np.float32)
    driver = rng.random((1, 3, size, size), dtype=np.float32)
    volume, descriptor, _, _ = b.sessions["source"].run(None, {"source_image": source})
    feeds = {"canonical_volume": volume, "global_descriptor": descriptor}

    def frame():
        pose, expression = b.sessions["driver"].run(None, {"driver_image": driver})
        b.sessions["generator"].run(None, {**feeds, "pose": pose, "expression": expression})

    return {"image_size": size, "ms": _timed(frame, runs)}


def measure_student(preset: str, threads: int, runs: int, avatars: int, work: Path) -> dict:
    import torch

    from megaportraits.sessions import create_session, session_options
    from megaportraits_export.distill.graph import export_student_graph
    from megaportraits_export.networks.student import build_student, macs_per_frame
    from megaportraits_export.student_config import get_student_config
    from megaportraits_export.config import get_config

    config = get_student_config(preset).replace(num_avatars=avatars, matte=get_config(preset).matte)
    torch.manual_seed(0)
    student = build_student(config).eval()
    path = work / f"student-{preset}-{avatars}.onnx"
    export_student_graph(student, path)  # always: a graph left by an older architecture would mislead
    session = create_session(path, ["CPUExecutionProvider"], session_options(threads))
    rng = np.random.default_rng(0)
    feeds = {"driver_image": rng.random((1, 3, config.image_size, config.image_size), dtype=np.float32),
             "avatar_index": np.array([avatars - 1], dtype=np.int64)}
    return {"image_size": config.image_size, "gmac": macs_per_frame(config) / 1e9,
            "ms": _timed(lambda: session.run(None, feeds), runs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small256", "paper512"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--avatars", type=int, default=4, help="avatars the student holds (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle-root", default="/tmp/megaportraits-bench")
    p.add_argument("--output", default=str(RESULTS / "student_latency.json"))
    args = p.parse_args(argv)
    root = Path(args.bundle_root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores", flush=True)
    for preset in args.presets:
        teacher = measure_teacher(teacher_bundle(root, preset, args.seed), args.threads, args.runs)
        student = measure_student(preset, args.threads, args.runs, args.avatars, root)
        assert teacher["image_size"] == student["image_size"]
        t, s = statistics.median(teacher["ms"]), statistics.median(student["ms"])
        rows.append({"preset": preset, "image_size": teacher["image_size"], "threads": args.threads,
                     "teacher_driver_generator_ms": {"median": t, "min": min(teacher["ms"]), "samples": teacher["ms"]},
                     "student_ms": {"median": s, "min": min(student["ms"]), "samples": student["ms"]},
                     "student_gmac": student["gmac"], "speedup": t / s})
        print(f"{preset:<10} {teacher['image_size']:>4}px  threads {args.threads}  teacher driver+generator "
              f"{t:9.1f} ms (min {min(teacher['ms']):.1f})  student {s:7.2f} ms (min {min(student['ms']):.2f}, "
              f"{student['gmac']:.3f} GMAC)  speed-up {t / s:6.1f}x", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"rows": rows, "runs": args.runs, "avatars": args.avatars,
                                             "load_average": os.getloadavg()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
