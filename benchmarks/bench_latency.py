"""Latency of MegaPortraits presets on this machine: our bundle beside the portable bundle and
PyTorch eager with the same weights, per stage, thread count and batch size.

For each preset a random-weight bundle is exported once (``random_model(preset, seed)``: the
same preset and seed always give the same weights) and reused on later runs. PyTorch runs the
very model that was exported, folded for inference exactly as the exporter folds it (weight
standardisation baked into the conv weights), so both sides do the same arithmetic; the script
checks that by comparing the generator's output on both sides before timing.

    python benchmarks/bench_latency.py --presets small256 --threads 2
    python benchmarks/bench_latency.py --presets paper512 --runs 3 --max-seconds 20 \\
        --bundle-root /tmp/megaportraits-bench

The real-time student of the same preset (random weights, seeded, one avatar; exported afresh
each run into ``--bundle-root``) is timed beside the teacher: the ``student`` stage, and a note
with its speed-up over the teacher's driver + generator (``per_frame``).

Writes ``benchmarks/results/latency_<preset>_<provider>.json`` (schema: megaportraits-benchmark/1)
and a PNG chart beside it, and prints the table.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from megaportraits import manifest as mf
from megaportraits.benchmark.cli import load_ceilings
from megaportraits.benchmark.report import format_table, save_report
from megaportraits.benchmark.runner import GRAPH_STAGES, IO_STAGES, STUDENT_STAGE, BenchmarkPlan, run_benchmark
from megaportraits.benchmark.stages import (CostBook, RunSettings, frontal_pose, random_feeds,
                                            warp_inputs, warp_model, with_cost)
from megaportraits.benchmark.flops import count_graph

RESULTS = Path(__file__).resolve().parent / "results"
GENERATOR_AGREEMENT = 1e-3  # max |torch - onnx| on the image for "same weights" to hold


# ---- bundles -----------------------------------------------------------------------------------
def bundle_path(root: Path, preset: str, seed: int) -> Path:
    return root / f"{preset}-seed{seed}"


def existing_bundle(path: Path, preset: str, seed: int) -> bool:
    """A bundle already exported from the same preset and seed (hence the same weights)."""
    try:
        manifest = mf.load_manifest(path)
    except mf.BundleError:
        return False
    return (manifest.preset == preset and manifest.provenance.get("weights") == "random-init"
            and manifest.provenance.get("seed") == seed and manifest.has_portable)


def prepare_bundle(root: Path, preset: str, seed: int):
    """(bundle dir, TorchEager of its weights, max |image difference| torch vs ONNX).

    A bundle already under ``root`` is reused only if its generator reproduces the model that
    ``random_model(preset, seed)`` builds now: presets change while a project grows, and a
    stale bundle would compare different networks."""
    from megaportraits_export.onnx_export import export_bundle, random_model

    path = bundle_path(root, preset, seed)
    model, config = random_model(preset, seed)
    if existing_bundle(path, preset, seed):
        eager = TorchEager(model, mf.load_manifest(path), path)
        diff = eager.check_same_weights(path)
        if diff <= GENERATOR_AGREEMENT:
            print(f"reusing {path} (generator matches the rebuilt model to {diff:.1e})")
            return path, eager, diff
        print(f"{path} was exported from another version of {preset}; exporting again")
    print(f"exporting {preset} (random weights, seed {seed}) to {path}; this can take minutes")
    started = time.perf_counter()
    export_bundle(model, config, path, preset=preset, provenance={"weights": "random-init", "seed": seed})
    print(f"exported in {time.perf_counter() - started:.0f} s")
    eager = TorchEager(model, mf.load_manifest(path), path)
    return path, eager, eager.check_same_weights(path)


def random_student_bundle(root: Path, preset: str, seed: int, teacher: Path) -> Path:
    """A random-weight student of ``preset`` (one avatar, matte as the teacher), exported afresh."""
    import shutil

    import torch

    from megaportraits_export.distill.graph import StudentAvatar, write_student_bundle
    from megaportraits_export.networks.student import build_student
    from megaportraits_export.student_config import get_student_config

    manifest = mf.load_manifest(teacher)
    config = get_student_config(preset).replace(num_avatars=1, matte=manifest.has_matte)
    torch.manual_seed(seed)
    student = build_student(config).eval()
    size = config.image_size
    photo = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path = root / f"student-{preset}-seed{seed}"
    shutil.rmtree(path, ignore_errors=True)  # always afresh: an older architecture would mislead
    print(f"exporting a random-weight {preset} student to {path}")
    return write_student_bundle(student, [StudentAvatar("random", photo, (0, 0, size))], teacher, path)


# ---- PyTorch eager, measured like the graphs ---------------------------------------------------
class TorchEager:
    """The exported model in PyTorch eager mode, fed exactly what the ONNX stages are fed."""

    def __init__(self, model, manifest: mf.Manifest, bundle_dir: Path, device: str = "cpu"):
        import torch
        from megaportraits_export.model import folded_for_export

        self.torch = torch
        self.device = device
        self.model = folded_for_export(model).eval().to(device)
        self.manifest = manifest
        self.book = CostBook(bundle_dir)

    def _synchronised(self, fn):
        """On a GPU, a call is done when the device is done, not when the kernels are queued."""
        if self.device == "cpu":
            return fn
        sync = self.torch.cuda.synchronize

        def run():
            fn()
            sync()
        return run

    def results(self, stages: tuple, threads: int, batch: int, settings: RunSettings, peaks) -> list:
        torch = self.torch
        torch.set_num_threads(threads)
        provider = "cpu" if self.device == "cpu" else "cuda"
        t = self._inputs(batch)
        m = self.model

        def per_frame():
            motion = m.driver_branch(t["driver_image"])
            return m.generator(t["canonical_volume"], t["global_descriptor"], t["pose"], motion.expression)

        work = {
            "source": (lambda: m.source_branch(t["source_image"]), ["source"]),
            "driver": (lambda: m.driver_branch(t["driver_image"]), ["driver"]),
            "generator": (lambda: m.generator(t["canonical_volume"], t["global_descriptor"], t["pose"],
                                              t["expression"]), ["generator"]),
            "per_frame": (per_frame, ["driver", "generator"]),
        }
        out = []
        with torch.inference_mode():
            for stage in (s for s in stages if s in work):
                fn, roles = work[stage]
                timing = settings.measure(self._synchronised(fn))
                costs = [self.book.graph(self.manifest.graphs[r].file, batch) for r in roles]
                out.append(with_cost(stage, "torch", provider, threads, batch, timing, costs, peaks))
            if "warp" in stages:
                volume, grid = (torch.from_numpy(a).to(self.device) for a in warp_inputs(self.manifest, batch))
                sample = torch.nn.functional.grid_sample
                timing = settings.measure(self._synchronised(
                    lambda: sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)))
                cost = count_graph(warp_model(tuple(volume.shape), tuple(grid.shape), custom=False), batch=batch)
                out.append(with_cost("warp", "torch", provider, threads, batch, timing, [cost], peaks))
        return out

    def _inputs(self, batch: int) -> dict:
        """The same arrays the ONNX graph stages use (same seed, same order of draws)."""
        torch = self.torch
        rng = np.random.default_rng(0)
        graphs = self.manifest.graphs
        source = random_feeds(graphs["source"].inputs, batch, rng)
        driver = random_feeds(graphs["driver"].inputs, batch, rng)
        put = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        with torch.inference_mode():
            avatar = self.model.source_branch(put(source["source_image"]))
        return {"source_image": put(source["source_image"]), "driver_image": put(driver["driver_image"]),
                "canonical_volume": avatar.canonical_volume, "global_descriptor": avatar.global_descriptor,
                "pose": put(frontal_pose(batch)), "expression": avatar.expression}

    def check_same_weights(self, bundle_dir: Path) -> float:
        """Max |image difference| between PyTorch and the bundle's portable generator graph on
        the same inputs; infinite when the two do not even have the same shapes. A matte
        model's graph splits its RGBA rendering into ``image`` and ``matte``: both are compared."""
        from megaportraits.sessions import create_session, session_options

        path = bundle_dir / self.manifest.graph_file("generator", portable=True)
        session = create_session(path, ["CPUExecutionProvider"], session_options())
        names = [i.name for i in session.get_inputs()]
        try:
            t = self._inputs(1)
            outputs = [o.name for o in session.get_outputs()]  # image (+ matte), in that order
            onnx_image = np.concatenate(session.run(outputs, {n: t[n].cpu().numpy() for n in names}), axis=1)
            with self.torch.inference_mode():
                torch_image = self.model.generator(*(t[n] for n in names)).cpu().numpy()
            return float(np.abs(onnx_image - torch_image).max())
        except Exception as e:  # noqa: BLE001  shapes of another architecture: ORT or torch errors
            print(f"the bundle does not fit the model: {' '.join(str(e).split())[:160]}")
            return float("inf")


def add_generator_profiles(report, bundle_dir: Path, threads: int, runs: int) -> None:
    """Per-op-type time of the generator graph, ours and portable, into the report."""
    from megaportraits.benchmark.profile import format_profile, profile_generator

    manifest = mf.load_manifest(bundle_dir)
    for variant in ("ours", "portable"):
        file = manifest.graph_file("generator", portable=variant == "portable")
        cost = count_graph(bundle_dir / file, batch=1)
        print(f"profiling the {variant} generator ({runs} runs, {threads} threads)")
        rows = profile_generator(bundle_dir, manifest, variant, threads, runs=runs, cost=cost)
        title = f"generator {variant}, cpu, {threads} thread(s), batch 1"
        report.profiles[title] = [r.to_dict() for r in rows]
        print(format_profile(title, rows))


# ---- command line ------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="small256", help="comma-separated presets (default small256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--bundle-root", type=Path, default=Path("/tmp/megaportraits-bench"),
                   help="where exported bundles are kept and reused (default /tmp/megaportraits-bench)")
    p.add_argument("--threads", default="", help="comma-separated thread counts (default: all usable cores)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--stages", default=",".join(GRAPH_STAGES + ("warp",) + IO_STAGES + (STUDENT_STAGE,)))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch eager even if torch is installed")
    p.add_argument("--profile", type=int, default=0, metavar="RUNS",
                   help="also profile the generator graph (ours and portable) per op type over RUNS runs")
    p.add_argument("--ceilings", metavar="REPORT.json",
                   help="machine ceilings from an earlier report (measured on a quiet machine)")
    p.add_argument("--output-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="suffix for the result file names (e.g. the machine)")
    return p.parse_args(argv)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import megaportraits_export.model  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ints = lambda s: tuple(int(v) for v in s.split(",") if v.strip())  # noqa: E731
    stages = tuple(s for s in args.stages.split(",") if s)
    settings = RunSettings(warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds)
    use_torch = not args.no_torch and torch_available()
    if not use_torch and not args.no_torch:
        print("torch or megaportraits_export is not installed: no PyTorch eager column, and only "
              "bundles already exported under --bundle-root can be used")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for preset in (p for p in args.presets.split(",") if p):
        path = bundle_path(args.bundle_root, preset, args.seed)
        eager, diff = None, None
        if use_torch:
            path, eager, diff = prepare_bundle(args.bundle_root, preset, args.seed)
        elif not existing_bundle(path, preset, args.seed):
            print(f"no bundle for {preset} at {path}, and no torch to export one", file=sys.stderr)
            return 1
        student = random_student_bundle(args.bundle_root, preset, args.seed, path) \
            if use_torch and STUDENT_STAGE in stages else None
        plan = BenchmarkPlan(bundle_dir=path, threads=ints(args.threads), batches=ints(args.batch),
                             stages=stages, settings=settings, student_dir=student)
        extra = None
        if eager is not None:
            def extra(report, peaks, eager=eager, diff=diff, plan=plan):
                report.notes.append(f"PyTorch eager runs the exported weights (folded like the export): "
                                    f"generator image max |torch - onnx| = {diff:.1e}")
                if diff > GENERATOR_AGREEMENT:
                    report.notes.append("WARNING: PyTorch and ONNX disagree beyond "
                                        f"{GENERATOR_AGREEMENT}: the torch column may not be the same model")
                for threads in plan.thread_counts():
                    for batch in plan.batches:
                        print(f"measuring PyTorch eager: {threads} thread(s), batch {batch}")
                        report.results += eager.results(stages, threads, batch, settings, peaks[threads])
        peaks = load_ceilings(args.ceilings) if args.ceilings else None
        report = run_benchmark(plan, extra_measurements=extra, peaks=peaks)
        if args.profile:
            add_generator_profiles(report, path, max(plan.thread_counts()), args.profile)
        del eager, extra
        gc.collect()
        print(format_table(report))
        stem = f"latency_{preset}_cpu" + (f"_{args.tag}" if args.tag else "")
        save_report(report, args.output_dir, stem)
        print(json.dumps(report.comparisons("per_frame"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
