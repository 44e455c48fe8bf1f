"""Where a graph's time goes: ONNX Runtime's own per-node profile, summed by op type, beside
the FLOPs counted for the same op type.

A stage's distance from its floor says *that* it is slow; this says *which operators* are: an
op type with a large share of the time and a low GFLOP/s is where a kernel or a graph rewrite
pays off (e.g. normalisations that run as several memory-bound passes).

ONNX Runtime rewrites the graph before running it, so its op types are not the file's: a Conv
fused with its activation runs as ``FusedConv`` and a Resize in the blocked layout as
``Upsample`` (both are counted under the file's name here, so GFLOP/s per op type stays
meaningful), and ``ReorderInput``/``ReorderOutput`` are its layout conversions: pure overhead.
An activation fused into a Conv shows its FLOPs with no time of its own.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from ..schema import POSE
from ..sessions import create_session, session_options
from .flops import GraphCost
from .stages import PROVIDERS, custom_ops_library


_RUNTIME_NAMES = {"FusedConv": "Conv", "Upsample": "Resize"}  # ORT's rewritten op -> the file's op


@dataclass(frozen=True)
class OpTime:
    """One op type's share of a graph run."""

    op_type: str
    ms_per_run: float
    share: float  # of the summed node time
    flops: int
    gflops_per_s: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_profile(events: list, runs: int, cost: GraphCost | None) -> list:
    """Per-op-type time from ONNX Runtime profile events ("Node" events whose name ends in
    ``_kernel_time``), averaged over ``runs``, largest first."""
    totals = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            totals[_RUNTIME_NAMES.get(op, op)] += float(e.get("dur", 0)) / 1e3  # us -> ms
    whole = sum(totals.values()) or 1.0
    flops = cost.flops_by_op() if cost is not None else {}
    rows = []
    for op, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        per_run = ms / runs
        f = flops.get(op, 0)
        rows.append(OpTime(op, per_run, ms / whole, f, f / (per_run * 1e-3) / 1e9 if f and per_run > 0 else None))
    return rows


def profile_graph(path: Path, feeds: dict, threads: int, runs: int = 3, provider: str = "cpu",
                  needs_custom_op: bool = False, cost: GraphCost | None = None) -> list:
    """Run a graph ``runs`` times (after one warm-up) with ONNX Runtime's profiler on."""
    # In the temporary directory, not the caller's working directory (deleted below).
    opts = session_options(threads, custom_ops_library() if needs_custom_op else None,
                           profile_prefix=os.path.join(tempfile.gettempdir(), f"megaportraits_profile_{os.getpid()}"))
    session = create_session(path, PROVIDERS[provider], opts)
    session.run(None, feeds)
    for _ in range(runs):
        session.run(None, feeds)
    profile_file = session.end_profiling()
    try:
        with open(profile_file, encoding="utf-8") as f:
            events = json.load(f)
    finally:
        os.unlink(profile_file)
    # The warm-up run is in the file too: drop each node's first occurrence.
    seen, timed = set(), []
    for e in events:
        key = (e.get("cat"), e.get("name"))
        if e.get("cat") == "Node" and key not in seen:
            seen.add(key)
            continue
        timed.append(e)
    return summarize_profile(timed, runs, cost)


def format_profile(title: str, rows: list, top: int = 12) -> str:
    lines = [title, f"  {'op type':<24} {'ms/run':>9} {'share':>6} {'GFLOP':>9} {'GFLOP/s':>8}"]
    for r in rows[:top]:
        gflops = f"{r.gflops_per_s:8.1f}" if r.gflops_per_s is not None else f"{'-':>8}"
        lines.append(f"  {r.op_type:<24} {r.ms_per_run:>9.2f} {100 * r.share:>5.1f}% {r.flops / 1e9:>9.3f} {gflops}")
    return "\n".join(lines)


def profile_generator(bundle_dir: Path, manifest, variant: str, threads: int, batch: int = 1,
                      runs: int = 3, cost: GraphCost | None = None) -> list:
    """The generator graph (ours or its portable twin) profiled on the CPU, fed the avatar
    state's shapes and a near-frontal pose (the values of the volume do not change the work)."""
    import numpy as np

    from .stages import frontal_pose, random_feeds

    spec = manifest.graphs["generator"]
    file = spec.file if variant == "ours" else manifest.graph_file("generator", portable=True)
    feeds = random_feeds(spec.inputs, batch, np.random.default_rng(0))
    feeds[POSE] = frontal_pose(batch)
    needs_op = variant == "ours" and manifest.custom_op is not None
    return profile_graph(Path(bundle_dir) / file, feeds, threads, runs, needs_custom_op=needs_op, cost=cost)
