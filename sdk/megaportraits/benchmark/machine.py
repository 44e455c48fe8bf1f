"""What this machine can do at best, measured rather than looked up.

A stage's GFLOP/s means little without the ceiling beside it. Vendor peaks assume every core at
full turbo with perfect vector code; the useful ceiling is what ONNX Runtime itself reaches on a
large square MatMul with the same thread count, and the memory bandwidth a large streaming copy
reaches. Each stage's floor (flops.GraphCost.floor_seconds) is computed against these two.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from ..sessions import create_session, session_options
from .requirements import require_onnx
from .stats import measure


@dataclass(frozen=True)
class MachinePeaks:
    """Measured ceilings: GEMM throughput and memory bandwidth."""

    threads: int  # intra-op threads (0 on a GPU)
    gemm_gflops: float  # ONNX Runtime MatMul, float32, `threads` intra-op threads
    gemm_size: int  # square matrix side used
    numpy_gemm_gflops: float | None  # numpy float32 matmul (its BLAS's own thread count); CPU only
    bandwidth_gbs: float  # best of the two streaming measurements below, GB/s (1e9 bytes)
    copy_gbs: float | None  # numpy copy of a large array: bytes read + bytes written; CPU only
    ort_stream_gbs: float  # ONNX Runtime elementwise Mul over a large tensor, same threads
    device: str = "cpu"
    gemm_fp16_gflops: float | None = None  # GPU only: the ceiling for fp16 bundles

    @property
    def gemm_flops_per_s(self) -> float:
        return self.gemm_gflops * 1e9

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9

    def to_dict(self) -> dict:
        return asdict(self)


def _single_node_session(op_type: str, inputs: list, output_rank: int, threads: int,
                         initializers: tuple = (), providers=("CPUExecutionProvider",), fp16: bool = False):
    onnx = require_onnx()
    h, f32 = onnx.helper, (onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT)
    graph = h.make_graph(
        [h.make_node(op_type, [name for name, _ in inputs] + [t.name for t in initializers], ["y"])],
        f"peak_{op_type.lower()}",
        [h.make_tensor_value_info(name, f32, shape) for name, shape in inputs],
        [h.make_tensor_value_info("y", f32, [None] * output_rank)],
        initializer=list(initializers))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    return create_session(model.SerializeToString(), list(providers), session_options(threads))


def measure_gemm(threads: int, size: int = 1536, runs: int = 5) -> float:
    """GFLOP/s of an ONNX Runtime float32 MatMul (size x size) @ (size x size)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    session = _single_node_session("MatMul", [("a", [size, size]), ("b", [size, size])], 2, threads)
    timing = measure(lambda: session.run(None, {"a": a, "b": b}), warmup=2, runs=runs)
    return 2.0 * size ** 3 / (timing.min_ms * 1e-3) / 1e9


def measure_numpy_gemm(size: int = 1536, runs: int = 5) -> float:
    """GFLOP/s of numpy's float32 matmul, for comparison with ONNX Runtime's."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    timing = measure(lambda: a @ b, warmup=1, runs=runs)
    return 2.0 * size ** 3 / (timing.min_ms * 1e-3) / 1e9


def measure_copy_bandwidth(mib: int = 128, runs: int = 5) -> float:
    """GB/s of a numpy copy between two arrays far larger than any cache (read + write)."""
    n = mib * (1 << 20) // 4
    src = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    timing = measure(lambda: np.copyto(dst, src), warmup=1, runs=runs)
    return 2.0 * src.nbytes / (timing.min_ms * 1e-3) / 1e9


def measure_ort_stream_bandwidth(threads: int, mib: int = 128, runs: int = 5) -> float:
    """GB/s of ONNX Runtime multiplying a large tensor by a scalar (read + write), same threads."""
    onnx = require_onnx()
    n = mib * (1 << 20) // 4
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    two = onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    session = _single_node_session("Mul", [("x", [n])], 1, threads, initializers=(two,))
    timing = measure(lambda: session.run(None, {"x": x}), warmup=1, runs=runs)
    return 2.0 * x.nbytes / (timing.min_ms * 1e-3) / 1e9


def measure_peaks(threads: int, gemm_size: int = 1536, runs: int = 5) -> MachinePeaks:
    """All ceilings at one thread count. The best run counts: a ceiling, not a typical value."""
    copy_gbs = measure_copy_bandwidth(runs=runs)
    ort_gbs = measure_ort_stream_bandwidth(threads, runs=runs)
    return MachinePeaks(
        threads=threads,
        gemm_gflops=measure_gemm(threads, gemm_size, runs),
        gemm_size=gemm_size,
        numpy_gemm_gflops=measure_numpy_gemm(gemm_size, runs),
        bandwidth_gbs=max(copy_gbs, ort_gbs),
        copy_gbs=copy_gbs,
        ort_stream_gbs=ort_gbs,
    )


def measure_cuda_peaks(size: int = 4096, mib: int = 512, runs: int = 10) -> MachinePeaks:
    """GPU ceilings through ONNX Runtime's CUDA provider, tensors resident on the device (no
    host transfers inside the timing): MatMul fp32 and fp16, and a streaming Mul."""
    onnx = require_onnx()
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    rng = np.random.default_rng(0)

    def device_run(session, feeds: dict):
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output("y", "cuda")
        return lambda: session.run_with_iobinding(binding)

    gemm = {}
    for fp16 in (False, True):
        dtype = np.float16 if fp16 else np.float32
        a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
        session = _single_node_session("MatMul", [("a", [size, size]), ("b", [size, size])], 2, 0,
                                       providers=providers, fp16=fp16)
        timing = measure(device_run(session, {"a": a, "b": b}), warmup=3, runs=runs)
        gemm[fp16] = 2.0 * size ** 3 / (timing.min_ms * 1e-3) / 1e9
    n = mib * (1 << 20) // 4
    x = rng.standard_normal(n, dtype=np.float32)
    two = onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    session = _single_node_session("Mul", [("x", [n])], 1, 0, initializers=(two,), providers=providers)
    timing = measure(device_run(session, {"x": x}), warmup=3, runs=runs)
    stream = 2.0 * x.nbytes / (timing.min_ms * 1e-3) / 1e9
    return MachinePeaks(threads=0, gemm_gflops=gemm[False], gemm_size=size, numpy_gemm_gflops=None,
                        bandwidth_gbs=stream, copy_gbs=None, ort_stream_gbs=stream, device="cuda",
                        gemm_fp16_gflops=gemm[True])


# ---- machine description -----------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list:
    """The vector extensions that decide GEMM speed (x86 only; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """Cores this process may run on (affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    """Who measured what: hardware, software versions, and how busy the machine was."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "load_average": list(load) if load else None,
        "measured_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class OtherLoad:
    """How much CPU other processes used while we measured, in cores (Linux; None elsewhere).

    The load average counts our own benchmark threads too, so it cannot tell a quiet machine
    from a busy one during a run; machine-wide busy time (/proc/stat) minus this process's own
    CPU time can.
    """

    def __init__(self):
        self._start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy_s = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return time.monotonic(), busy_s, own.user + own.system

    def cores(self) -> float | None:
        """Average number of cores others kept busy since this object was made."""
        end = self._snapshot()
        if self._start is None or end is None or end[0] - self._start[0] <= 0:
            return None
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others / (end[0] - self._start[0]))
