"""The int8 graph rewrites (megaportraits_export.onnx_export.int8_graph) against independent
references: the InstanceNormalization form of a GroupNorm against numpy's GroupNorm (float64)
on random inputs with a large mean, per-channel, single and several groups, with and without the
affine; shared dequantizers against the graph with duplicates. (The rewrite of the real
exported generator is checked in test_precision.py, against the two-pass graph it replaces.)"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from megaportraits_export.onnx_export import int8_graph


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _two_pass_group_norm(channels: int, groups: int, size: int, affine: bool, seed: int = 0) -> tuple:
    """The node pattern TwoPassGroupNorm exports to (torch.onnx, opset 18+), followed by a Relu;
    returns (model, gamma, beta)."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    beta = rng.normal(0, 1, channels).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([0, groups, -1], np.int64), "grouped_shape"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.float32(1e-5), "eps"),
             numpy_helper.from_array(np.array([1, channels, size, size], np.int64), "back_shape")]
    nodes = [helper.make_node("Reshape", ["x", "grouped_shape"], ["view"]),
             helper.make_node("ReduceMean", ["view", "axes"], ["mean"], keepdims=1),
             helper.make_node("Sub", ["view", "mean"], ["c1"]),
             helper.make_node("ReduceMean", ["c1", "axes"], ["mean1"], keepdims=1),
             helper.make_node("Sub", ["c1", "mean1"], ["c2"]),
             helper.make_node("Mul", ["c2", "c2"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Reciprocal", ["std"], ["rstd"]),
             helper.make_node("Mul", ["c2", "rstd"], ["normed"]),
             helper.make_node("Reshape", ["normed", "back_shape"], ["normed4"])]
    last = "normed4"
    if affine:
        inits += [numpy_helper.from_array(gamma.reshape(channels, 1, 1), "gamma"),
                  numpy_helper.from_array(beta.reshape(channels, 1, 1), "beta")]
        nodes += [helper.make_node("Mul", ["normed4", "gamma"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "beta"], ["shifted"])]
        last = "shifted"
    nodes.append(helper.make_node("Relu", [last], ["y"]))
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), gamma, beta


def _numpy_group_norm(x, groups, gamma=None, beta=None, eps=1e-5):
    n, c = x.shape[:2]
    grouped = x.astype(np.float64).reshape(n, groups, -1)
    normed = ((grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True) + eps)).reshape(x.shape)
    if gamma is not None:
        normed = normed * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)
    return normed


@pytest.mark.parametrize("channels,groups,affine", [(16, 4, True), (12, 1, True), (8, 8, False)])
def test_the_instance_norm_rewrite_is_group_norm(channels, groups, affine):
    model, gamma, beta = _two_pass_group_norm(channels, groups, 24, affine)
    assert int8_graph.instance_norm_group_norms(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("InstanceNormalization") == 1 and not {"ReduceMean", "Sub", "Sqrt"} & set(ops)
    assert ops.count("Reshape") == (0 if groups == channels else 2)  # per-channel groups: on the tensor itself
    assert model.graph.output[0].name == "y"
    rng = np.random.default_rng(3)
    x = (20.0 + 3.0 * rng.standard_normal((1, channels, 24, 24))).astype(np.float32)  # mean 20, std 3
    (got,) = _run(model, {"x": x})
    want = np.maximum(_numpy_group_norm(x, groups, gamma if affine else None, beta if affine else None), 0)
    assert np.abs(got - want).max() < 2e-4


def test_a_graph_without_the_pattern_is_left_alone():
    model, _, _ = _two_pass_group_norm(8, 2, 8, True)
    for node in model.graph.node:  # no longer the two-pass form: centred once only
        if node.output[0] == "c2":
            node.input[1] = "mean"
    before = model.SerializeToString()
    assert int8_graph.instance_norm_group_norms(model) == 0 and model.SerializeToString() == before


def test_shared_dequantizers_compute_the_same():
    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(7), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["b"]),
             helper.make_node("DequantizeLinear", ["q", "z_is_not_s", "z"], ["c"]),
             helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "c"], ["y"])]
    inits.append(numpy_helper.from_array(np.float32(0.1), "z_is_not_s"))
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("q", TensorProto.UINT8, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    q = np.random.default_rng(0).integers(0, 256, (4, 5), dtype=np.uint8)
    (want,) = _run(model, {"q": q})
    assert int8_graph.share_dequantizers(model) == 1
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2
    (got,) = _run(model, {"q": q})
    np.testing.assert_array_equal(got, want)


def test_small_output_convolutions_are_the_narrow_ones():
    inits = [numpy_helper.from_array(np.zeros((3, 4, 3, 3), np.float32), "w3"),
             numpy_helper.from_array(np.zeros((16, 4, 3, 3), np.float32), "w16")]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], name="narrow"),
             helper.make_node("Conv", ["x", "w16"], ["b"], name="wide")]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"], inits)
    assert int8_graph.small_output_convolutions(graph) == {"narrow"}


# ---- the rewrites of the second profile: uint8 resizes, pointwise MatMuls, residual Adds ------
def _resize_then_quantize(mode: bytes, extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Resize(2x, ``mode``) -> QuantizeLinear -> DequantizeLinear -> y (+ a Relu reading the
    Resize's float output when ``extra_reader``)."""
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.float32(0.037), "s"), numpy_helper.from_array(np.uint8(101), "z")]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], mode=mode,
                              coordinate_transformation_mode=b"asymmetric", nearest_mode=b"floor"),
             helper.make_node("QuantizeLinear", ["up", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 12])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["up"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 3, 10, 12]))
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_nearest_resize_runs_on_the_quantized_tensor_bit_for_bit():
    model = _resize_then_quantize(b"nearest")
    x = (np.random.default_rng(5).standard_normal((1, 3, 5, 6)) * 4).astype(np.float32)  # beyond the range too
    (want,) = _run(model, {"x": x})
    assert int8_graph.quantize_before_nearest_resizes(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("QuantizeLinear") < ops.index("Resize") < ops.index("DequantizeLinear")
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resize.input[0] == model.graph.node[ops.index("QuantizeLinear")].output[0]  # it reads uint8
    (got,) = _run(model, {"x": x})
    np.testing.assert_array_equal(got, want)
    # and the reference: every 2x2 block of the output is the quantized input pixel
    q = np.clip(np.round(x / np.float32(0.037)) + 101, 0, 255)
    np.testing.assert_allclose(got, np.float32(0.037) * (q.repeat(2, 2).repeat(2, 3) - 101), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode,extra_reader", [(b"linear", False), (b"nearest", True)])
def test_other_resizes_keep_their_float_input(mode, extra_reader):
    model = _resize_then_quantize(mode, extra_reader)
    before = model.SerializeToString()
    assert int8_graph.quantize_before_nearest_resizes(model) == 0 and model.SerializeToString() == before


def _pointwise_graph(bias: bool) -> tuple:
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((5, 7, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(5).astype(np.float32)
    w3 = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w3, "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"] if bias else ["x", "w1"], ["p"], name="pointwise"),
             helper.make_node("Conv", ["p", "w3"], ["y"], name="three", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 7, 9, 11])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 5, 9, 11]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 9, 11])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), w1, (b1 if bias else 0 * b1)


@pytest.mark.parametrize("bias", [True, False])
def test_a_float_pointwise_convolution_becomes_a_matmul_over_channels(bias):
    model, w1, b1 = _pointwise_graph(bias)
    x = np.random.default_rng(9).standard_normal((2, 7, 9, 11)).astype(np.float32)  # batch 2: the dynamic axis
    want_p, want_y = _run(model, {"x": x})
    assert int8_graph.pointwise_convolutions_as_matmuls(model) == 1
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node if n.op_type == "Conv"] == ["three"]  # the 3x3 one stays
    got_p, got_y = _run(model, {"x": x})
    reference = np.einsum("oc,nchw->nohw", w1[:, :, 0, 0].astype(np.float64), x) + b1.reshape(1, -1, 1, 1)
    assert np.abs(got_p - reference).max() < 1e-4  # float32 sums of 7 products of unit normals
    assert np.abs(got_p - want_p).max() < 1e-5 and np.abs(got_y - want_y).max() < 1e-4


def test_a_padded_or_strided_pointwise_convolution_stays_a_conv():
    model, _, _ = _pointwise_graph(True)
    model.graph.node[0].attribute.extend([helper.make_attribute("strides", [2, 2])])
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 5
    assert int8_graph.pointwise_convolutions_as_matmuls(model) == 0


def test_residual_adds_are_sums_of_quantized_convolutions_and_of_each_other():
    """conv_a + conv_b (a block), that + conv_c (the next block's identity skip); not an Add of a
    float convolution, of a constant, or one that a linear Resize reads."""
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    one = numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "one")
    nodes = [helper.make_node("Conv", ["x", "w"], [o], name=o) for o in ("a", "b", "c", "f", "g", "h")]
    nodes += [helper.make_node("Add", ["a", "b"], ["ab"], name="block"),
              helper.make_node("Add", ["ab", "c"], ["abc"], name="next_block"),
              helper.make_node("Add", ["abc", "f"], ["float_conv"], name="with_float_conv"),
              helper.make_node("Add", ["abc", "one"], ["constant"], name="with_constant"),
              helper.make_node("Add", ["g", "h"], ["gh"], name="read_by_linear_resize"),
              helper.make_node("Resize", ["gh", "", "scales"], ["up"], mode=b"linear")]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("float_conv", "constant", "up")], [w, one, scales])
    assert int8_graph.residual_adds(graph, {"a", "b", "c", "g", "h"}) == ["block", "next_block"]


@pytest.mark.parametrize("same", [True, False])
def test_a_nearest_resize_between_dequantize_and_quantize_reads_the_uint8_tensor(same):
    """DequantizeLinear -> Resize -> QuantizeLinear (a quantized residual sum upsampled): with one
    scale and zero point the pair goes and the Resize reads the uint8 input; with two, the
    Resize reads it too and the pair requantizes after it. Either way bit-equal."""
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.float32(0.05), "s_in"), numpy_helper.from_array(np.uint8(120), "z_in"),
             numpy_helper.from_array(np.float32(0.05 if same else 0.031), "s"),
             numpy_helper.from_array(np.uint8(120 if same else 97), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["d"]),
             helper.make_node("Resize", ["d", "", "scales"], ["up"], mode=b"nearest",
                              coordinate_transformation_mode=b"asymmetric", nearest_mode=b"floor"),
             helper.make_node("QuantizeLinear", ["up", "s", "z"], ["q"])]
    graph = helper.make_graph(nodes, "dq_resize", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 4, 5])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 2, 8, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.random.default_rng(4).integers(0, 256, (1, 2, 4, 5), dtype=np.uint8)
    (want,) = _run(model, {"x": x})
    assert int8_graph.quantize_before_nearest_resizes(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["Resize"] if same else ["Resize", "DequantizeLinear", "QuantizeLinear"])
    assert model.graph.node[0].input[0] == "x"
    (got,) = _run(model, {"x": x})
    np.testing.assert_array_equal(got, want)
    if same:
        np.testing.assert_array_equal(got, x.repeat(2, 2).repeat(2, 3))


def test_a_nearest_resize_of_a_dequantized_tensor_with_float_readers_resizes_the_uint8_one():
    """DequantizeLinear -> Resize -> (a float reader): the Resize moves before the
    DequantizeLinear, which now runs on the resized uint8 tensor. Bit-equal."""
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(120), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"]),
             helper.make_node("Resize", ["d", "", "scales"], ["up"], mode=b"nearest"),
             helper.make_node("Relu", ["up"], ["y"])]
    graph = helper.make_graph(nodes, "dq_resize", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.random.default_rng(6).integers(0, 256, (1, 2, 4, 5), dtype=np.uint8)
    (want,) = _run(model, {"x": x})
    assert int8_graph.quantize_before_nearest_resizes(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Resize", "DequantizeLinear", "Relu"]
    assert model.graph.node[0].input[0] == "x"
    (got,) = _run(model, {"x": x})
    np.testing.assert_array_equal(got, want)
