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
  5. writes benchmarks/results/gpu_<preset>_<precision>.json and .png and prints the table.

The budget (--budget, default 280 s) is split over the measurements; a bundle that would start
after the budget is skipped and named in the output.

    python benchmarks/gpu_benchmark.py
    python benchmarks/gpu_benchmark.py --bundle /tmp/megaportraits-bench/paper512-seed0 --batch 1,4
"""
from __future__ import annotations

import argparse
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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", type=Path, default=[], help="bundle directory (repeatable)")
    p.add_argument("--bundle-root", type=Path, default=Path("/tmp/megaportraits-bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--budget", type=float, default=280.0, help="seconds for all measurements (default 280)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--output-dir", type=Path, default=HERE / "results")
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
    bundles = args.bundle or default_bundles(args.bundle_root, args.seed)
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
        if manifest.precision == "fp32":
            notes.append("fp16: not measured for this bundle: it is fp32 (an fp16 bundle is measured "
                         "when one is given with --bundle)")
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
        print(format_table(report))
        stem = f"gpu_{manifest.preset}_{manifest.precision}" + ("_cpu_dry_run" if args.cpu_dry_run else "")
        save_report(report, args.output_dir, stem, log=say)
    if skipped:
        say(f"budget spent: not measured: {', '.join(skipped)}")
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0


def _as_peaks(d):
    from megaportraits.benchmark.machine import MachinePeaks
    return MachinePeaks(**d) if d else None


if __name__ == "__main__":
    sys.exit(main())
