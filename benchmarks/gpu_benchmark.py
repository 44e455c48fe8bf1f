"""The latency benchmark on a CUDA GPU, in one run of at most ~5 minutes.

What it does, in order (it prints each step):
  1. checks that onnxruntime has a *working* CUDAExecutionProvider (listed is not enough: a
     missing cuDNN only shows when a session is created); if not, says why and exits 2;
  2. measures the GPU's ceilings through onnxruntime-gpu: MatMul fp32 and fp16, streaming bandwidth;
  3. for each bundle (--bundle, repeatable; default: the random-weight small256 and paper512
     bundles that benchmarks/bench_latency.py exports under --bundle-root, else the demo model):
     source, driver, generator, per-frame and the warp alone on CUDA, ours (custom op) and
     portable (standard GridSample), batch sizes from --batch, in the bundle's precision (fp32;
     fp16 where the manifest says the bundle is fp16; an fp32 bundle has no fp16 variant, and the
     report says so), with the avatar's volume kept on the device as the Animator keeps it;
  4. PyTorch eager on CUDA with the same weights, when torch has CUDA and the bundle is a
     random-init export whose (preset, seed) rebuilds it;
  5. writes benchmarks/results/gpu_<preset>_<precision>.json and .png and prints the table;
  6. the warp alone (the paper's 1x96x16x64x64 volume to a 16x64x64 smooth grid), in fp32 and
     fp16 data (float32 grid): our GridSample3D's CUDA flavour vs onnxruntime's built-in
     GridSample-20 on CUDA (5-D where the installed onnxruntime-gpu has it) vs torch CUDA, all
     with inputs and outputs bound on the device (IOBinding), so only the kernels are timed;
     writes benchmarks/results/gpu_warp.json.

``--fp16`` first makes the fp16 flavour of every fp32 bundle measured (the exporter's own
conversion, ``megaportraits_export.onnx_export.precision``; needs the [export] extra), so each
stage is measured in fp32 and fp16.

The budget (--budget, default 280 s) is split over the measurements; a bundle that would start
after the budget is skipped and named in the output.

    python benchmarks/gpu_benchmark.py
    python benchmarks/gpu_benchmark.py --bundle /tmp/megaportraits-bench/paper512-seed0 --batch 1,4
    python benchmarks/gpu_benchmark.py --fp16 --warp-only      # the three warps alone
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from megaportraits import manifest as mf  # noqa: E402
from megaportraits.benchmark.report import format_table, save_report  # noqa: E402
from megaportraits.benchmark.runner import BenchmarkPlan, run_benchmark  # noqa: E402
from megaportraits.benchmark.stages import RunSettings  # noqa: E402

CUDA = "CUDAExecutionProvider"
GPU_STAGES = ("source", "driver", "generator", "per_frame", "warp")
DEFAULT_PRESETS = ("small256", "paper512")


def say(message: str) -> None:
    print(f"[gpu_benchmark] {message}", flush=True)


def cuda_problem() -> str | None:
    """None if a CUDA session really runs here, else the reason in one line."""
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has {', '.join(available)}); "
                "install onnxruntime-gpu for your CUDA version: pip install 'megaportraits[gpu]'")
    try:
        from onnx import TensorProto, helper

        from megaportraits.sessions import create_session, session_options
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = create_session(model.SerializeToString(), [CUDA, "CPUExecutionProvider"], session_options())
        session.run(None, {"x": np.ones(4, np.float32)})
    except Exception as e:  # noqa: BLE001  any failure here means: no usable GPU
        return f"creating a CUDA session failed: {' '.join(str(e).split())[:300]}"
    if session.get_providers()[0] != CUDA:
        return ("onnxruntime fell back to the CPU when asked for CUDA (missing CUDA/cuDNN libraries?); "
                "run with ORT logging (log_severity_level=0) to see which library is missing")
    return None


def default_bundles(root: Path, seed: int) -> list:
    from bench_latency import bundle_path, existing_bundle

    found = [bundle_path(root, p, seed) for p in DEFAULT_PRESETS
             if existing_bundle(bundle_path(root, p, seed), p, seed)]
    if found:
        return found
    from megaportraits.bundle import DEMO_BUNDLE, demo_bundle_installed
    return [DEMO_BUNDLE] if demo_bundle_installed() else []


def torch_eager(bundle: Path, manifest: mf.Manifest, device: str):
    """A TorchEager on ``device`` for a random-init bundle, or (None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return None, "this torch has no CUDA"
    if manifest.provenance.get("weights") != "random-init" or "seed" not in manifest.provenance:
        return None, "the bundle's weights cannot be rebuilt in PyTorch (not a random-init export)"
    if manifest.precision != "fp32":
        return None, f"PyTorch eager is measured in fp32 only; this bundle is {manifest.precision}"
    try:
        from bench_latency import TorchEager
        from megaportraits_export.onnx_export import random_model
    except ImportError as e:
        return None, f"megaportraits_export is not importable ({e})"
    model, _ = random_model(manifest.preset, int(manifest.provenance["seed"]))
    return TorchEager(model, manifest, bundle, device=device), ""


# ---- fp16 flavours ------------------------------------------------------------------------------
def fp16_flavour(bundle: Path) -> Path:
    """The fp16 flavour of an fp32 bundle, made beside it once (``<bundle>-fp16``)."""
    from megaportraits_export.onnx_export.precision import convert_written_graphs, record_conversion

    target = bundle.with_name(bundle.name + "-fp16")
    try:
        if mf.load_manifest(target).precision == "fp16":
            return target
    except mf.BundleError:
        pass
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle, staging)
    manifest = mf.load_manifest(staging)
    report = convert_written_graphs(staging, manifest.graphs, "fp16", manifest.image_size, matte=manifest.has_matte)
    record_conversion(manifest, report)
    mf.write_manifest(staging, manifest)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


# ---- the warp alone: our op vs onnxruntime's GridSample vs torch --------------------------------
WARP_VOLUME = (1, 96, 16, 64, 64)  # the paper's canonical volume
WARP_GRID = (1, 16, 64, 64, 3)


def smooth_grid(seed: int = 0):
    """A scaled identity plus a smooth deformation, like the model's warps."""
    import numpy as np

    d, h, w = WARP_GRID[1:4]
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in (w, h, d)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    rng = np.random.default_rng(seed)
    base = np.stack([x, y, z], -1) * 0.9
    wobble = 0.05 * np.sin(3 * np.stack([y, z, x], -1) + rng.uniform(0, 6, 3))
    return (base + wobble)[None].astype(np.float32)


def _one_node(op: str, data_type: int) -> bytes:
    from onnx import TensorProto, helper

    from megaportraits.schema import GRID_SAMPLE_3D
    custom = op == GRID_SAMPLE_3D.name
    node = helper.make_node(op, ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain if custom else "",
                            mode="linear", padding_mode="zeros", align_corners=0)
    graph = helper.make_graph([node], "warp", [helper.make_tensor_value_info("X", data_type, WARP_VOLUME),
                                               helper.make_tensor_value_info("grid", TensorProto.FLOAT, WARP_GRID)],
                              [helper.make_tensor_value_info("Y", data_type, None)])
    opsets = [helper.make_opsetid("", 20)] + (
        [helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version)] if custom else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _time(call, sync, seconds: float, runs: int = 200) -> dict:
    for _ in range(3):
        call()
    sync()
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < runs and time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - started)
    return {"median_ms": 1000 * statistics.median(times), "fastest_ms": 1000 * min(times), "runs": len(times)}


def warp_comparison(device: str, seconds_each: float) -> dict:
    """ms per warp for each implementation and precision, inputs and outputs on ``device``.

    onnxruntime sessions are run through IOBinding (OrtValues on the device, output bound
    there), so what is timed is the kernel, not host copies. Each entry also records whether
    the op really ran on the device: onnxruntime silently places a node without a kernel for
    the provider on the CPU (its own GridSample-20 has a 5-D CUDA kernel only in newer builds).
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto

    from megaportraits.schema import GRID_SAMPLE_3D
    from megaportraits.sessions import require_custom_op_library, session_options

    rng = np.random.default_rng(0)
    volume32 = rng.standard_normal(WARP_VOLUME, dtype=np.float32)
    grid = smooth_grid()
    providers = [CUDA, "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    results: dict = {"device": device, "volume": list(WARP_VOLUME), "grid": list(WARP_GRID), "runs": {}}
    reference = None
    for precision, data_type, volume in (("fp32", TensorProto.FLOAT, volume32),
                                         ("fp16", TensorProto.FLOAT16, volume32.astype(np.float16))):
        for label, op, library in (("ours (GridSample3D)", GRID_SAMPLE_3D.name, require_custom_op_library()),
                                   ("onnxruntime GridSample-20", "GridSample", None)):
            key = f"{label}, {precision}"
            try:
                options = session_options(0, library)
                session = ort.InferenceSession(_one_node(op, data_type), options, providers=providers)
                binding = session.io_binding()
                binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(volume, device, 0))
                binding.bind_ortvalue_input("grid", ort.OrtValue.ortvalue_from_numpy(grid, device, 0))
                binding.bind_output("Y", device, 0)
                timing = _time(lambda: session.run_with_iobinding(binding), binding.synchronize_outputs,
                               seconds_each)
                y = binding.copy_outputs_to_cpu()[0].astype(np.float32)
            except Exception as e:  # noqa: BLE001  a missing kernel is a result, not a crash
                results["runs"][key] = {"error": " ".join(str(e).split())[:300]}
                say(f"warp {key}: not measured ({results['runs'][key]['error']})")
                continue
            if reference is None:
                reference = y
            timing["max_abs_vs_ours_fp32"] = float(np.abs(y - reference).max())
            results["runs"][key] = timing
            say(f"warp {key}: median {timing['median_ms']:.3f} ms, fastest {timing['fastest_ms']:.3f} ms "
                f"({timing['runs']} runs), max |diff| vs ours fp32 {timing['max_abs_vs_ours_fp32']:.1e}")
    try:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            raise ImportError("this torch has no CUDA")
        x_t = torch.from_numpy(volume32).to(device)
        g_t = torch.from_numpy(grid).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            x_p, g_p = x_t.to(dtype), g_t.to(dtype)
            with torch.no_grad():
                timing = _time(lambda: torch.nn.functional.grid_sample(x_p, g_p, align_corners=False), sync,
                               seconds_each)
            results["runs"][f"torch grid_sample, {precision}"] = timing
            say(f"warp torch {precision}: median {timing['median_ms']:.3f} ms")
    except ImportError as e:
        results["runs"]["torch grid_sample"] = {"error": str(e)}
    ours = results["runs"].get("ours (GridSample3D), fp16", {}).get("median_ms")
    builtin = [r.get("median_ms") for k, r in results["runs"].items() if k.startswith("onnxruntime") and "median_ms" in r]
    if ours and builtin:
        results["ours_fp16_speedup_vs_best_builtin"] = min(builtin) / ours
    return results


def machine_info() -> dict:
    import onnxruntime as ort

    info = {"python": platform.python_version(), "onnxruntime": ort.__version__, "machine": platform.machine(),
            "processor": platform.processor()}
    try:
        import subprocess
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", type=Path, default=[], help="bundle directory (repeatable)")
    p.add_argument("--bundle-root", type=Path, default=Path("/tmp/megaportraits-bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--budget", type=float, default=280.0, help="seconds for all measurements (default 280)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--output-dir", type=Path, default=HERE / "results")
    p.add_argument("--fp16", action="store_true", help="also measure the fp16 flavour of every fp32 bundle")
    p.add_argument("--warp-only", action="store_true", help="measure only the warp comparison (step 6)")
    p.add_argument("--warp-seconds", type=float, default=4.0, help="seconds per warp variant (default 4)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run the same plan on the CPU (checks the script where there is no GPU)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    provider = "cpu" if args.cpu_dry_run else "cuda"
    say("step 1: checking for a working CUDA execution provider"
        + (" (skipped: --cpu-dry-run measures on the CPU)" if args.cpu_dry_run else ""))
    problem = None if args.cpu_dry_run else cuda_problem()
    if problem:
        say(f"no GPU measurement possible: {problem}")
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.warp_only:
        return _warp_step(args, provider)
    bundles = args.bundle or default_bundles(args.bundle_root, args.seed)
    if args.fp16:
        made = []
        for bundle in bundles:
            if mf.load_manifest(bundle).precision == "fp32":
                say(f"making the fp16 flavour of {bundle}")
                made.append(fp16_flavour(bundle))
        bundles = [*bundles, *made]
    if not bundles:
        say("no bundle to measure: pass --bundle DIR, or export with benchmarks/bench_latency.py first")
        return 2
    batches = tuple(int(b) for b in args.batch.split(",") if b.strip())
    # 5 stages x 2 variants x batches x bundles (+ torch: 5 more), and session creation besides.
    slots = len(bundles) * len(batches) * len(GPU_STAGES) * (2 + (0 if args.no_torch else 1))
    per_stage = max(0.5, min(5.0, 0.6 * args.budget / max(slots, 1)))
    settings = RunSettings(warmup=5, runs=200, max_seconds=per_stage)
    say(f"step 2-4: {len(bundles)} bundle(s), batch {batches}, about {per_stage:.1f} s per stage "
        f"(budget {args.budget:.0f} s)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    skipped = []
    for bundle in bundles:
        elapsed = time.monotonic() - started
        if elapsed > args.budget:
            skipped.append(str(bundle))
            continue
        manifest = mf.load_manifest(bundle)
        say(f"measuring {bundle} ({manifest.preset}, {manifest.precision}) at {elapsed:.0f} s")
        extra, notes = None, []
        if manifest.precision == "fp32" and not args.fp16:
            notes.append("fp16: not measured for this bundle: it is fp32 (--fp16 measures its fp16 flavour "
                         "too, or give an fp16 bundle with --bundle)")
        if not args.no_torch:
            eager, why = torch_eager(bundle, manifest, provider)
            if eager is None:
                notes.append(f"PyTorch eager not measured: {why}")
            else:
                def extra(report, peaks, eager=eager):
                    diff = eager.check_same_weights(bundle)
                    report.notes.append(f"PyTorch eager ({provider}, fp32) on the same weights: generator image "
                                        f"max |torch - onnx cpu| = {diff:.1e} (TF32 convolutions may add ~1e-3)")
                    gpu_peaks = peaks[1] if provider == "cpu" else _as_peaks(
                        next((p for p in report.peaks if p.get("device") == "cuda"), None))
                    for batch in batches:
                        say(f"PyTorch eager, batch {batch}")
                        report.results += eager.results(GPU_STAGES, 1, batch, settings, gpu_peaks)
        plan = BenchmarkPlan(bundle_dir=bundle, providers=(provider,), threads=(1,), batches=batches,
                             stages=GPU_STAGES, settings=settings)
        report = run_benchmark(plan, extra_measurements=extra, log=say)
        report.notes += notes
        if not report.results:  # e.g. fp16 graphs in --cpu-dry-run: the CPU provider refuses them
            say(f"nothing measured for {bundle}: " + "; ".join(report.notes))
            continue
        print(format_table(report))
        stem = f"gpu_{manifest.preset}_{manifest.precision}" + ("_cpu_dry_run" if args.cpu_dry_run else "")
        save_report(report, args.output_dir, stem, log=say)
    if skipped:
        say(f"budget spent: not measured: {', '.join(skipped)}")
    _warp_step(args, provider)
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0


def _warp_step(args, provider: str) -> int:
    say("step 6: the warp alone, ours vs onnxruntime's GridSample vs torch (IOBinding on the device)")
    result = warp_comparison(provider, args.warp_seconds)
    result["machine"] = machine_info()
    path = args.output_dir / ("gpu_warp" + ("_cpu_dry_run" if args.cpu_dry_run else "") + ".json")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)  # never a half-written result
    say(f"wrote {path}")
    return 0


def _as_peaks(d):
    from megaportraits.benchmark.machine import MachinePeaks
    return MachinePeaks(**d) if d else None


if __name__ == "__main__":
    sys.exit(main())
