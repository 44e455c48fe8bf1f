"""GridSample3D (cpp_ext) against independent references, through both of its front ends.

The op runs in an onnxruntime session with the custom-op library registered, and directly
through the pybind11 module; both must equal torch.nn.functional.grid_sample and ONNX's own
reference GridSample-20 on 5-D inputs, for every mode x padding x align_corners, on random
shapes and grids reaching far outside [-1, 1]. Non-finite grid values, bad attributes, dtypes
and shapes have defined results or clear errors.
"""
from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import megaportraits
from megaportraits import _native
from megaportraits.schema import GRID_SAMPLE_3D

torch = pytest.importorskip("torch", reason="torch (the [export] extra) is the reference implementation")

MODES = ["linear", "nearest"]
PADDINGS = ["zeros", "border", "reflection"]
ALIGN = [0, 1]
ALL_ATTRIBUTES = list(itertools.product(MODES, PADDINGS, ALIGN))
TOLERANCE = 1e-5


def grid_sample_model(op_type: str, mode: str, padding_mode: str, align_corners: int,
                      dtype: int = TensorProto.FLOAT) -> bytes:
    """A one-node model: com.megaportraits::GridSample3D or the standard GridSample-20."""
    custom = op_type == "GridSample3D"
    node = helper.make_node(op_type, ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain if custom else "",
                            mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version)] if custom else [])
    graph = helper.make_graph(
        [node], "warp",
        [helper.make_tensor_value_info("X", dtype, None), helper.make_tensor_value_info("grid", dtype, None)],
        [helper.make_tensor_value_info("Y", dtype, None)])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def custom_op_session(mode="linear", padding_mode="zeros", align_corners=0, threads=2,
                      dtype=TensorProto.FLOAT) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(megaportraits.custom_ops_library())
    model = grid_sample_model("GridSample3D", mode, padding_mode, align_corners, dtype)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(x, grid, mode, padding_mode, align_corners):
    return custom_op_session(mode, padding_mode, align_corners).run(None, {"X": x, "grid": grid})[0]


def run_pybind(x, grid, mode, padding_mode, align_corners):
    return megaportraits.grid_sample_3d(x, grid, mode=mode, padding_mode=padding_mode,
                                        align_corners=align_corners, num_threads=2)


FRONT_ENDS = {"onnxruntime": run_onnxruntime, "pybind11": run_pybind}


def run_torch(x, grid, mode, padding_mode, align_corners):
    return torch.nn.functional.grid_sample(
        torch.from_numpy(x), torch.from_numpy(grid), mode="bilinear" if mode == "linear" else mode,
        padding_mode=padding_mode, align_corners=bool(align_corners)).numpy()


def random_case(rng: np.random.Generator, channels=None, grid_range=3.0):
    """Batch 2, a non-cubic input volume and an output grid of another size."""
    c = channels or int(rng.integers(1, 6))
    d, h, w = (int(v) for v in rng.integers(2, 9, 3))
    do, ho, wo = (int(v) for v in rng.integers(2, 8, 3))
    x = rng.standard_normal((2, c, d, h, w), dtype=np.float32)
    grid = rng.uniform(-grid_range, grid_range, (2, do, ho, wo, 3)).astype(np.float32)
    return x, grid


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
def test_matches_torch_on_random_shapes_and_far_grids(front_end, mode, padding_mode, align_corners):
    rng = np.random.default_rng(zlib.crc32(f"{mode}-{padding_mode}-{align_corners}".encode()))
    for _ in range(3):
        x, grid = random_case(rng)
        y = FRONT_ENDS[front_end](x, grid, mode, padding_mode, align_corners)
        expected = run_torch(x, grid, mode, padding_mode, align_corners)
        assert y.shape == expected.shape == (2, x.shape[1]) + grid.shape[1:4]
        np.testing.assert_allclose(y, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("channels,in_size,out_size", [
    (37, (3, 9, 11), (3, 10, 11)), (200, (2, 5, 4), (1, 17, 19)), (48, (3, 7, 13), (2, 9, 13))])
def test_matches_torch_across_tile_and_task_edges(front_end, channels, in_size, out_size):
    """Channel and voxel counts that are not multiples of the kernel's tiles and tasks; a multiple
    of 16 channels takes the cache-line copy path, other counts the generic transpose."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, channels) + in_size, dtype=np.float32)
    grid = rng.uniform(-1.2, 1.2, (2,) + out_size + (3,)).astype(np.float32)
    y = FRONT_ENDS[front_end](x, grid, "linear", "zeros", 0)
    np.testing.assert_allclose(y, run_torch(x, grid, "linear", "zeros", 0), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
def test_matches_onnx_reference_gridsample_20(mode, padding_mode, align_corners):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 3, 4, 5), dtype=np.float32)
    grid = rng.uniform(-3, 3, (2, 2, 3, 2, 3)).astype(np.float32)
    reference = ReferenceEvaluator(grid_sample_model("GridSample", mode, padding_mode, align_corners))
    expected = reference.run(None, {"X": x, "grid": grid})[0]
    for front_end in FRONT_ENDS.values():
        y = front_end(x, grid, mode, padding_mode, align_corners)
        np.testing.assert_allclose(y, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("align_corners", ALIGN)
def test_nearest_rounds_half_to_even(front_end, align_corners):
    """Coordinates exactly between two voxels pick the even one, like torch (nearbyint)."""
    size = 5 if align_corners else 4  # makes the half-voxel grid values exact in float32
    x = np.arange(size, dtype=np.float32).reshape(1, 1, 1, 1, size) * 10
    voxel = np.array([0.5, 1.5, 2.5, 3.5][: size - 1], dtype=np.float32)
    g = voxel * 2 / (size - 1) - 1 if align_corners else (2 * voxel + 1) / size - 1
    grid = np.zeros((1, 1, 1, len(g), 3), dtype=np.float32)
    grid[..., 0] = g
    y = FRONT_ENDS[front_end](x, grid, "nearest", "zeros", align_corners)
    np.testing.assert_array_equal(y.ravel(), [0, 20, 20, 40][: len(g)])
    np.testing.assert_array_equal(y, run_torch(x, grid, "nearest", "zeros", align_corners))


NON_FINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
def test_non_finite_grid_values_match_torch(front_end, mode, padding_mode, align_corners):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5, 6), dtype=np.float32)
    grid = rng.uniform(-1.5, 1.5, (2, 3, 4, 5, 3)).astype(np.float32)
    flat = grid.reshape(-1)
    positions = rng.choice(flat.size, size=flat.size // 3, replace=False)
    flat[positions] = rng.choice(NON_FINITE, size=positions.size)
    y = FRONT_ENDS[front_end](x, grid, mode, padding_mode, align_corners)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, run_torch(x, grid, mode, padding_mode, align_corners), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("align_corners", ALIGN)
def test_non_finite_coordinates_follow_the_documented_rule(front_end, align_corners):
    """zeros: 0; border: NaN and +inf -> last voxel, -inf -> first; reflection: all -> last."""
    x = np.array([3.0, 5.0, 7.0, 11.0], dtype=np.float32).reshape(1, 1, 1, 1, 4)
    grid = np.zeros((1, 1, 1, 3, 3), dtype=np.float32)
    grid[0, 0, 0, :, 0] = [np.nan, np.inf, -np.inf]
    expected = {"zeros": [0, 0, 0], "border": [11, 11, 3], "reflection": [11, 11, 11]}
    for mode, padding_mode in itertools.product(MODES, PADDINGS):
        y = FRONT_ENDS[front_end](x, grid, mode, padding_mode, align_corners)
        np.testing.assert_array_equal(y.ravel(), expected[padding_mode], err_msg=f"{mode} {padding_mode}")


@pytest.mark.parametrize("mode,padding_mode,align_corners", ALL_ATTRIBUTES)
def test_huge_coordinates_stay_defined(mode, padding_mode, align_corners):
    """Far beyond any voxel (1e30): no crash, no out-of-bounds read, values from the volume or 0."""
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 2, (1, 2, 3, 4, 5)).astype(np.float32)
    grid = rng.choice(np.array([1e30, -1e30, 3e9, -7e12, 0.25], dtype=np.float32), size=(1, 2, 3, 4, 3))
    for front_end in FRONT_ENDS.values():
        y = front_end(x, grid, mode, padding_mode, align_corners)
        assert np.isfinite(y).all()
        if padding_mode == "zeros":
            outside = (np.abs(grid) > 1e9).any(axis=-1)
            assert (y[:, :, outside[0]] == 0).all()
        else:
            assert ((y >= 1) & (y <= 2)).all()  # a blend of in-volume values


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_results_do_not_depend_on_thread_count(front_end):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 16, 6, 10, 12), dtype=np.float32)
    grid = rng.uniform(-1.1, 1.1, (2, 5, 16, 16, 3)).astype(np.float32)
    if front_end == "pybind11":
        runs = [megaportraits.grid_sample_3d(x, grid, num_threads=n) for n in (1, 3)]
    else:
        runs = [custom_op_session(threads=n).run(None, {"X": x, "grid": grid})[0] for n in (1, 3)]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_empty_output_has_the_right_shape(front_end):
    x = np.ones((2, 3, 4, 5, 6), dtype=np.float32)
    grid = np.zeros((2, 0, 5, 6, 3), dtype=np.float32)
    assert FRONT_ENDS[front_end](x, grid, "linear", "zeros", 0).shape == (2, 3, 0, 5, 6)


@pytest.mark.parametrize("attribute,value,message", [
    ("mode", "cubic", "mode 'cubic' is not supported; use 'linear' (trilinear) or 'nearest'"),
    ("mode", "bilinear", "mode 'bilinear' is not supported"),
    ("padding_mode", "wrap", "padding_mode 'wrap' is not supported; use 'zeros', 'border' or 'reflection'"),
    ("align_corners", 2, "align_corners must be 0 or 1, got 2"),
])
def test_invalid_attributes_fail_at_session_creation_and_in_pybind(attribute, value, message):
    attributes = {"mode": "linear", "padding_mode": "zeros", "align_corners": 0, attribute: value}
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        custom_op_session(**attributes)
    x, grid = np.ones((1, 1, 2, 2, 2), np.float32), np.zeros((1, 1, 1, 1, 3), np.float32)
    if attribute != "align_corners":  # the Python wrapper takes align_corners as a bool
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            megaportraits.grid_sample_3d(x, grid, **attributes)


def test_unsupported_dtype_is_refused():
    with pytest.raises(Exception, match=r"tensor\(double\)"):
        custom_op_session(dtype=TensorProto.DOUBLE)
    x, grid = np.ones((1, 1, 2, 2, 2)), np.zeros((1, 1, 1, 1, 3), np.float32)
    with pytest.raises(TypeError, match=r"x must be float32, got float64; convert it with \.astype\(numpy\.float32\)"):
        megaportraits.grid_sample_3d(x, grid)


@pytest.mark.parametrize("x_shape,grid_shape,message", [
    ((1, 2, 3, 4), (1, 1, 1, 1, 3), r"X must be 5-D \(N, C, D, H, W\), got shape \(1, 2, 3, 4\)"),
    ((1, 2, 3, 4, 5), (1, 1, 1, 2), r"grid must be 5-D \(N, D_out, H_out, W_out, 3\), got shape \(1, 1, 1, 2\)"),
    ((1, 2, 3, 4, 5), (1, 1, 1, 1, 2), r"grid must be 5-D .* got shape \(1, 1, 1, 1, 2\)"),
    ((2, 2, 3, 4, 5), (1, 1, 1, 1, 3), r"X and grid must have the same batch size"),
    ((1, 2, 0, 4, 5), (1, 1, 1, 1, 3), r"X has an empty volume"),
])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_bad_shapes_give_clear_errors(front_end, x_shape, grid_shape, message):
    x, grid = np.ones(x_shape, np.float32), np.zeros(grid_shape, np.float32)
    with pytest.raises(Exception, match="GridSample3D: " + message):
        FRONT_ENDS[front_end](x, grid, "linear", "zeros", 0)


def test_library_lives_inside_the_package_and_exports_only_the_entry_point():
    path = Path(megaportraits.custom_ops_library())
    assert path.parent == Path(megaportraits.__file__).resolve().parent
    assert path.name == "libmegaportraits_ops.so"
    import ctypes
    library = ctypes.CDLL(str(path))
    assert hasattr(library, "RegisterCustomOps")
    # "only": the dynamic symbol table defines nothing else (no C++ or STL symbol leaks out to
    # clash with another library's copy); nm reads the ELF table itself
    import shutil
    import subprocess
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is needed to list the library's exported symbols")
    listed = subprocess.run(["nm", "-D", "--defined-only", str(path)], check=True, capture_output=True,
                            text=True).stdout.split("\n")
    exported = sorted(line.split()[-1] for line in listed if line.strip())
    assert exported == ["RegisterCustomOps"]


def test_missing_library_error_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(_native, "LIBRARY_NAME", "libnot_built.so")
    with pytest.raises(_native.NativeLibraryMissing, match="tools/fetch_onnxruntime_headers.sh"):
        megaportraits.custom_ops_library()


def test_session_infers_the_output_shape_with_symbolic_dimensions():
    node = helper.make_node(GRID_SAMPLE_3D.name, ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain)
    graph = helper.make_graph(
        [node], "warp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 5, 4, 6, 7]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["batch", 3, "height", 2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(megaportraits.custom_ops_library())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape == ["batch", 5, 3, "height", 2]


def test_unknown_dimensions_stay_unknown_without_shape_warnings(capfd):
    """Declared-unknown dims must not become a fixed -1 that every run contradicts (and logs)."""
    node = helper.make_node(GRID_SAMPLE_3D.name, ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain)
    graph = helper.make_graph(
        [node], "warp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None] * 5),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [None] * 5)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 5)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(megaportraits.custom_ops_library())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    capfd.readouterr()
    x, grid = np.ones((1, 2, 3, 4, 5), np.float32), np.zeros((1, 2, 2, 2, 3), np.float32)
    assert session.run(None, {"X": x, "grid": grid})[0].shape == (1, 2, 2, 2, 2)
    assert "does not match actual shape" not in capfd.readouterr().err


def test_pybind11_accepts_non_contiguous_views():
    rng = np.random.default_rng(13)
    base = rng.standard_normal((2, 6, 5, 4, 7), dtype=np.float32)
    x = base[:, ::2]  # strided channels
    grid = np.asfortranarray(rng.uniform(-1.5, 1.5, (2, 3, 4, 5, 3)).astype(np.float32))
    y = megaportraits.grid_sample_3d(x, grid, mode="linear", padding_mode="border", align_corners=True)
    expected = run_torch(np.ascontiguousarray(x), np.ascontiguousarray(grid), "linear", "border", 1)
    np.testing.assert_allclose(y, expected, rtol=0, atol=TOLERANCE)
