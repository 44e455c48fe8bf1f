"""Time the per-frame volume warp: GridSample3D vs onnxruntime's GridSample vs PyTorch.

One warp of the paper's canonical volume (1x96x16x64x64) to a 16x64x64 grid, run by
  * ours: the custom op (schema.GRID_SAMPLE_3D) in an onnxruntime session,
  * portable: onnxruntime's built-in GridSample (opset 20), what a portable bundle runs,
  * torch: torch.nn.functional.grid_sample in eager mode (if torch is importable),
  * native: the same kernel called on numpy arrays (megaportraits.grid_sample_3d, pybind11),
all on the same number of threads. Sessions, the timing loop, the machine's measured ceilings,
the roofline floor and the report (table or JSON, schema megaportraits-benchmark/1) are the
benchmark package's (megaportraits.benchmark), so these figures read like `megaportraits
benchmark`'s warp stage; this script only chooses the workload and adds PyTorch and pybind11.

    python benchmarks/bench_grid_sample.py [--threads N] [--grid random|smooth] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import megaportraits
from megaportraits.benchmark.machine import machine_info, measure_peaks, usable_cores
from megaportraits.benchmark.report import Report, format_table
from megaportraits.benchmark.stages import (RunSettings, UnavailableVariant, driver_grid, warp_call, warp_cost,
                                            with_cost)
from megaportraits.errors import MegaportraitsError

try:
    import torch
except ImportError:  # the SDK side runs without torch; so does this benchmark
    torch = None


def make_grid(kind: str, batch: int, depth: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """'random': independent uniform samples in [-1.1, 1.1] (worst case for caches);
    'smooth': the generator's kind of grid (the package's driver_grid: a near-frontal turn of
    the identity plus a small deformation)."""
    if kind == "random":
        return rng.uniform(-1.1, 1.1, (batch, depth, height, width, 3)).astype(np.float32)
    return driver_grid(batch, depth, height, width, rng)


def candidates(volume: np.ndarray, grid: np.ndarray, threads: int) -> dict:
    """variant -> a no-argument call returning the warped volume as a numpy array."""
    calls = {}
    for variant in ("ours", "portable"):
        try:
            calls[variant] = warp_call(volume, grid, variant, "cpu", threads)
        except UnavailableVariant as e:
            print(f"{variant} not measured: {e}", file=sys.stderr)
    if torch is not None:
        torch.set_num_threads(threads or usable_cores())
        tx, tgrid = torch.from_numpy(volume), torch.from_numpy(grid)

        def torch_eager():
            with torch.inference_mode():
                return torch.nn.functional.grid_sample(tx, tgrid, mode="bilinear", padding_mode="zeros",
                                                       align_corners=False).numpy()
        calls["torch"] = torch_eager
    calls["native"] = lambda: megaportraits.grid_sample_3d(volume, grid, num_threads=threads)
    return calls


def run(args) -> Report:
    rng = np.random.default_rng(args.seed)
    volume = rng.standard_normal((1, args.channels, args.depth, args.size, args.size), dtype=np.float32)
    grid = make_grid(args.grid, 1, args.depth, args.size, args.size, rng)
    threads = args.threads or usable_cores()
    print(f"measuring the machine's ceilings at {threads} thread(s)", file=sys.stderr)
    peaks = measure_peaks(threads)
    settings = RunSettings(warmup=args.warmup, runs=args.repeats, max_seconds=args.max_seconds)
    report = Report(machine=machine_info(), peaks=[peaks.to_dict()],
                    bundle={"preset": f"warp {volume.shape} at {args.grid} grid {grid.shape}", "path": "no bundle: a synthetic volume"},
                    settings={"threads": [threads], "grid": args.grid, "seed": args.seed,
                              "torch": torch.__version__ if torch is not None else None, **vars(settings)})
    cost = warp_cost(volume, grid)
    reference = None  # (variant, output) of the first implementation measured
    for variant, call in candidates(volume, grid, threads).items():
        print(f"measuring {variant}", file=sys.stderr)
        warped = call()
        reference = reference or (variant, warped)
        note = f"max|diff| vs {reference[0]} {float(np.abs(warped - reference[1]).max()):.1e}"
        report.results.append(with_cost("warp", variant, "cpu", threads, 1, settings.measure(call), [cost], peaks,
                                        note=note))
    report.notes.append("floor: bytes the warp must move at the measured bandwidth, or its FLOPs at the "
                        "GEMM ceiling, whichever is slower; sessions made as the SDK makes them (no spinning)")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="threads for every implementation "
                        "(default 0: all usable cores)")
    parser.add_argument("--grid", choices=["random", "smooth"], default="random")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at most (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time budget per implementation")
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="height and width of the volume and the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.threads, args.warmup) < 0 or min(args.repeats, args.channels, args.depth, args.size) < 1 \
            or args.max_seconds <= 0:
        parser.error("--threads/--warmup must be >= 0, --repeats/--channels/--depth/--size >= 1, "
                     "--max-seconds > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except MegaportraitsError as e:
        print(f"bench_grid_sample: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
