"""One benchmark run: every requested stage x variant x provider x thread count x batch size,
with the machine's ceilings measured first, collected into one :class:`Report`."""
from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import manifest as mf
from .machine import MachinePeaks, OtherLoad, machine_info, measure_peaks, usable_cores
from .report import Report
from .stages import (PROVIDERS, BundleVariant, CostBook, RunSettings, UnavailableVariant,
                     measure_graph_stages, measure_warp)

GRAPH_STAGES = ("source", "driver", "generator", "per_frame", "enhancer")  # enhancer: when the bundle has one
IO_STAGES = ("face_crop", "paste_back", "backdrop", "composite", "video_decode", "video_encode")
STUDENT_STAGE = "student"  # the real-time student's one graph per frame, beside its teacher's per_frame
BUSY_CORES = 0.25  # CPU used by other processes during the run above which timings are flagged


@dataclass
class BenchmarkPlan:
    """What to measure. Empty ``threads`` means all usable cores."""

    bundle_dir: Path | None  # None: the bundled demo model
    providers: tuple = ("cpu",)
    threads: tuple = ()
    batches: tuple = (1,)
    variants: tuple = ("ours", "portable")
    stages: tuple = GRAPH_STAGES + ("warp",) + IO_STAGES + (STUDENT_STAGE,)
    settings: RunSettings = field(default_factory=RunSettings)
    student_dir: Path | None = None  # None: the shipped demo student when benchmarking the demo model

    def thread_counts(self) -> tuple:
        return tuple(self.threads) or (usable_cores(),)


def run_benchmark(plan: BenchmarkPlan, extra_measurements=None, log=print, peaks: dict | None = None) -> Report:
    """Measure everything in ``plan``. ``extra_measurements(report, peaks_by_threads)`` may add
    results measured outside the SDK (PyTorch eager in benchmarks/bench_latency.py). ``peaks``
    (threads -> MachinePeaks) replaces the measured CPU ceilings, e.g. with ones from an earlier
    run on a quieter machine."""
    bundle_dir, manifest = open_manifest(plan.bundle_dir)
    for provider in plan.providers:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
    others, machine = OtherLoad(), machine_info()
    if peaks is None:
        log(f"measuring the machine's GEMM and bandwidth ceilings at {plan.thread_counts()} thread(s)")
        peaks = {t: measure_peaks(t) for t in plan.thread_counts()}
    missing = [t for t in plan.thread_counts() if t not in peaks]
    if missing:
        raise ValueError(f"no machine ceilings given for {missing} thread(s)")
    gpu_peaks = _gpu_peaks(manifest) if "cuda" in plan.providers else None
    all_peaks = [p.to_dict() for p in peaks.values()] + ([gpu_peaks.to_dict()] if gpu_peaks else [])
    report = Report(machine=machine, peaks=all_peaks,
                    bundle=describe_bundle(bundle_dir, manifest), settings=_settings(plan))
    book = CostBook(bundle_dir)
    graph_stages = tuple(s for s in plan.stages if s in GRAPH_STAGES)
    for provider in plan.providers:
        for threads in plan.thread_counts():
            device_peaks = peaks[threads] if provider == "cpu" else gpu_peaks
            for batch in plan.batches:
                for variant in plan.variants:
                    _measure_variant(report, bundle_dir, manifest, book, variant, provider, threads,
                                     batch, graph_stages, plan, device_peaks, log)
    if any(s in IO_STAGES for s in plan.stages):
        from .io_stages import measure_io_stages

        log("measuring face crop, paste-back and video decode/encode")
        report.results += measure_io_stages(manifest, plan.settings,
                                            [s for s in plan.stages if s in IO_STAGES], report.notes)
    if STUDENT_STAGE in plan.stages:
        _measure_student(report, plan, bundle_dir, peaks, log)
    if extra_measurements is not None:
        extra_measurements(report, peaks)
    _note_load(report, others.cores())
    if book.graph(manifest.graphs["driver"].file, 1) is None:
        report.notes.append("FLOPs not counted: the onnx package is missing (pip install 'megaportraits[dev]')")
    return report


def _measure_variant(report: Report, bundle_dir: Path, manifest: mf.Manifest, book: CostBook,
                     variant: str, provider: str, threads: int, batch: int, graph_stages: tuple,
                     plan: BenchmarkPlan, peaks: MachinePeaks | None, log) -> None:
    label = f"{variant} on {provider}, {threads} thread(s), batch {batch}"
    stages = graph_stages
    if "enhancer" in stages and "enhancer" not in manifest.graphs:
        stages = tuple(s for s in stages if s != "enhancer")
        _note_once(report, "enhancer not measured: the bundle has no enhancer graph")
    if variant == "portable" and manifest.custom_op is not None:
        # A graph without the custom op is its own portable twin: measuring it again adds nothing.
        same = [s for s in graph_stages if s in manifest.graphs
                and manifest.graphs[s].portable_file == manifest.graphs[s].file]
        stages = tuple(s for s in stages if s not in same)
        if same:
            _note_once(report, f"portable {', '.join(same)}: the same graph file as ours, measured once")
    try:
        if stages:
            log(f"measuring {', '.join(stages)}: {label}")
            graphs = BundleVariant(bundle_dir, manifest, variant, provider, threads)
            report.results += measure_graph_stages(graphs, book, provider, threads, batch,
                                                   plan.settings, peaks, stages=stages)
            del graphs
            gc.collect()
        if "warp" in plan.stages:
            log(f"measuring the volume warp alone: {label}")
            report.results.append(measure_warp(manifest, variant, provider, threads, batch,
                                               plan.settings, peaks))
    except UnavailableVariant as e:
        _note_once(report, f"{variant} not measured: {e}")


def _measure_student(report: Report, plan: BenchmarkPlan, bundle_dir: Path, peaks: dict, log) -> None:
    """The student's graph per frame, and a note comparing it with the teacher's driver + generator."""
    from ..bundle import DEMO_BUNDLE
    from ..student import DEMO_STUDENT, is_student_bundle
    from .stages import measure_student

    student_dir = plan.student_dir
    if student_dir is None and Path(bundle_dir).resolve() == DEMO_BUNDLE.resolve() and is_student_bundle(DEMO_STUDENT):
        student_dir = DEMO_STUDENT
    if student_dir is None:
        _note_once(report, "student not measured: no student bundle for this model (give --student DIR)")
        return
    book = CostBook(Path(student_dir))
    for provider in plan.providers:
        for threads in plan.thread_counts():
            for batch in plan.batches:
                log(f"measuring the student {student_dir}: {provider}, {threads} thread(s), batch {batch}")
                try:
                    result = measure_student(Path(student_dir), book, provider, threads, batch, plan.settings,
                                             peaks.get(threads) if provider == "cpu" else None)
                except UnavailableVariant as e:
                    _note_once(report, f"student not measured: {e}")
                    return
                report.results.append(result)
                teacher = report.find("per_frame", "ours", provider, threads, batch) or \
                    report.find("per_frame", "portable", provider, threads, batch)
                if teacher is not None:
                    report.notes.append(
                        f"student per frame {result.timing.median_ms:.2f} ms vs the teacher's driver + generator "
                        f"{teacher.timing.median_ms:.2f} ms ({teacher.variant}): "
                        f"{teacher.timing.median_ms / result.timing.median_ms:.1f}x faster "
                        f"({provider}, {threads} thread(s), batch {batch})")


def _gpu_peaks(manifest: mf.Manifest) -> MachinePeaks | None:
    """CUDA ceilings; an fp16 bundle is compared with the fp16 GEMM ceiling. None if they
    cannot be measured (the stages then show no floor)."""
    from .machine import measure_cuda_peaks

    try:
        p = measure_cuda_peaks()
    except Exception as e:  # a broken CUDA setup must not cost the whole run
        print(f"could not measure the GPU's ceilings ({' '.join(str(e).split())[:200]})")
        return None
    if manifest.precision == "fp16" and p.gemm_fp16_gflops:
        p = replace(p, gemm_gflops=p.gemm_fp16_gflops)
    return p


def open_manifest(bundle_dir: Path | None) -> tuple:
    """The bundle's directory and its manifest, checked by the SDK's own validate_bundle (so the
    benchmark refuses exactly what ``animate`` refuses); errors are its one-line BundleError."""
    from ..bundle import validate_bundle

    report = validate_bundle(bundle_dir, open_sessions=True)
    report.raise_for_problems()
    return report.directory, report.manifest


def describe_bundle(bundle_dir: Path, manifest: mf.Manifest) -> dict:
    return {"path": str(bundle_dir), "preset": manifest.preset, "model_name": manifest.model_name,
            "image_size": manifest.image_size, "precision": manifest.precision,
            "custom_op": manifest.custom_op is not None, "has_portable": manifest.has_portable,
            "weights": manifest.provenance.get("weights", "trained"),
            "files_mib": round(sum((bundle_dir / f).stat().st_size for f in manifest.files) / 2**20, 1)}


def _settings(plan: BenchmarkPlan) -> dict:
    return {"providers": list(plan.providers), "threads": list(plan.thread_counts()),
            "batches": list(plan.batches), "variants": list(plan.variants), "stages": list(plan.stages),
            **asdict(plan.settings)}


def _note_once(report: Report, note: str) -> None:
    if note not in report.notes:
        report.notes.append(note)


def _note_load(report: Report, other_cores: float | None) -> None:
    report.machine["other_processes_cores"] = other_cores
    if other_cores is not None and other_cores > BUSY_CORES:
        report.notes.append(f"other processes kept {other_cores:.2f} of {report.machine.get('usable_cores')} "
                            "cores busy during the run: timings are slower than on a quiet machine")
