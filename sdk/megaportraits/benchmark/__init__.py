"""Latency profiling of a model bundle: ``megaportraits benchmark``.

Per stage (source preparation, driver graph, generator graph, the volume warp alone, face crop
and paste-back, video decode and encode): warm-up, repeated runs, median/p90/p99 and the memory
peak; per graph, the FLOPs counted from the ONNX graph and the achieved GFLOP/s against this
machine's measured GEMM throughput and memory bandwidth, so each stage shows how far it is from
its floor. Our custom-op graphs are measured beside the bundle's portable twins (standard
GridSample); ``benchmarks/bench_latency.py`` adds PyTorch eager with the same weights.

Modules: :mod:`flops` (work in a graph), :mod:`machine` (ceilings, machine description),
:mod:`stats` (timing runner, percentiles, peak RSS), :mod:`stages` and :mod:`io_stages` (what
is timed), :mod:`profile` (time per op type), :mod:`runner` (one whole run), :mod:`report`
(table, JSON, PNG), :mod:`cli` (the subcommand).
Like the rest of the SDK it never imports torch; ``onnx`` (FLOPs) and ``matplotlib`` (PNG) are
optional, in the ``[dev]`` extra.
"""
from .cli import main
from .report import Report, StageResult
from .runner import BenchmarkPlan, run_benchmark

__all__ = ["main", "run_benchmark", "BenchmarkPlan", "Report", "StageResult"]
