"""Time the per-frame volume warp: GridSample3D vs onnxruntime's GridSample vs PyTorch.

One warp of the paper's canonical volume (1x96x16x64x64) to a 16x64x64 grid, run by
  * the custom op (com.megaportraits::GridSample3D) in an onnxruntime session,
  * onnxruntime's built-in GridSample (opset 20), what a portable bundle runs,
  * torch.nn.functional.grid_sample in eager mode (if torch is importable),
  * the pybind11 module (megaportraits.grid_sample_3d),
all on the same number of threads, and compared with the memory-bandwidth floor: the time a
numpy copy needs to move as many bytes as the warp reads and writes (X + grid in, Y out).

    python benchmarks/bench_grid_sample.py [--threads N] [--grid random|smooth] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import megaportraits

try:
    import torch
except ImportError:  # the SDK side runs without torch; so does this benchmark
    torch = None


@dataclass
class Timing:
    name: str
    median_ms: float
    p90_ms: float
    min_ms: float  # the fastest run: what the warp costs when nothing else competes for the cores
    cpu_ms: float  # median process CPU time (all threads) per run; robust to a busy machine
    effective_gb_s: float
    x_floor: float  # median time / memory-bandwidth floor
    max_abs_diff: float | None = None  # against the custom op's output


@dataclass
class Report:
    shape: dict
    grid: str
    threads: int
    spinning: bool
    repeats: int
    machine: dict
    bytes_moved: int
    copy_gb_s: float
    floor_ms: float
    timings: list[Timing] = field(default_factory=list)


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    return info


def make_grid(kind: str, batch: int, depth: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """'random': independent uniform samples in [-1.1, 1.1] (worst case for caches);
    'smooth': an identity grid scaled by 1.1 plus a smooth deformation, like the model's warps."""
    if kind == "random":
        return rng.uniform(-1.1, 1.1, (batch, depth, height, width, 3)).astype(np.float32)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in (depth, height, width)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    identity = np.stack([x, y, z], axis=-1) * 1.1
    phase = rng.uniform(0, 2 * np.pi, 3)
    wobble = 0.1 * np.stack([np.sin(3 * y + phase[0]), np.sin(3 * z + phase[1]), np.sin(3 * x + phase[2])], -1)
    return np.broadcast_to(identity + wobble, (batch, depth, height, width, 3)).astype(np.float32).copy()


def grid_sample_model(custom: bool) -> bytes:
    """One-node model: com.megaportraits::GridSample3D, or the standard GridSample-20."""
    attributes = dict(mode="linear", padding_mode="zeros", align_corners=0)
    if custom:
        node = helper.make_node("GridSample3D", ["X", "grid"], ["Y"], domain=megaportraits._native.OP_DOMAIN,
                                **attributes)
        opsets = [helper.make_opsetid("", 20), helper.make_opsetid(megaportraits._native.OP_DOMAIN, 1)]
    else:
        node = helper.make_node("GridSample", ["X", "grid"], ["Y"], **attributes)
        opsets = [helper.make_opsetid("", 20)]
    graph = helper.make_graph(
        [node], "warp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None] * 5),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [None] * 5)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 5)])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def ort_session(custom: bool, threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if custom:
        options.register_custom_ops_library(megaportraits.custom_ops_library())
    return ort.InferenceSession(grid_sample_model(custom), options, providers=["CPUExecutionProvider"])


def time_runs(fn, warmup: int, repeats: int) -> tuple[list[float], list[float], np.ndarray]:
    """Wall-clock and process CPU seconds of each timed run, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, result


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def memory_copy_gb_s(total_bytes: int, warmup: int, repeats: int) -> float:
    """Bandwidth of a numpy copy that reads and writes total_bytes in all (half each way)."""
    source = np.ones(total_bytes // 8, dtype=np.float32)
    target = np.empty_like(source)
    seconds, _, _ = time_runs(lambda: np.copyto(target, source), warmup, repeats)
    return 2 * source.nbytes / statistics.median(seconds) / 1e9


def run(args) -> Report:
    rng = np.random.default_rng(args.seed)
    n, c, d, h, w = 1, args.channels, args.depth, args.size, args.size
    x = rng.standard_normal((n, c, d, h, w), dtype=np.float32)
    grid = make_grid(args.grid, n, d, h, w, rng)
    bytes_moved = x.nbytes + grid.nbytes + x.nbytes  # output has the input's size here
    copy_gb_s = memory_copy_gb_s(bytes_moved, args.warmup, args.repeats)
    floor_s = bytes_moved / (copy_gb_s * 1e9)
    report = Report(shape={"x": list(x.shape), "grid": list(grid.shape)}, grid=args.grid, threads=args.threads,
                    spinning=args.spinning, repeats=args.repeats, machine=machine_info(), bytes_moved=bytes_moved,
                    copy_gb_s=copy_gb_s, floor_ms=floor_s * 1e3)

    candidates = {}
    custom = ort_session(custom=True, threads=args.threads, spinning=args.spinning)
    candidates["GridSample3D (ORT custom op)"] = lambda: custom.run(None, {"X": x, "grid": grid})[0]
    builtin = ort_session(custom=False, threads=args.threads, spinning=args.spinning)
    candidates["onnxruntime GridSample-20"] = lambda: builtin.run(None, {"X": x, "grid": grid})[0]
    if torch is not None:
        torch.set_num_threads(args.threads)
        tx, tgrid = torch.from_numpy(x), torch.from_numpy(grid)

        def torch_eager():
            with torch.inference_mode():
                return torch.nn.functional.grid_sample(tx, tgrid, mode="bilinear", padding_mode="zeros",
                                                       align_corners=False).numpy()
        candidates["PyTorch eager grid_sample"] = torch_eager
    candidates["GridSample3D (pybind11)"] = lambda: megaportraits.grid_sample_3d(x, grid, num_threads=args.threads)

    reference = None
    for name, fn in candidates.items():
        seconds, cpu_seconds, y = time_runs(fn, args.warmup, args.repeats)
        reference = y if reference is None else reference
        median = statistics.median(seconds)
        report.timings.append(Timing(
            name=name, median_ms=median * 1e3, p90_ms=p90(seconds) * 1e3, min_ms=min(seconds) * 1e3,
            cpu_ms=statistics.median(cpu_seconds) * 1e3,
            effective_gb_s=bytes_moved / median / 1e9, x_floor=median / floor_s,
            max_abs_diff=float(np.abs(y - reference).max())))
    return report


def print_table(report: Report) -> None:
    m = report.machine
    print(f"GridSample3D benchmark: X {tuple(report.shape['x'])} -> grid {tuple(report.shape['grid'])}, "
          f"{report.grid} grid, linear/zeros/align_corners=0")
    print(f"machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} cores; python {m['python']}, "
          f"numpy {m['numpy']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}; load average "
          f"{m['load_average_1min']}")
    print(f"threads {report.threads} (onnxruntime pool spinning {'on' if report.spinning else 'off'}), "
          f"{report.repeats} timed runs after warm-up; bytes moved per warp "
          f"{report.bytes_moved / 1e6:.1f} MB; numpy copy {report.copy_gb_s:.1f} GB/s -> floor "
          f"{report.floor_ms:.2f} ms\n")
    header = (f"{'implementation':<30} {'median ms':>10} {'p90 ms':>10} {'min ms':>8} {'cpu ms':>8} {'GB/s':>7} {'x floor':>8} "
              f"{'speed-up':>9} {'max|diff|':>10}")
    print(header)
    print("-" * len(header))
    builtin = next((t.median_ms for t in report.timings if t.name.startswith("onnxruntime")), None)
    for t in report.timings:
        speedup = f"{builtin / t.median_ms:.1f}x" if builtin else "-"
        print(f"{t.name:<30} {t.median_ms:>10.2f} {t.p90_ms:>10.2f} {t.min_ms:>8.2f} {t.cpu_ms:>8.2f} {t.effective_gb_s:>7.2f} {t.x_floor:>8.1f} "
              f"{speedup:>9} {t.max_abs_diff:>10.1e}")
    print("\nspeed-up: against onnxruntime's built-in GridSample (medians); x floor: median / memory-bandwidth floor;\n"
          "cpu ms: CPU time of all threads per run (ORT's pool threads spin between tasks); on a busy machine\n"
          "compare --threads 1 runs, where cpu ms is the time the warp takes when it has a core to itself")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every implementation "
                        "(default: all cores)")
    parser.add_argument("--grid", choices=["random", "smooth"], default="random")
    parser.add_argument("--no-spinning", dest="spinning", action="store_false",
                        help="onnxruntime pool threads sleep instead of spinning between tasks (kinder to a busy machine)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="height and width of the volume and the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        json.dump(asdict(report), sys.stdout, indent=2)
        print()
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
