"""Where an int8 frame's time goes, beside the fp32 frame's: ONNX Runtime's profiler, per op type.

The same bundles as ``precision_benchmark.py`` (random weights, the int8 flavour made by the
exporter's own conversion). Each flavour's driver and generator graphs run with the profiler on,
1 thread by default, after a warm-up; the table sums each op type's kernel time per frame (both
graphs together), fp32 and int8 side by side, so what the int8 graph did not make cheaper, and
what it added (QuantizeLinear / DequantizeLinear, layout reorders), stands out.

It also lists what stayed float in the int8 graph *as ONNX Runtime runs it* (the optimised
graph, after its QDQ fusions): the float op types between quantized convolutions, and each
DequantizeLinear -> op -> QuantizeLinear chain it did not fuse into a QLinear* kernel.

    python benchmarks/precision_profile.py                       # small256, 1 thread, 5 runs
    python benchmarks/precision_profile.py --preset paper512 --runs 1 --top 25
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_benchmark import avatar_of, fp32_bundle, int8_bundle  # noqa: E402  (the same bundles)

from megaportraits import manifest as mf  # noqa: E402
from megaportraits import sessions  # noqa: E402
from megaportraits.schema import DRIVER, GENERATOR, GRAPH_IO  # noqa: E402

# ORT's fused and blocked-layout kernels, named as the file's op they run
_RUNTIME_NAMES = {"FusedConv": "Conv", "Upsample": "Resize", "NhwcFusedConv": "Conv"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


def say(message: str) -> None:
    print(f"[precision_profile] {message}", flush=True)


def _profiled_session(path: Path, threads: int, library, prefix: str, optimized: Path | None):
    options = sessions.session_options(threads, library, profile_prefix=prefix)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return sessions.create_session(path, ["CPUExecutionProvider"], options)


def _node_times(profile_file: str, runs: int) -> dict:
    """node name -> (op type, ms per run), the warm-up run dropped."""
    with open(profile_file, encoding="utf-8") as f:
        events = json.load(f)
    os.unlink(profile_file)
    seen, total, op_of = set(), defaultdict(float), {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if name not in seen:  # the warm-up run
            seen.add(name)
            continue
        node = name[: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        op_of[node] = _RUNTIME_NAMES.get(op, op)
        total[node] += float(e.get("dur", 0)) / 1e3 / runs
    return {n: (op_of[n], ms) for n, ms in total.items()}


def profile_frame(bundle: Path, threads: int, runs: int, avatar: dict, driver_image: np.ndarray,
                  keep_optimized: Path | None = None) -> dict:
    """node name (prefixed by role) -> (op type, ms per frame) for one bundle's driver + generator."""
    manifest = mf.load_manifest(bundle)
    flavour = sessions.choose_flavour(manifest)
    prefix = os.path.join(tempfile.gettempdir(), f"precision_profile_{os.getpid()}")
    times, feed = {}, {"driver_image": driver_image}
    for role in (DRIVER, GENERATOR):
        optimized = keep_optimized / f"{role}.optimized.onnx" if keep_optimized else None
        session = _profiled_session(bundle / manifest.graph_file(role, flavour.portable), threads, flavour.library,
                                    prefix, optimized)
        for _ in range(runs + 1):
            outputs = session.run(None, feed)
        times.update({f"{role}/{n}": v for n, v in _node_times(session.end_profiling(), runs).items()})
        if role == DRIVER:  # the generator renders this bundle's own motion of the driver frame
            state = {**avatar, **dict(zip(GRAPH_IO[DRIVER].outputs, outputs))}
            feed = {n: state[n] for n in GRAPH_IO[GENERATOR].inputs}
    return times


def by_op(times: dict) -> dict:
    total = defaultdict(float)
    for op, ms in times.values():
        total[op] += ms
    return dict(total)


def unfused_chains(optimized: Path) -> Counter:
    """Float op types in ONNX Runtime's optimised int8 graph that read a DequantizeLinear or feed
    a QuantizeLinear (a QDQ chain left in float), counted by op type."""
    proto = onnx.load(optimized, load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            consumers[i].append(n)
    chains = Counter()
    for n in proto.graph.node:
        if n.op_type in _QDQ or n.op_type.startswith("QLinear") or n.domain == "com.microsoft" and n.op_type.startswith("Q"):
            continue
        reads_dq = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
        feeds_q = any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers[o])
        if reads_dq or feeds_q:
            chains[f"{n.op_type} ({'DQ->' if reads_dq else ''}op{'->Q' if feeds_q else ''})"] += 1
    return chains


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=15, help="also list the TOP slowest int8 nodes")
    p.add_argument("--bundle-root", type=Path, default=Path("/tmp/megaportraits-bench"))
    p.add_argument("--int8-bundle", type=Path, default=None, help="profile this int8 bundle instead")
    args = p.parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        print("error: --threads and --runs must be at least 1", file=sys.stderr)
        return 1
    if args.int8_bundle is not None:
        try:
            if mf.load_manifest(args.int8_bundle).precision != "int8":
                print(f"error: --int8-bundle {args.int8_bundle} is not an int8 bundle", file=sys.stderr)
                return 1
        except mf.BundleError as e:
            print(f"error: --int8-bundle: {e}", file=sys.stderr)
            return 1
    args.bundle_root.mkdir(parents=True, exist_ok=True)
    fp32 = fp32_bundle(args.bundle_root, args.preset, args.seed)
    int8 = args.int8_bundle or int8_bundle(fp32)
    size = mf.load_manifest(fp32).image_size
    rng = np.random.default_rng(0)
    source, driver = rng.random((2, 1, 3, size, size), dtype=np.float32)
    avatar = avatar_of(fp32, source)
    say(f"{args.preset}, {args.threads} thread(s), {args.runs} profiled runs each; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        t32 = profile_frame(fp32, args.threads, args.runs, avatar, driver)
        t8 = profile_frame(int8, args.threads, args.runs, avatar, driver, keep_optimized=Path(tmp))
        chains = unfused_chains(Path(tmp) / f"{GENERATOR}.optimized.onnx") + unfused_chains(
            Path(tmp) / f"{DRIVER}.optimized.onnx")
        runtime_ops = Counter()
        for role in (DRIVER, GENERATOR):
            runtime_ops.update(n.op_type for n in onnx.load(Path(tmp) / f"{role}.optimized.onnx",
                                                            load_external_data=False).graph.node)
    o32, o8 = by_op(t32), by_op(t8)
    print(f"\nper frame (driver + generator), ms, sum of kernel times; load {os.getloadavg()[0]:.1f}")
    print(f"  {'op type':<26} {'fp32':>9} {'int8':>9}")
    for op in sorted(set(o32) | set(o8), key=lambda k: -max(o32.get(k, 0), o8.get(k, 0))):
        print(f"  {op:<26} {o32.get(op, 0):>9.2f} {o8.get(op, 0):>9.2f}")
    print(f"  {'total':<26} {sum(o32.values()):>9.2f} {sum(o8.values()):>9.2f}"
          f"   ({sum(o32.values()) / max(sum(o8.values()), 1e-9):.2f}x)")
    for role in (DRIVER, GENERATOR):
        r32, r8 = (sum(ms for node, (_, ms) in t.items() if node.startswith(f"{role}/")) for t in (t32, t8))
        print(f"  {role + ' graph':<26} {r32:>9.2f} {r8:>9.2f}   ({r32 / max(r8, 1e-9):.2f}x)")
    print("\nint8 graph as ONNX Runtime runs it (optimised), nodes by op type:")
    print("  " + ", ".join(f"{op} {k}" for op, k in runtime_ops.most_common()))
    print("float nodes at a QDQ boundary (DQ->op: reads a dequantized tensor; op->Q: feeds a quantizer):")
    print("  " + (", ".join(f"{op} {k}" for op, k in chains.most_common()) or "none"))
    print(f"\nslowest {args.top} int8 nodes:")
    for node, (op, ms) in sorted(t8.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"  {ms:>8.2f} ms  {op:<22} {node}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
