"""per-stage latency, FLOPs against measured machine ceilings, and peak memory

``megaportraits benchmark`` (registered through ``megaportraits.cli.EXTENSIONS``, which takes the
first docstring line above as its summary and calls :func:`add_arguments` and :func:`run`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import MegaportraitsError
from .report import format_table, write_png
from .runner import GRAPH_STAGES, IO_STAGES, STUDENT_STAGE, BenchmarkPlan, run_benchmark
from .stages import PROVIDERS, RunSettings

ALL_STAGES = GRAPH_STAGES + ("warp",) + IO_STAGES + (STUDENT_STAGE,)


def _int_list(text: str, most: int = 1024) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1 or max(values) > most:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers from 1 to {most}, e.g. 1,2")
    return values


def _thread_list(text: str) -> tuple:
    from ..animator import MAX_THREADS

    return _int_list(text, MAX_THREADS)


def _choices(allowed: tuple, what: str):
    def parse(text: str) -> tuple:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or text!r}; "
                                             f"choose from {', '.join(allowed)}")
        return values
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Measure per-stage latency (median, p90, p99), FLOPs, achieved GFLOP/s against the "
                     "machine's measured GEMM and bandwidth ceilings, and peak memory, for our custom-op "
                     "graphs beside the bundle's portable (standard GridSample) twins.")
    p.add_argument("--bundle", metavar="DIR", help="model bundle (default: the bundled demo model)")
    p.add_argument("--student", metavar="DIR", help="a student of that model, timed beside it (default for the "
                   "demo model: the bundled demo student)")
    p.add_argument("--provider", type=_choices(tuple(PROVIDERS) + ("all",), "provider"), default=("cpu",),
                   help="cpu, cuda, or all available (comma-separated; default cpu)")
    p.add_argument("--threads", type=_thread_list, default=(),
                   help="intra-op thread counts, e.g. 1,2 (default: all usable cores)")
    p.add_argument("--batch", type=_int_list, default=(1,), help="batch sizes, e.g. 1,4 (default 1)")
    p.add_argument("--variants", type=_choices(("ours", "portable"), "variant"), default=("ours", "portable"),
                   help="ours (custom op), portable (standard ops); default both")
    p.add_argument("--stages", type=_choices(ALL_STAGES, "stage"), default=ALL_STAGES,
                   help=f"comma-separated subset of {','.join(ALL_STAGES)}")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per stage (default 2)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per stage at most (default 20)")
    p.add_argument("--max-seconds", type=float, default=5.0,
                   help="time budget per stage; at least 3 runs are timed (default 5)")
    p.add_argument("--ceilings", metavar="REPORT.json",
                   help="take the machine's GEMM/bandwidth ceilings from an earlier report instead of "
                        "measuring them (e.g. one made when the machine was quiet)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--output", "-o", metavar="FILE.json", help="also write the JSON report to this file")
    p.add_argument("--png", metavar="FILE.png", help="also draw a per-stage bar chart (needs matplotlib)")


def build_parser(prog: str = "megaportraits benchmark") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    add_arguments(p)
    return p


def resolve_providers(requested: tuple) -> tuple:
    """``all``: the CPU and CUDA when this onnxruntime has it; ``cuda`` when it has not is the
    SDK's one-line ProviderError, before anything is measured."""
    from ..providers import available_providers, resolve_providers as sdk_providers

    if "all" in requested:
        return ("cpu",) + (("cuda",) if "CUDAExecutionProvider" in available_providers() else ())
    for choice in requested:
        sdk_providers(choice)
    return requested


def load_ceilings(path: str) -> dict:
    """threads -> MachinePeaks from the ``peaks`` of an earlier JSON report (CPU entries)."""
    from .machine import MachinePeaks

    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)["peaks"]
        return {int(p["threads"]): MachinePeaks(**p) for p in entries if p.get("device", "cpu") == "cpu"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MegaportraitsError(f"cannot read machine ceilings from {path!r} ({e}); "
                                 "give a report written by megaportraits benchmark --output") from None


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed arguments; errors are MegaportraitsError (one line)."""
    if args.warmup < 0 or args.runs < 1 or args.max_seconds <= 0:
        raise MegaportraitsError("--warmup must be >= 0, --runs >= 1 and --max-seconds > 0")
    from ..files import check_output_path
    if args.output:  # fail before minutes of measuring, not after
        check_output_path(args.output)
    if args.png:
        check_output_path(args.png)
        from .requirements import require_pyplot
        require_pyplot()
    plan = BenchmarkPlan(
        bundle_dir=Path(args.bundle) if args.bundle else None,
        providers=resolve_providers(args.provider),
        threads=args.threads,
        batches=args.batch,
        variants=args.variants,
        stages=args.stages,
        settings=RunSettings(warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds),
        student_dir=Path(args.student) if args.student else None,
    )
    progress = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    peaks = load_ceilings(args.ceilings) if args.ceilings else None
    report = run_benchmark(plan, log=progress, peaks=peaks)
    if args.output:
        report.write_json(args.output)
    if args.png:
        write_png(report, args.png)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
        for path in filter(None, (args.output, args.png)):
            print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    """Standalone entry (``python -m megaportraits.benchmark``); ``megaportraits benchmark`` is
    the same through the SDK's command."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MegaportraitsError as e:
        print(f"megaportraits benchmark: error: {e}", file=sys.stderr)
        return 1
