"""Graph files: saving a traced graph, checking it with onnx, and holding it to the bundle's promises
(the role's tensor names, a dynamic batch axis, no slow ops)."""
from __future__ import annotations

from pathlib import Path

import onnx
import torch

from megaportraits import manifest as mf
from megaportraits.schema import GRID_SAMPLE_3D
from megaportraits_export import custom_op
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graphs import graph_io
from megaportraits_export.onnx_export.tracing import BATCH_AXIS

# Ops that ONNX Runtime runs through slow generic paths or that betray an untidy trace
# (control flow, sequences); a deployment graph should have none of them.
SLOW_OPS = {"Loop", "Scan", "If", "SequenceConstruct", "SequenceAt", "SplitToSequence",
            "ConcatFromSequence", "NonZero", "Compress", "Unique"}

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64"}


def save_graph(program: torch.onnx.ONNXProgram, path: Path, external_data: bool | None = None) -> list[str]:
    """Save one graph (weights inline below 2 GB, else one external data file beside it, as
    ``external_data=None`` lets the exporter decide); check it, and return the names of the
    files written."""
    program.save(path, external_data=external_data)
    proto = onnx.load(path, load_external_data=False)
    data_files = sorted({entry.value for t in proto.graph.initializer
                         if t.data_location == onnx.TensorProto.EXTERNAL
                         for entry in t.external_data if entry.key == "location"})
    for name in data_files:
        mf.safe_name(name)  # the SDK will refuse anything else
    check_model(path)
    return [path.name, *data_files]


def check_model(path: Path) -> None:
    """onnx's full check, custom domains included (our op's schema registered first)."""
    custom_op.register_onnx_schema()
    onnx.checker.check_model(path, full_check=True, check_custom_domain=True)


def graph_summary(path: Path) -> tuple[list[mf.TensorSpec], list[mf.TensorSpec], dict]:
    """Input and output specs as the ONNX file declares them, and its op histogram."""
    proto = onnx.load(path, load_external_data=False)
    specs = [[_tensor_spec(v) for v in vs] for vs in (proto.graph.input, proto.graph.output)]
    ops: dict = {}
    for node in proto.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops[key] = ops.get(key, 0) + 1
    return specs[0], specs[1], ops


def _tensor_spec(value: onnx.ValueInfoProto) -> mf.TensorSpec:
    t = value.type.tensor_type
    if t.elem_type not in _ONNX_DTYPES:
        raise ExportError(f"graph value {value.name!r} has ONNX element type {t.elem_type}, "
                          f"which the bundle format cannot describe")
    shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
    return mf.TensorSpec(name=value.name, shape=shape, dtype=_ONNX_DTYPES[t.elem_type])


def check_graph(role: str, path: Path, portable: bool, matte: bool = False,
                names: tuple | None = None) -> tuple[list, list, bool]:
    """The saved graph has exactly the names, batch axis and ops the bundle promises; returns
    its input and output specs and whether it holds a custom-op node. ``names``: the expected
    (inputs, outputs) when they are not this model family's (:func:`graph_io`), e.g. a converted
    model's from ``megaportraits.schema.FAMILY_GRAPH_IO``."""
    inputs, outputs, ops = graph_summary(path)
    want_in, want_out = names if names is not None else graph_io(role, matte)
    got_in, got_out = tuple(t.name for t in inputs), tuple(t.name for t in outputs)
    if (got_in, got_out) != (want_in, want_out):
        raise ExportError(f"{role} graph has inputs {got_in} and outputs {got_out}; "
                          f"the bundle format (megaportraits.schema) fixes {want_in} and {want_out}")
    for t in (*inputs, *outputs):
        if not t.shape or t.shape[0] != BATCH_AXIS:
            raise ExportError(f"{role} graph: {t.name} has shape {t.shape}, not a dynamic '{BATCH_AXIS}' axis 0")
    slow = sorted(set(ops) & SLOW_OPS)
    if slow:
        raise ExportError(f"{role} graph contains {', '.join(slow)}, which ONNX Runtime runs slowly; "
                          "rewrite that part of the model with tensor ops")
    uses_custom_op = any(op.startswith(GRID_SAMPLE_3D.domain + "::") for op in ops)
    if portable and uses_custom_op:
        raise ExportError(f"portable {role} graph still contains a {GRID_SAMPLE_3D.domain} node")
    return inputs, outputs, uses_custom_op
