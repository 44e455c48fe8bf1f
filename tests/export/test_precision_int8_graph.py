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
