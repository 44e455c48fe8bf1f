"""The heavy volume sample as one named operator, so an exported graph can hand it to our kernel.

ONNX Runtime's CPU GridSample is slow on 5-D inputs and its CUDA provider rejected them until
recently, so the one big trilinear sample per frame is exported as
``com.megaportraits::GridSample3D`` v1, which cpp_ext implements. Three pieces make that work:

* the ``torch.library`` op ``megaportraits::grid_sample_3d``: opaque to ``torch.export``, so the
  sample survives tracing as a single node instead of being decomposed;
* its ONNX translation for the dynamo exporter: the custom node, with the attributes of the
  standard ``GridSample``-20 it equals (docs/design.md, "The custom op"), so the portable
  flavour of a graph is the same graph with that node renamed
  (``onnx_export.portable.custom_nodes_as_standard``);
* an ``onnx.defs.OpSchema`` for the custom node, so ``onnx.checker`` (full check, custom domains
  included) and shape inference understand the graph.

Attribute names, types and meanings are exactly those of ONNX GridSample-20 (the contract cpp_ext
reads), and PyTorch's names map onto them here and nowhere else.
"""
from __future__ import annotations

import onnx
import onnxscript
import torch
import torch.nn.functional as F
from onnx.defs import OpSchema

from megaportraits.schema import DEQUANTIZE_INSTANCE_NORM, GRID_SAMPLE_3D

TORCH_OP_NAME = "megaportraits::grid_sample_3d"

# torch.nn.functional.grid_sample says "bilinear" for the trilinear 5-D sample; ONNX says "linear".
_ONNX_MODE = {"bilinear": "linear", "nearest": "nearest"}
_PADDING_MODES = ("zeros", "border", "reflection")

_CUSTOM_OPSET = onnxscript.values.Opset(domain=GRID_SAMPLE_3D.domain, version=GRID_SAMPLE_3D.version)


@torch.library.custom_op(TORCH_OP_NAME, mutates_args=())
def grid_sample_3d(
    volume: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """5-D grid sample, (N, C, D, H, W) at grid (N, D', H', W', 3) -> (N, C, D', H', W')."""
    return F.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


@grid_sample_3d.register_fake
def _grid_sample_3d_shape(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    return volume.new_empty((volume.shape[0], volume.shape[1], *grid.shape[1:4]))


def volume_sampler(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The sampler the exporter installs with ``warp.use_volume_sampler``: the model's
    trilinear, zero-padded, align_corners=False sample, routed through the custom op."""
    return torch.ops.megaportraits.grid_sample_3d(volume, grid, "bilinear", "zeros", False)


def _onnx_attributes(mode: str, padding_mode: str, align_corners: bool) -> dict:
    if mode not in _ONNX_MODE:
        raise ValueError(f"grid_sample_3d mode {mode!r} has no ONNX equivalent; use one of {', '.join(_ONNX_MODE)}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"grid_sample_3d padding_mode {padding_mode!r} is not one of {', '.join(_PADDING_MODES)}")
    return {"mode": _ONNX_MODE[mode], "padding_mode": padding_mode, "align_corners": int(align_corners)}


def _to_custom_node(volume, grid, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False):
    node = getattr(_CUSTOM_OPSET, GRID_SAMPLE_3D.name)
    return node(volume, grid, **_onnx_attributes(mode, padding_mode, align_corners))


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    register_onnx_schema()  # onnxscript looks the custom node up while translating
    return {torch.ops.megaportraits.grid_sample_3d.default: _to_custom_node}


# ---- ONNX schema -------------------------------------------------------------------------------
def _infer_output_type(ctx) -> None:
    """Y keeps X's element type, batch and channels, and takes the grid's spatial extent."""
    x_type, grid_type = ctx.get_input_type(0), ctx.get_input_type(1)
    y_type = onnx.TypeProto()
    y_type.tensor_type.elem_type = x_type.tensor_type.elem_type
    if x_type.tensor_type.HasField("shape") and grid_type.tensor_type.HasField("shape"):
        x_dims, grid_dims = x_type.tensor_type.shape.dim, grid_type.tensor_type.shape.dim
        if len(x_dims) != 5 or len(grid_dims) != 5:
            raise onnx.shape_inference.InferenceError(
                f"{GRID_SAMPLE_3D.name} needs a 5-D X and a 5-D grid, got ranks {len(x_dims)} and {len(grid_dims)}")
        for d in (x_dims[0], x_dims[1], grid_dims[1], grid_dims[2], grid_dims[3]):
            y_type.tensor_type.shape.dim.add().CopyFrom(d)
    ctx.set_output_type(0, y_type)


def _make_schema() -> OpSchema:
    schema = OpSchema(
        GRID_SAMPLE_3D.name,
        GRID_SAMPLE_3D.domain,
        GRID_SAMPLE_3D.version,
        "5-D GridSample with the inputs, output and attributes of ONNX GridSample-20; "
        "implemented by the megaportraits custom-op library (cpp_ext).",
        inputs=[
            OpSchema.FormalParameter("X", "T", "volume (N, C, D, H, W)"),
            OpSchema.FormalParameter("grid", "T_grid", "normalised (x, y, z) sample points (N, D', H', W', 3)"),
        ],
        outputs=[OpSchema.FormalParameter("Y", "T", "sampled volume (N, C, D', H', W')")],
        # the library's flavours: float32 volumes, and float16 ones (fp16 bundles) with a float32 grid
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16 volume"),
                          ("T_grid", ["tensor(float)"], "float32 grid")],
        attributes=[
            OpSchema.Attribute("mode", onnx.helper.make_attribute("mode", "linear"), "linear | nearest"),
            OpSchema.Attribute("padding_mode", onnx.helper.make_attribute("padding_mode", "zeros"),
                               "zeros | border | reflection"),
            OpSchema.Attribute("align_corners", onnx.helper.make_attribute("align_corners", 0), "0 | 1"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_output_type)
    return schema


def _infer_norm_output_type(ctx) -> None:
    """Y is float32 with X's shape."""
    x_type = ctx.get_input_type(0)
    y_type = onnx.TypeProto()
    y_type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    if x_type.tensor_type.HasField("shape"):
        y_type.tensor_type.shape.CopyFrom(x_type.tensor_type.shape)
    ctx.set_output_type(0, y_type)


def _make_norm_schema() -> OpSchema:
    schema = OpSchema(
        DEQUANTIZE_INSTANCE_NORM.name,
        DEQUANTIZE_INSTANCE_NORM.domain,
        DEQUANTIZE_INSTANCE_NORM.version,
        "InstanceNormalization(DequantizeLinear(X, x_scale, x_zero_point), scale, B, epsilon) of a uint8 X "
        "(per-tensor quantization), in one threaded kernel of the megaportraits custom-op library (cpp_ext).",
        inputs=[
            OpSchema.FormalParameter("X", "T_q", "quantized (N, C, ...)"),
            OpSchema.FormalParameter("x_scale", "T", "per-tensor scale"),
            OpSchema.FormalParameter("x_zero_point", "T_q", "per-tensor zero point"),
            OpSchema.FormalParameter("scale", "T", "(C,)"),
            OpSchema.FormalParameter("B", "T", "(C,)"),
        ],
        outputs=[OpSchema.FormalParameter("Y", "T", "normalised, X's shape")],
        type_constraints=[("T_q", ["tensor(uint8)"], "uint8"), ("T", ["tensor(float)"], "float32")],
        attributes=[OpSchema.Attribute("epsilon", onnx.helper.make_attribute("epsilon", 1e-5),
                                       "as InstanceNormalization's")],
    )
    schema.set_type_and_shape_inference_function(_infer_norm_output_type)
    return schema


def register_onnx_schema() -> None:
    """Make the library's ops (``com.megaportraits::GridSample3D``,
    ``::DequantizeInstanceNormalization``) known to onnx (checker, shape inference); idempotent."""
    if not onnx.defs.has(GRID_SAMPLE_3D.name, GRID_SAMPLE_3D.domain):
        onnx.defs.register_schema(_make_schema())
    if not onnx.defs.has(DEQUANTIZE_INSTANCE_NORM.name, DEQUANTIZE_INSTANCE_NORM.domain):
        onnx.defs.register_schema(_make_norm_schema())
