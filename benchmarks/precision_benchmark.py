"""Per-frame latency on the CPU, int8 against fp32: the same random weights, the same sessions.

For each preset, the fp32 bundle (random weights, ``random_model(preset, seed)``) is exported
once under --bundle-root and reused; its int8 flavour is made from it by the exporter's own
conversion (``megaportraits_export.onnx_export.precision``; random weights, so the calibration
uses a few synthetic frames: speed does not depend on the ranges). A frame is what the SDK runs
per driver frame: the driver graph, then the generator graph, batch 1, in sessions built by
``megaportraits.sessions`` (custom-op graphs, idle pools not spinning). fp32 and int8 runs
alternate, so a change in the machine's load hits both alike; medians are reported with the
fastest run, the load average before and after, and the CPU's int8 features (VNNI, AMX).

    python benchmarks/precision_benchmark.py                        # small256 and paper512, 1 and 2 threads
    python benchmarks/precision_benchmark.py --presets small256 --threads 1 --runs 20

Writes benchmarks/results/precision_cpu.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megaportraits import manifest as mf
from megaportraits import sessions
from megaportraits.schema import DRIVER, GENERATOR, GRAPH_IO, SOURCE

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION_FRAMES_FOR_SPEED = 4


def say(message: str) -> None:
    print(f"[precision_benchmark] {message}", flush=True)


def fp32_bundle(root: Path, preset: str, seed: int) -> Path:
    from megaportraits_export.onnx_export import export_random_init

    path = root / f"{preset}-seed{seed}-fp32"
    try:
        manifest = mf.load_manifest(path)
        if manifest.precision == "fp32" and manifest.provenance.get("seed") == seed and manifest.preset == preset:
            return path
    except mf.BundleError:
        pass
    say(f"exporting {preset} (random weights, seed {seed}) to {path}")
    return export_random_init(preset, seed, path, external_weights=True)


def int8_bundle(fp32: Path) -> Path:
    from megaportraits_export.onnx_export.precision import (convert_written_graphs, record_conversion,
                                                            synthetic_calibration_frames)

    from megaportraits_export.onnx_export.int8_graph import REWRITES

    path = fp32.with_name(fp32.name.replace("-fp32", "") + "-int8")
    try:
        manifest = mf.load_manifest(path)
        # reused only while it holds the current int8 rewrites (older ones are rebuilt)
        if manifest.precision == "int8" and manifest.provenance.get("precision", {}).get("int8_rewrites") == list(REWRITES):
            return path
    except mf.BundleError:
        pass
    say(f"making the int8 flavour of {fp32} at {path}")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        shutil.copytree(fp32, staging, dirs_exist_ok=True)
        manifest = mf.load_manifest(staging)
        frames = synthetic_calibration_frames(manifest.image_size, CALIBRATION_FRAMES_FOR_SPEED)
        report = convert_written_graphs(staging, manifest.graphs, "int8", manifest.image_size, frames,
                                        external_weights=True, matte=manifest.has_matte)
        record_conversion(manifest, report)
        mf.write_manifest(staging, manifest)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


class Frame:
    """driver + generator of one bundle, batch 1, as the SDK runs them."""

    def __init__(self, bundle: Path, threads: int, avatar: dict):
        manifest = mf.load_manifest(bundle)
        flavour = sessions.choose_flavour(manifest)
        if flavour.problem:
            raise SystemExit(f"error: {flavour.problem}")
        options = sessions.session_options(threads, flavour.library)
        self.driver = sessions.create_session(bundle / manifest.graph_file(DRIVER, flavour.portable),
                                              ["CPUExecutionProvider"], options)
        self.generator = sessions.create_session(bundle / manifest.graph_file(GENERATOR, flavour.portable),
                                                 ["CPUExecutionProvider"], options)
        self.avatar = avatar

    def __call__(self, driver_image: np.ndarray) -> np.ndarray:
        motion = dict(zip(GRAPH_IO[DRIVER].outputs, self.driver.run(None, {"driver_image": driver_image})))
        state = {**self.avatar, **motion}
        return self.generator.run(["image"], {n: state[n] for n in GRAPH_IO[GENERATOR].inputs})[0]


def avatar_of(bundle: Path, image: np.ndarray) -> dict:
    manifest = mf.load_manifest(bundle)
    flavour = sessions.choose_flavour(manifest)
    session = sessions.create_session(bundle / manifest.graph_file(SOURCE, flavour.portable), ["CPUExecutionProvider"],
                                      sessions.session_options(0, flavour.library))
    return dict(zip(GRAPH_IO[SOURCE].outputs, session.run(None, {"source_image": image})))


def measure(fp32: Path, int8: Path, threads: int, runs: int, max_seconds: float) -> dict:
    size = mf.load_manifest(fp32).image_size
    rng = np.random.default_rng(0)
    source = rng.random((1, 3, size, size), dtype=np.float32)
    driver = rng.random((1, 3, size, size), dtype=np.float32)
    avatar = avatar_of(fp32, source)
    frames = {"fp32": Frame(fp32, threads, avatar), "int8": Frame(int8, threads, avatar)}
    images = {name: frame(driver) for name, frame in frames.items()}  # warm-up, and the images compared
    times: dict = {"fp32": [], "int8": []}
    deadline = time.perf_counter() + max_seconds
    load_before = os.getloadavg()
    while len(times["int8"]) < runs and time.perf_counter() < deadline:
        for name, frame in frames.items():  # alternating: both see the same load
            started = time.perf_counter()
            frame(driver)
            times[name].append(time.perf_counter() - started)
    result = {"threads": threads, "runs": len(times["int8"]), "load_average_before": load_before[0],
              "load_average_after": os.getloadavg()[0]}
    for name, values in times.items():
        result[name] = {"median_ms": 1000 * statistics.median(values), "fastest_ms": 1000 * min(values)}
    result["speedup_median"] = result["fp32"]["median_ms"] / result["int8"]["median_ms"]
    result["speedup_fastest"] = result["fp32"]["fastest_ms"] / result["int8"]["fastest_ms"]
    mse = float(np.mean((images["fp32"].astype(np.float64) - images["int8"]) ** 2))
    result["image_psnr_db_random_weights"] = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
    return result


def machine_info() -> dict:
    import onnxruntime as ort

    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "onnxruntime": ort.__version__,
            "python": platform.python_version(),
            "int8_features": sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "avx512bw", "avx2"})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small256,paper512")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=15, help="frames per flavour and setting (default 15)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="per preset and thread count (default 120)")
    p.add_argument("--bundle-root", type=Path, default=Path("/tmp/megaportraits-bench"))
    p.add_argument("--output", type=Path, default=RESULTS / "precision_cpu.json")
    args = p.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    except ValueError:
        print(f"error: --threads takes whole numbers separated by commas, not {args.threads!r}", file=sys.stderr)
        return 1
    if not threads or min(threads) < 1 or args.runs < 1:
        print("error: --threads and --runs must be at least 1", file=sys.stderr)
        return 1
    args.bundle_root.mkdir(parents=True, exist_ok=True)
    report = {"schema": "megaportraits-precision-benchmark/1", "machine": machine_info(), "results": []}
    say(f"machine: {report['machine']}")
    for preset in presets:
        fp32 = fp32_bundle(args.bundle_root, preset, args.seed)
        int8 = int8_bundle(fp32)
        for t in threads:
            say(f"{preset}, {t} thread(s): fp32 and int8 frames, alternating")
            result = {"preset": preset, **measure(fp32, int8, t, args.runs, args.max_seconds)}
            report["results"].append(result)
            say(f"  fp32 median {result['fp32']['median_ms']:.1f} ms (fastest {result['fp32']['fastest_ms']:.1f}), "
                f"int8 median {result['int8']['median_ms']:.1f} ms (fastest {result['int8']['fastest_ms']:.1f}): "
                f"{result['speedup_median']:.2f}x median, {result['speedup_fastest']:.2f}x fastest; "
                f"load {result['load_average_before']:.1f} -> {result['load_average_after']:.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"\n{'preset':<10} {'threads':>7} {'fp32 ms':>9} {'int8 ms':>9} {'median x':>9} {'fastest x':>9} {'runs':>5}")
    for r in report["results"]:
        print(f"{r['preset']:<10} {r['threads']:>7} {r['fp32']['median_ms']:>9.1f} {r['int8']['median_ms']:>9.1f} "
              f"{r['speedup_median']:>9.2f} {r['speedup_fastest']:>9.2f} {r['runs']:>5}")
    say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
