"""The op library's DequantizeInstanceNormalization (cpp_ext/dequantize_instance_norm.h) and the
int8 graph rewrite that uses it (onnx_export.int8_graph.fuse_dequantize_instance_norms), against
the standard DequantizeLinear + InstanceNormalization in ONNX Runtime and a float64 numpy
reference, on random uint8 tensors; and the portable twin that spells the op out again."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from megaportraits import sessions
from megaportraits.schema import DEQUANTIZE_INSTANCE_NORM
from megaportraits_export.onnx_export import int8_graph
from megaportraits_export.onnx_export.graph_files import check_model
from megaportraits_export.onnx_export.portable import custom_nodes_as_standard


@pytest.fixture(scope="module")
def library():
    return sessions.require_custom_op_library()


def _session(model: onnx.ModelProto, threads: int = 1, library: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _norm_model(shape, scale, zero_point, gamma, beta, epsilon, fused: bool) -> onnx.ModelProto:
    """Y = InstanceNormalization(DequantizeLinear(X)): one library node, or the two standard ones."""
    initializers = [numpy_helper.from_array(np.array(scale, np.float32), "x_scale"),
                    numpy_helper.from_array(np.array(zero_point, np.uint8), "x_zero_point"),
                    numpy_helper.from_array(gamma.astype(np.float32), "gamma"),
                    numpy_helper.from_array(beta.astype(np.float32), "beta")]
    if fused:
        nodes = [helper.make_node(DEQUANTIZE_INSTANCE_NORM.name, ["x", "x_scale", "x_zero_point", "gamma", "beta"],
                                  ["y"], domain=DEQUANTIZE_INSTANCE_NORM.domain, epsilon=epsilon)]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero_point"], ["dequantized"]),
                 helper.make_node("InstanceNormalization", ["dequantized", "gamma", "beta"], ["y"], epsilon=epsilon)]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.UINT8, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializers)
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(DEQUANTIZE_INSTANCE_NORM.domain, 1)] if fused else [])
    return helper.make_model(graph, opset_imports=opsets)


def _numpy_norm(x, scale, zero_point, gamma, beta, epsilon):
    values = (x.astype(np.float64) - zero_point) * scale
    axes = tuple(range(2, x.ndim))
    mean = values.mean(axis=axes, keepdims=True)
    variance = values.var(axis=axes, keepdims=True)
    broadcast = (1, -1) + (1,) * (x.ndim - 2)
    return (values - mean) / np.sqrt(variance + epsilon) * gamma.reshape(broadcast) + beta.reshape(broadcast)


# planes of one chunk and of several (16384 elements a chunk, a last partial one), 3-, 4- and 5-D,
# a batch of two, one channel (a GroupNorm(1, C)'s grouped view)
@pytest.mark.parametrize("shape", [(2, 16, 24, 24), (1, 1, 70001), (1, 3, 4, 40, 40), (1, 8, 128, 130)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_op_is_dequantize_then_instance_norm(library, shape, threads):
    rng = np.random.default_rng(sum(shape) + threads)
    channels = shape[1]
    scale, zero_point = float(rng.uniform(0.005, 0.2)), int(rng.integers(0, 256))
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    # a skewed distribution, and (given channels to spare) one channel nearly constant: a
    # variance epsilon matters for, which ONNX Runtime's float32 sums get 0.7% wrong
    x = np.clip(rng.gamma(2.0, 30.0, size=shape), 0, 255).astype(np.uint8)
    plain = slice(1, None) if channels > 1 else slice(None)
    if channels > 1:
        x[:, 0] = 7
        x[:, 0].flat[::97] = 8
    epsilon = 1e-5
    want = _numpy_norm(x, scale, zero_point, gamma, beta, epsilon)
    fused = _session(_norm_model(shape, scale, zero_point, gamma, beta, epsilon, True), threads, library)
    standard = _session(_norm_model(shape, scale, zero_point, gamma, beta, epsilon, False), threads)
    got, theirs = fused.run(None, {"x": x})[0], standard.run(None, {"x": x})[0]
    assert got.dtype == np.float32 and got.shape == shape
    # ours: exact integer statistics; ONNX Runtime's: float32 sums (less exact over large planes)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    np.testing.assert_allclose(got[:, plain], theirs[:, plain], rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.abs(got - want).max() <= np.abs(theirs - want).max() + 1e-6


def test_the_op_refuses_a_per_channel_scale_in_one_line(library):
    shape = (1, 4, 8, 8)
    model = _norm_model(shape, 0.1, 3, np.ones(4), np.zeros(4), 1e-5, True)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full(4, 0.1, np.float32), "x_scale"))
    session = _session(model, 1, library)
    with pytest.raises(Exception, match="x_scale and x_zero_point must be single values"):
        session.run(None, {"x": np.zeros(shape, np.uint8)})


def _int8_norms_graph(grouped: bool, zero_point_type=np.uint8) -> onnx.ModelProto:
    """Q -> DQ -> InstanceNormalization (per channel, or of a grouped view with the affine
    after it, as int8_graph.instance_norm_group_norms writes GroupNorm(G, C)) -> Relu."""
    channels, groups, size = 8, 2, 20
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(120 if zero_point_type == np.uint8 else -8, zero_point_type), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"])]
    if grouped:
        inits += [numpy_helper.from_array(np.array([0, groups, -1], np.int64), "view"),
                  numpy_helper.from_array(np.array([0, channels, size, size], np.int64), "back"),
                  numpy_helper.from_array(np.ones(groups, np.float32), "g"),
                  numpy_helper.from_array(np.zeros(groups, np.float32), "b"),
                  numpy_helper.from_array(rng.normal(size=(1, channels, 1, 1)).astype(np.float32), "gamma"),
                  numpy_helper.from_array(rng.normal(size=(1, channels, 1, 1)).astype(np.float32), "beta")]
        nodes += [helper.make_node("Reshape", ["d", "view"], ["grouped"], name="view"),
                  helper.make_node("InstanceNormalization", ["grouped", "g", "b"], ["n"], name="norm", epsilon=1e-5),
                  helper.make_node("Reshape", ["n", "back"], ["n4"]),
                  helper.make_node("Mul", ["n4", "gamma"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "beta"], ["y0"])]
    else:
        inits += [numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), "g"),
                  numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), "b")]
        nodes += [helper.make_node("InstanceNormalization", ["d", "g", "b"], ["y0"], name="norm", epsilon=1e-5)]
    nodes.append(helper.make_node("Relu", ["y0"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("grouped", [False, True])
def test_the_rewrite_fuses_each_normalisation_of_a_uint8_tensor_and_the_twin_undoes_it(library, grouped, tmp_path):
    original = _int8_norms_graph(grouped)
    fused = onnx.ModelProto.FromString(original.SerializeToString())
    assert int8_graph.fuse_dequantize_instance_norms(fused) == 1
    ops = [n.op_type for n in fused.graph.node]
    assert DEQUANTIZE_INSTANCE_NORM.name in ops and "InstanceNormalization" not in ops and "DequantizeLinear" not in ops
    twin = custom_nodes_as_standard(fused)
    assert not [n for n in twin.graph.node if n.domain] and "InstanceNormalization" in [n.op_type for n in twin.graph.node]
    for model, name in ((fused, "fused.onnx"), (twin, "twin.onnx")):
        onnx.save(model, tmp_path / name)
        check_model(tmp_path / name)
    x = {"x": np.random.default_rng(5).normal(size=(1, 8, 20, 20)).astype(np.float32)}
    want = _session(original).run(None, x)[0]
    # the twin is the original's ops (a Reshape moved before the DequantizeLinear: element-wise)
    np.testing.assert_array_equal(_session(twin).run(None, x)[0], want)
    np.testing.assert_allclose(_session(fused, 2, library).run(None, x)[0], want, rtol=0, atol=1e-4)


def test_a_normalisation_of_a_float_or_int8_tensor_is_left_alone():
    signed = _int8_norms_graph(False, np.int8)
    assert int8_graph.fuse_dequantize_instance_norms(signed) == 0
    plain = _int8_norms_graph(False)
    plain.graph.node[2].input[0] = "x"  # the norm reads the float input
    assert int8_graph.fuse_dequantize_instance_norms(plain) == 0
