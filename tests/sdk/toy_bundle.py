"""A small bundle built with onnx.helper that follows the graph I/O contract exactly.

It tests the SDK's plumbing independently of the real networks: every graph computes a simple,
known function of its inputs, re-implemented in numpy below (``reference_*``), so a test can
predict the SDK's output from first principles. Pose and expression are real functions of the
image (channel means of the whole image and of its top half), so different frames give
different, invertible poses and relative motion is non-trivial.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from megaportraits import manifest as mf
from megaportraits.schema import GRID_SAMPLE_3D

SIZE = 32
VOLUME = (3, 2, 8, 8)
DESCRIPTOR = (3, 4, 4)
EXPRESSION = 4
_rng = np.random.default_rng(1234)
A = (0.2 * _rng.standard_normal((6, 12))).astype(np.float32)
B = _rng.standard_normal((6, EXPRESSION)).astype(np.float32)
G = (0.5 * _rng.standard_normal((12 + EXPRESSION + 3, 3))).astype(np.float32)
IDENTITY = np.eye(3, 4, dtype=np.float32).reshape(12)
# the avatar-input generator (schema.AVATAR_GENERATOR_INPUTS): the motion's change from the
# source's own moves the colours, and the source crop shows through
H = (0.5 * _rng.standard_normal((12 + EXPRESSION, 3))).astype(np.float32)


# ---- numpy references ----------------------------------------------------------------------
def reference_motion(image: np.ndarray):
    """image (N, 3, S, S) -> pose (N, 3, 4), expression (N, Z)."""
    feats = np.concatenate([image.mean(axis=(2, 3)), image[:, :, :SIZE // 2].mean(axis=(2, 3))], axis=1)
    pose = (feats @ A + IDENTITY).reshape(-1, 3, 4)
    return pose.astype(np.float32), (feats @ B).astype(np.float32)


def reference_source(image: np.ndarray):
    n = image.shape[0]
    pooled = image.reshape(n, 3, 8, 4, 8, 4).mean(axis=(3, 5))
    volume = np.stack([pooled, 1.0 - pooled], axis=2)
    descriptor = image.reshape(n, 3, 4, 8, 4, 8).mean(axis=(3, 5))
    pose, expression = reference_motion(image)
    return volume.astype(np.float32), descriptor.astype(np.float32), pose, expression


def reference_generator(volume, descriptor, pose, expression, source_image=None, source_pose=None,
                        source_expression=None) -> np.ndarray:
    """The generator's image; with the avatar inputs (``make_toy_bundle(avatar_inputs=True)``)
    also shifted by the motion's change from the source's own and lit by the source crop."""
    n = volume.shape[0]
    base = volume.mean(axis=2).repeat(4, axis=2).repeat(4, axis=3)
    code = np.concatenate([pose.reshape(n, 12), expression, descriptor.mean(axis=(2, 3))], axis=1)
    logits = 4.0 * (base - 0.5) + (code @ G)[:, :, None, None]
    if source_image is not None:
        change = np.concatenate([(pose - source_pose).reshape(n, 12), expression - source_expression], axis=1)
        logits = logits + (change @ H)[:, :, None, None] + 2.0 * (source_image - 0.5)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


# ---- ONNX graphs -------------------------------------------------------------------------
def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _motion_nodes(image: str):
    half = [_const("starts", np.array([0], np.int64)), _const("ends", np.array([SIZE // 2], np.int64)),
            _const("axes", np.array([2], np.int64)), _const("mean_axes", np.array([2, 3], np.int64)),
            _const("A", A), _const("B", B), _const("identity", IDENTITY),
            _const("pose_shape", np.array([-1, 3, 4], np.int64))]
    nodes = [
        helper.make_node("ReduceMean", [image, "mean_axes"], ["mean_all"], keepdims=0),
        helper.make_node("Slice", [image, "starts", "ends", "axes"], ["top"]),
        helper.make_node("ReduceMean", ["top", "mean_axes"], ["mean_top"], keepdims=0),
        helper.make_node("Concat", ["mean_all", "mean_top"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "A"], ["pose_flat0"]),
        helper.make_node("Add", ["pose_flat0", "identity"], ["pose_flat"]),
        helper.make_node("Reshape", ["pose_flat", "pose_shape"], ["pose"]),
        helper.make_node("MatMul", ["feats", "B"], ["expression"]),
    ]
    return nodes, half


def _io(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _motion_outputs():
    return [_io("pose", ["batch", 3, 4]), _io("expression", ["batch", EXPRESSION])]


def source_graph() -> onnx.ModelProto:
    nodes, inits = _motion_nodes("source_image")
    inits += [_const("one", np.float32(1.0)), _const("unsq", np.array([2], np.int64))]
    nodes += [
        helper.make_node("AveragePool", ["source_image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Sub", ["one", "pooled"], ["inverse"]),
        helper.make_node("Unsqueeze", ["pooled", "unsq"], ["v0"]),
        helper.make_node("Unsqueeze", ["inverse", "unsq"], ["v1"]),
        helper.make_node("Concat", ["v0", "v1"], ["canonical_volume"], axis=2),
        helper.make_node("AveragePool", ["source_image"], ["global_descriptor"], kernel_shape=[8, 8], strides=[8, 8]),
    ]
    graph = helper.make_graph(nodes, "toy_source", [_io("source_image", ["batch", 3, SIZE, SIZE])],
                              [_io("canonical_volume", ["batch", *VOLUME]),
                               _io("global_descriptor", ["batch", *DESCRIPTOR])] + _motion_outputs(), inits)
    return _model(graph)


def driver_graph() -> onnx.ModelProto:
    nodes, inits = _motion_nodes("driver_image")
    graph = helper.make_graph(nodes, "toy_driver", [_io("driver_image", ["batch", 3, SIZE, SIZE])],
                              _motion_outputs(), inits)
    return _model(graph)


def generator_graph(avatar_inputs: bool = False) -> onnx.ModelProto:
    inits = [_const("G", G), _const("depth_axis", np.array([2], np.int64)),
             _const("mean_axes", np.array([2, 3], np.int64)), _const("scales", np.array([1, 1, 4, 4], np.float32)),
             _const("half", np.float32(0.5)), _const("four", np.float32(4.0)),
             _const("flat12", np.array([-1, 12], np.int64)), _const("hw", np.array([2, 3], np.int64))]
    nodes = [
        helper.make_node("ReduceMean", ["canonical_volume", "depth_axis"], ["volume2d"], keepdims=0),
        helper.make_node("Resize", ["volume2d", "", "scales"], ["base"], mode="nearest"),
        helper.make_node("Reshape", ["pose", "flat12"], ["pose_flat"]),
        helper.make_node("ReduceMean", ["global_descriptor", "mean_axes"], ["descriptor_mean"], keepdims=0),
        helper.make_node("Concat", ["pose_flat", "expression", "descriptor_mean"], ["code"], axis=1),
        helper.make_node("MatMul", ["code", "G"], ["shift0"]),
        helper.make_node("Unsqueeze", ["shift0", "hw"], ["shift"]),
        helper.make_node("Sub", ["base", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "four"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["logits"]),
    ]
    inputs = [_io("canonical_volume", ["batch", *VOLUME]), _io("global_descriptor", ["batch", *DESCRIPTOR]),
              _io("pose", ["batch", 3, 4]), _io("expression", ["batch", EXPRESSION])]
    if avatar_inputs:
        inits += [_const("H", H), _const("two", np.float32(2.0))]
        nodes[-1].output[0] = "logits0"
        nodes += [
            helper.make_node("Sub", ["pose", "source_pose"], ["pose_change"]),
            helper.make_node("Reshape", ["pose_change", "flat12"], ["pose_change_flat"]),
            helper.make_node("Sub", ["expression", "source_expression"], ["expression_change"]),
            helper.make_node("Concat", ["pose_change_flat", "expression_change"], ["change"], axis=1),
            helper.make_node("MatMul", ["change", "H"], ["change_shift0"]),
            helper.make_node("Unsqueeze", ["change_shift0", "hw"], ["change_shift"]),
            helper.make_node("Sub", ["source_image", "half"], ["source_centred"]),
            helper.make_node("Mul", ["source_centred", "two"], ["source_light"]),
            helper.make_node("Add", ["logits0", "change_shift"], ["logits1"]),
            helper.make_node("Add", ["logits1", "source_light"], ["logits"]),
        ]
        inputs += [_io("source_image", ["batch", 3, SIZE, SIZE]), _io("source_pose", ["batch", 3, 4]),
                   _io("source_expression", ["batch", EXPRESSION])]
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["image"]))
    graph = helper.make_graph(nodes, "toy_generator", inputs, [_io("image", ["batch", 3, SIZE, SIZE])], inits)
    return _model(graph)


def _model(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


GRAPHS = {"source": source_graph, "driver": driver_graph, "generator": generator_graph}


def with_fp16_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with float16 inputs and outputs (Cast at the boundary), as an fp16
    bundle's graphs present themselves to the SDK."""
    graph = model.graph
    casts_in, casts_out = [], []
    for value in graph.input:
        inner = value.name + "_f32"
        for node in graph.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT))
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for value in graph.output:
        inner = value.name + "_f32"
        for node in graph.node:
            node.output[:] = [inner if n == value.name else n for n in node.output]
        casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT16))
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _spec(model: onnx.ModelProto, file: str, portable_file: str | None) -> mf.GraphSpec:
    def tensors(values):
        dtype = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
        return tuple(mf.TensorSpec(v.name, tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim),
                                   dtype[v.type.tensor_type.elem_type]) for v in values)
    return mf.GraphSpec(file=file, inputs=tensors(model.graph.input), outputs=tensors(model.graph.output),
                        portable_file=portable_file)


def make_toy_bundle(directory, custom_op: bool = False, fp16: bool = False, avatar_inputs: bool = False) -> Path:
    """Write the toy bundle. ``custom_op=True`` declares the custom op and gives each graph a
    byte-different but equivalent portable twin, to exercise the SDK's flavour choice.
    ``avatar_inputs=True``: the generator also reads source_image, source_pose and
    source_expression (schema.AVATAR_GENERATOR_INPUTS), as a source-pixel model's does."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for role, build in GRAPHS.items():
        if role == "generator" and avatar_inputs:
            def build():
                return generator_graph(avatar_inputs=True)
        model = with_fp16_io(build()) if fp16 else build()
        onnx.save(model, str(directory / f"{role}.onnx"))
        portable = None
        if custom_op:
            twin = build()
            twin.doc_string = "portable twin"
            portable = f"{role}.portable.onnx"
            onnx.save(twin, str(directory / portable))
        graphs[role] = _spec(model, f"{role}.onnx", portable)
    manifest = mf.Manifest(
        model_name="toy", preset="toy", image_size=SIZE, graphs=graphs, files={}, opset=18,
        custom_op={"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version} if custom_op else None,
        precision="fp16" if fp16 else "fp32",
        producer={"tests": "toy_bundle.py"}, provenance={"weights": "hand-made"})
    mf.write_manifest(directory, manifest)
    return directory
