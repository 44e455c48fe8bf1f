"""Timing one piece of work: warm-up, repeated runs, robust summaries, and the memory peak.

The first runs of an ONNX Runtime session pay for allocation, kernel selection and cold caches,
so they are run and dropped. Latency on a shared machine has a long tail, so the summary is the
median with the p90 and p99 beside it, never the mean alone.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock measurements, in milliseconds."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    runs: int
    warmup: int
    peak_rss_mb: float | None = None  # the process's resident high-water mark after the runs

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(samples, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks
    (numpy's default), so small samples still give a value between observed ones."""
    if len(samples) == 0:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(float(s) for s in samples)
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(samples_s, warmup: int = 0, peak_rss_mb: float | None = None) -> Timing:
    """Summarise durations given in seconds."""
    ms = [s * 1e3 for s in samples_s]
    if not ms:
        raise ValueError("no timed runs to summarise")
    return Timing(median_ms=percentile(ms, 50), p90_ms=percentile(ms, 90),
                  p99_ms=percentile(ms, 99), min_ms=min(ms), mean_ms=float(np.mean(ms)),
                  runs=len(ms), warmup=warmup, peak_rss_mb=peak_rss_mb)


def measure(fn: Callable[[], object],
            warmup: int = 2,
            runs: int = 10,
            max_seconds: float | None = None,
            min_runs: int = 3) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then up to ``runs`` times timed.

    ``max_seconds`` caps the timed phase (never below ``min_runs`` runs), so one command can cover
    a fast stage with many runs and a slow one with few. The process's memory high-water mark is
    reset before the first call where the kernel allows it, so the peak reported is this stage's.
    """
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    reset_peak_rss()
    for _ in range(warmup):
        fn()
    samples = []
    started = time.perf_counter()
    while len(samples) < runs:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        over_budget = max_seconds is not None and time.perf_counter() - started > max_seconds
        if over_budget and len(samples) >= min_runs:
            break
    return summarize(samples, warmup=warmup, peak_rss_mb=peak_rss_mb())


# ---- memory ------------------------------------------------------------------------------------
def peak_rss_mb() -> float | None:
    """Resident-set high-water mark of this process in MiB (VmHWM on Linux, else getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs); False if the
    kernel does not allow it, in which case peaks are process-wide since start."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
