"""GridSample3D's float16 flavour (X and Y float16, grid float32) and the CUDA kernel's source.

References: torch.nn.functional.grid_sample in float32 on the same (half-valued) X, and the
op's own float32 flavour, whose output rounded to half by numpy (round to nearest even) must be
the float16 flavour's output bit for bit: the half path samples in float32 and rounds once.
Every mode x padding x align_corners, random shapes, grids reaching far outside [-1, 1].

The CUDA kernel cannot run here (no GPU); what can be checked is that it compiles (when nvcc is
installed) and that it shares the sampling maths with the CPU kernel: one host/device header,
grid_sample_3d_core.h, which the CPU tests above exercise.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import megaportraits
from megaportraits.schema import GRID_SAMPLE_3D

torch = pytest.importorskip("torch", reason="torch (the [export] extra) is the reference implementation")

ROOT = Path(__file__).resolve().parents[2]
CPP = ROOT / "cpp_ext"
ALL_ATTRIBUTES = list(itertools.product(["linear", "nearest"], ["zeros", "border", "reflection"], [0, 1]))


def ops_library() -> str:
    """The op library under test: the installed one, or MEGAPORTRAITS_OPS_LIBRARY_UNDER_TEST (a
    private build, before it is installed)."""
    return os.environ.get("MEGAPORTRAITS_OPS_LIBRARY_UNDER_TEST") or str(megaportraits.custom_ops_library())


def model(x_type: int, mode="linear", padding_mode="zeros", align_corners=0) -> bytes:
    node = helper.make_node(GRID_SAMPLE_3D.name, ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain,
                            mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    graph = helper.make_graph(
        [node], "warp",
        [helper.make_tensor_value_info("X", x_type, None),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", x_type, None)])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def run(x, grid, mode="linear", padding_mode="zeros", align_corners=0, threads=2):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(ops_library())
    x_type = TensorProto.FLOAT16 if x.dtype == np.float16 else TensorProto.FLOAT
    session = ort.InferenceSession(model(x_type, mode, padding_mode, align_corners), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x, "grid": grid})[0]


def run_torch(x, grid, mode, padding_mode, align_corners):
    return torch.nn.functional.grid_sample(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(grid),
        mode="bilinear" if mode == "linear" else mode, padding_mode=padding_mode,
        align_corners=bool(align_corners)).numpy()


def random_case(rng, channels):
    d, h, w = (int(v) for v in rng.integers(2, 9, 3))
    do, ho, wo = (int(v) for v in rng.integers(2, 8, 3))
    x = (rng.standard_normal((2, channels, d, h, w)) * 4).astype(np.float16)
    grid = rng.uniform(-3.0, 3.0, (2, do, ho, wo, 3)).astype(np.float32)
    return x, grid


@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
@pytest.mark.parametrize("channels", [3, 16, 21])
def test_float16_matches_torch_float32_within_half_rounding(mode, padding_mode, align_corners, channels):
    # a seed of the case's own (hash() of strings changes with every process: PYTHONHASHSEED)
    rng = np.random.default_rng(zlib.crc32(f"{mode},{padding_mode},{align_corners},{channels}".encode()))
    x, grid = random_case(rng, channels)
    y = run(x, grid, mode, padding_mode, align_corners)
    assert y.dtype == np.float16 and y.shape == (2, channels) + grid.shape[1:4]
    expected = run_torch(x, grid, mode, padding_mode, align_corners)
    if mode == "nearest":
        np.testing.assert_array_equal(y, expected.astype(np.float16))  # copies of X's values: exact
        return
    # one rounding to half of a float32 result that itself differs from torch's by float rounding
    half_ulp = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float32) / 2
    error = np.abs(y.astype(np.float32) - expected)
    assert np.all(error <= half_ulp * (1 + 1e-3) + 1e-5 * (1 + np.abs(expected))), float(error.max())
    assert np.abs(expected).max() > 1.0  # not a vacuous case of zeros


@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
def test_float16_is_the_float32_flavour_rounded_once(mode, padding_mode, align_corners):
    rng = np.random.default_rng(7)
    x, grid = random_case(rng, 16)
    y16 = run(x, grid, mode, padding_mode, align_corners)
    y32 = run(x.astype(np.float32), grid, mode, padding_mode, align_corners)
    np.testing.assert_array_equal(y16.view(np.uint16), y32.astype(np.float16).view(np.uint16))


def test_every_half_value_passes_through_unchanged():
    """All 65536 half bit patterns as X, sampled at their own voxel centres (nearest): widening and
    narrowing round-trip exactly (NaNs stay NaN, signed zeros and subnormals keep their bits)."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = bits.view(np.float16).reshape(1, 1, 16, 64, 64)
    zs, ys, xs = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")
    grid = np.stack([(2 * xs + 1) / 64 - 1, (2 * ys + 1) / 64 - 1, (2 * zs + 1) / 16 - 1], -1)[None].astype(np.float32)
    y = run(x, grid, mode="nearest").reshape(-1)
    nan = np.isnan(bits.view(np.float16))
    np.testing.assert_array_equal(y.view(np.uint16)[~nan], bits[~nan])
    assert np.isnan(y[nan]).all()


def test_rounding_to_half_is_to_nearest_even():
    """Linear blends of two voxels landing between half values, across the whole range down to
    subnormal results: compared with numpy's float32 -> float16 rounding of the float32 flavour
    (ties to even). A convex blend of finite halves never overflows, so no inf can appear."""
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.uniform(-65504, 65504, 2000), rng.uniform(-1e-4, 1e-4, 2000),
                             rng.uniform(-1e-6, 1e-6, 2000), [65504, -65504, 6.1e-5, 5.96e-8, 0.0, -0.0]])
    values = values.astype(np.float16)
    # two voxels along x: a, b; sample at fraction t -> (1 - t) a + t b in float32
    count = values.size
    x = np.stack([values, values[::-1]], -1).reshape(1, 1, 1, count, 2).astype(np.float16)
    t = rng.uniform(0, 1, count).astype(np.float32)
    grid = np.stack([2 * t - 1, (2 * np.arange(count) + 1) / count - 1, np.zeros(count)], -1)
    grid = grid.reshape(1, 1, count, 1, 3).astype(np.float32)
    y16 = run(x, grid, align_corners=1)
    y32 = run(x.astype(np.float32), grid, align_corners=1)
    rounded = y32.astype(np.float16)
    assert (np.abs(rounded) < 6.1e-5).sum() > 1000  # subnormal results are exercised
    assert (rounded.astype(np.float32) != y32).mean() > 0.9  # and real rounding happens
    np.testing.assert_array_equal(y16.view(np.uint16), rounded.view(np.uint16))


def test_non_finite_grid_values_follow_the_float32_flavour():
    rng = np.random.default_rng(5)
    x, grid = random_case(rng, 4)
    grid.reshape(-1)[rng.choice(grid.size, 40, replace=False)] = [np.nan, np.inf, -np.inf, 1e30] * 10
    for padding_mode in ("zeros", "border", "reflection"):
        y16 = run(x, grid, padding_mode=padding_mode)
        y32 = run(x.astype(np.float32), grid, padding_mode=padding_mode)
        np.testing.assert_array_equal(y16.view(np.uint16), y32.astype(np.float16).view(np.uint16))


def test_float32_flavour_unchanged_by_the_float16_one():
    rng = np.random.default_rng(3)
    x, grid = random_case(rng, 16)
    x = x.astype(np.float32)
    expected = run_torch(x, grid, "linear", "zeros", 0)
    y = run(x, grid)
    assert y.dtype == np.float32 and np.abs(y - expected).max() < 1e-5


# ---- the CUDA kernel's source ------------------------------------------------------------------
MATHS = ("unnormalize", "clip", "reflect", "source_coordinate", "linear_taps", "nearest_tap", "corners_of",
         "half_to_float", "float_to_half")


def test_the_sampling_maths_is_defined_once_for_both_kernels():
    core = (CPP / "grid_sample_3d_core.h").read_text()
    for name in MATHS:
        assert re.search(rf"MEGAPORTRAITS_HOST_DEVICE \w+ {name}\(", core), name
    for source in ("grid_sample_3d.cc", "grid_sample_3d_cuda.cu", "ort_custom_op.cc"):
        text = (CPP / source).read_text()
        for name in MATHS:  # no second definition anywhere
            assert not re.search(rf"^\s*(inline\s+)?\w+ {name}\(", text, re.M), (source, name)
    assert "core::corners_of" in (CPP / "grid_sample_3d.cc").read_text()
    assert "core::corners_of" in (CPP / "grid_sample_3d_cuda.cu").read_text()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles(tmp_path):
    """Compile only: there is no GPU to run it on."""
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", f"-I{CPP}", "-gencode=arch=compute_90,code=sm_90",
         "-c", str(CPP / "grid_sample_3d_cuda.cu"), "-o", str(tmp_path / "kernel.o")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "kernel.o").stat().st_size > 0
