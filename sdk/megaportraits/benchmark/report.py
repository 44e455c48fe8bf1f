"""The benchmark's results as one record: terminal table, JSON for machines, PNG chart for people.

One :class:`StageResult` is one stage measured one way (variant x provider x threads x batch).
Each carries its work (FLOPs, bytes) and its roofline floor against the machine's measured peaks,
so a reader sees at once how fast a stage is, how fast the same work runs elsewhere (the portable
graph, PyTorch eager), and how far it is from what the machine allows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .stats import Timing

SCHEMA = "megaportraits-benchmark/1"
# custom-op graphs, standard-op twins, PyTorch eager, our kernel called from numpy (pybind11)
VARIANTS = ("ours", "portable", "torch", "native")
_ALTERNATIVES = VARIANTS[1:]  # what "ours" is compared with
STAGES = ("source", "driver", "generator", "per_frame", "enhancer", "warp", "face_crop", "paste_back", "backdrop",
          "composite", "video_decode", "video_encode", "student")
_REPORT_KEYS = ("schema", "machine", "peaks", "bundle", "settings", "results", "comparisons", "notes")
_RESULT_KEYS = ("stage", "variant", "provider", "threads", "batch", "timing", "flops", "bytes_moved",
                "floor_ms", "gflops_per_s", "peak_fraction", "x_floor", "note")
_TIMING_KEYS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "runs", "warmup", "peak_rss_mb")


@dataclass
class StageResult:
    """One stage measured one way. ``flops``/``floor_ms`` are None where no graph defines the
    work (video I/O, face crop) or where it was not counted."""

    stage: str
    variant: str
    provider: str
    threads: int
    batch: int
    timing: Timing
    flops: int | None = None
    bytes_moved: int | None = None
    floor_ms: float | None = None
    peak_gflops: float | None = None  # the GEMM ceiling this result is compared with
    note: str = ""

    @property
    def gflops_per_s(self) -> float | None:
        if self.flops is None or self.timing.median_ms <= 0:
            return None
        return self.flops / (self.timing.median_ms * 1e-3) / 1e9

    @property
    def peak_fraction(self) -> float | None:
        """Achieved GFLOP/s as a fraction of the measured GEMM peak at the same thread count."""
        achieved = self.gflops_per_s
        return None if achieved is None or not self.peak_gflops else achieved / self.peak_gflops

    @property
    def x_floor(self) -> float | None:
        """How many times slower than its roofline floor (1.0: as fast as the machine allows)."""
        return None if not self.floor_ms else self.timing.median_ms / self.floor_ms

    @property
    def key(self) -> tuple:
        return (self.stage, self.variant, self.provider, self.threads, self.batch)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "variant": self.variant, "provider": self.provider,
                "threads": self.threads, "batch": self.batch, "timing": self.timing.to_dict(),
                "flops": self.flops, "bytes_moved": self.bytes_moved, "floor_ms": self.floor_ms,
                "gflops_per_s": self.gflops_per_s, "peak_fraction": self.peak_fraction,
                "x_floor": self.x_floor, "note": self.note}


@dataclass
class Report:
    """Everything one benchmark run measured, with the machine and settings it ran under."""

    machine: dict
    peaks: list  # MachinePeaks.to_dict() per thread count
    bundle: dict
    settings: dict
    results: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    profiles: dict = field(default_factory=dict)  # title -> [OpTime.to_dict()] (optional)

    def find(self, stage: str, variant: str, provider: str, threads: int, batch: int):
        for r in self.results:
            if r.key == (stage, variant, provider, threads, batch):
                return r
        return None

    def comparisons(self, stage: str = "per_frame") -> list:
        """For each configuration: our median beside the alternatives', and the ratios
        (alternative / ours: above 1 means ours is faster)."""
        rows = []
        for r in self.results:
            if r.stage != stage or r.variant != "ours":
                continue
            row = {"stage": stage, "provider": r.provider, "threads": r.threads, "batch": r.batch,
                   "ours_ms": r.timing.median_ms}
            for other in _ALTERNATIVES:
                o = self.find(stage, other, r.provider, r.threads, r.batch)
                row[f"{other}_ms"] = o.timing.median_ms if o else None
                row[f"speedup_vs_{other}"] = o.timing.median_ms / r.timing.median_ms if o else None
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "machine": self.machine, "peaks": self.peaks, "bundle": self.bundle,
                "settings": self.settings, "results": [r.to_dict() for r in self.results],
                "comparisons": [row for stage in ("per_frame", "warp", "generator")
                                for row in self.comparisons(stage)],
                "notes": list(self.notes), "profiles": dict(self.profiles)}

    def write_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


def check_report_dict(d: dict) -> None:
    """Raise ValueError naming the first field a JSON report lacks or has of the wrong type;
    for consumers of ``--json`` and for the tests that pin the schema."""
    if not isinstance(d, dict):
        raise ValueError("a benchmark report must be a JSON object")
    missing = [k for k in _REPORT_KEYS if k not in d]
    if missing:
        raise ValueError(f"benchmark report lacks {', '.join(missing)}")
    if d["schema"] != SCHEMA:
        raise ValueError(f"benchmark report schema is {d['schema']!r}, expected {SCHEMA!r}")
    for i, r in enumerate(d["results"]):
        lacking = [k for k in _RESULT_KEYS if k not in r]
        if lacking:
            raise ValueError(f"results[{i}] lacks {', '.join(lacking)}")
        if r["stage"] not in STAGES or r["variant"] not in VARIANTS:
            raise ValueError(f"results[{i}] has unknown stage {r['stage']!r} or variant {r['variant']!r}")
        lacking = [k for k in _TIMING_KEYS if k not in r["timing"]]
        if lacking:
            raise ValueError(f"results[{i}].timing lacks {', '.join(lacking)}")
        t = r["timing"]
        if not t["min_ms"] <= t["median_ms"] <= t["p90_ms"] <= t["p99_ms"]:
            raise ValueError(f"results[{i}].timing is not ordered min <= median <= p90 <= p99")


# ---- terminal table ----------------------------------------------------------------------------
def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(report: Report) -> str:
    """The readable summary: one line per measurement, then the side-by-side ratios."""
    head = (f"{'stage':<12} {'variant':<8} {'prov':<4} {'thr':>3} {'bat':>3} {'median':>9} {'p90':>9} "
            f"{'p99':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'%peak':>6} {'floor':>8} {'xfloor':>6} {'peakMB':>7}")
    lines = [_machine_line(report), head, "-" * len(head)]
    for r in report.results:
        t = r.timing
        lines.append(
            f"{r.stage:<12} {r.variant:<8} {r.provider:<4} {r.threads:>3} {r.batch:>3} "
            f"{t.median_ms:>7.2f}ms {t.p90_ms:>7.2f}ms {t.p99_ms:>7.2f}ms "
            f"{_fmt(r.flops and r.flops / 1e9, '8.3f'):>8} {_fmt(r.gflops_per_s, '8.1f'):>8} "
            f"{_fmt(r.peak_fraction and 100 * r.peak_fraction, '5.1f'):>6} "
            f"{_fmt(r.floor_ms, '6.2f') + ('ms' if r.floor_ms else ''):>8} {_fmt(r.x_floor, '6.1f'):>6} "
            f"{_fmt(t.peak_rss_mb, '7.0f'):>7}" + (f"  {r.note}" if r.note else ""))
    comparisons = [row for stage in ("per_frame", "warp") for row in report.comparisons(stage)]
    if comparisons:
        lines += ["", "ours vs alternatives (median; ratio > 1: ours faster)"]
        for c in comparisons:
            parts = [f"{c['stage']:<10} {c['provider']} {c['threads']}thr batch {c['batch']}: "
                     f"ours {c['ours_ms']:.2f} ms"]
            for other in _ALTERNATIVES:
                if c[f"{other}_ms"] is not None:
                    parts.append(f"{other} {c[f'{other}_ms']:.2f} ms ({c[f'speedup_vs_{other}']:.2f}x)")
            lines.append(", ".join(parts))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _machine_line(report: Report) -> str:
    m = report.machine
    peaks = "; ".join(
        (f"{p['threads']}thr" if p.get("device", "cpu") == "cpu" else p["device"])
        + f" GEMM {p['gemm_gflops']:.0f} GFLOP/s, bandwidth {p['bandwidth_gbs']:.1f} GB/s"
        for p in report.peaks)
    load = m.get("load_average")
    return (f"{m.get('cpu_model')} ({m.get('usable_cores')} cores), onnxruntime {m.get('onnxruntime')}; "
            f"{peaks}" + (f"; load {load[0]:.2f}" if load else "")
            + f"\nbundle: {report.bundle.get('preset')} ({report.bundle.get('path')})")


# ---- PNG chart ---------------------------------------------------------------------------------
_COLOURS = {"ours": "#1f77b4", "portable": "#ff7f0e", "torch": "#7f7f7f", "native": "#2ca02c"}


def write_png(report: Report, path: str | os.PathLike) -> None:
    """Per-stage bars (median, whisker to p90), ours beside the alternatives, one panel per
    provider x threads x batch. Log scale: stages span four orders of magnitude."""
    from .requirements import require_pyplot

    plt = require_pyplot()
    configs = sorted({(r.provider, r.threads, r.batch) for r in report.results})
    if not configs:
        raise ValueError("the report has no results to chart")
    fig, axes = plt.subplots(len(configs), 1, figsize=(10, 3.6 * len(configs)), squeeze=False)
    for ax, (provider, threads, batch) in zip(axes[:, 0], configs):
        rows = [r for r in report.results if (r.provider, r.threads, r.batch) == (provider, threads, batch)]
        stages = [s for s in STAGES if any(r.stage == s for r in rows)]
        variants = [v for v in VARIANTS if any(r.variant == v for r in rows)]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            xs, heights, errs = [], [], []
            for j, stage in enumerate(stages):
                r = next((r for r in rows if (r.stage, r.variant) == (stage, variant)), None)
                if r is not None:
                    xs.append(j + (i - (len(variants) - 1) / 2) * width)
                    heights.append(r.timing.median_ms)
                    errs.append(r.timing.p90_ms - r.timing.median_ms)
            ax.bar(xs, heights, width, yerr=[[0] * len(errs), errs], capsize=2,
                   label=variant, color=_COLOURS[variant])
        ax.set_xticks(range(len(stages)), stages)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (whisker: p90)")
        ax.set_title(f"{report.bundle.get('preset')} on {provider}, {threads} thread(s), batch {batch}")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_report(report: Report, output_dir: str | os.PathLike, stem: str, log=print) -> None:
    """Write ``stem.json`` and, when matplotlib is installed, ``stem.png`` beside it: the JSON
    is the record, so a missing plotting library costs only the chart."""
    from pathlib import Path

    output_dir = Path(output_dir)
    report.write_json(output_dir / f"{stem}.json")
    try:
        write_png(report, output_dir / f"{stem}.png")
    except ImportError as e:
        log(f"no PNG: {e}")
    log(f"wrote {output_dir / stem}.json/.png")


def report_from_dict(d: dict) -> Report:
    """Rebuild a :class:`Report` from its JSON form (e.g. to redraw a chart from a results file)."""
    check_report_dict(d)
    peaks_by_threads = {p["threads"]: p["gemm_gflops"] for p in d["peaks"] if p.get("device", "cpu") == "cpu"}
    gpu = [p["gemm_gflops"] for p in d["peaks"] if p.get("device", "cpu") != "cpu"]
    results = []
    for r in d["results"]:
        results.append(StageResult(
            stage=r["stage"], variant=r["variant"], provider=r["provider"], threads=r["threads"],
            batch=r["batch"], timing=Timing(**r["timing"]), flops=r["flops"],
            bytes_moved=r["bytes_moved"], floor_ms=r["floor_ms"],
            peak_gflops=peaks_by_threads.get(r["threads"]) if r["provider"] == "cpu" else (gpu or [None])[0],
            note=r["note"]))
    return Report(machine=d["machine"], peaks=d["peaks"], bundle=d["bundle"], settings=d["settings"],
                  results=results, notes=d["notes"], profiles=d.get("profiles", {}))


__all__ = ["SCHEMA", "StageResult", "Report", "check_report_dict", "format_table", "write_png",
           "save_report", "report_from_dict"]
