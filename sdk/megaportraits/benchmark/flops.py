"""Work in an ONNX graph: floating-point operations and bytes moved, counted node by node.

Latency alone does not say whether a stage is slow because of the machine or because of the code;
the work it has to do does. This module counts that work from the graph itself (after ONNX shape
inference with the batch fixed), so the numbers follow the exported graph, not a hand model of it.

Conventions (what one "FLOP" is here):

* 1 multiply-accumulate (MAC) = 2 FLOPs. Bias additions are 1 FLOP per output element.
* Conv: each output element costs ``C_in / group * prod(kernel)`` MACs. ConvTranspose: each
  *input* element costs ``C_out / group * prod(kernel)`` MACs.
* MatMul: each output element costs K MACs (K: the shared axis). Gemm: the same, plus 1 FLOP per
  output element when C is given (alpha/beta scaling is not counted).
* GridSample (ONNX, any rank) and ``com.megaportraits::GridSample3D``: mode ``linear`` reads
  ``2**d`` neighbours (d: spatial rank; 8 for the trilinear 5-D sample) and blends them, so
  ``2**d`` MACs per output element (output elements = N x C x spatial: the blend runs per
  channel); ``cubic`` ``4**d`` MACs; ``nearest`` 0 (a gather). The per-location coordinate
  arithmetic (unnormalise, floor, weights) is shared by all C channels and is not counted.
* Resize: like GridSample over the resized axes (``linear``: 2**k MACs per output element).
* Normalisations: BatchNormalization (inference) 2 FLOPs per element (scale, shift);
  Instance/Group/LayerNormalization 8 (mean 1, variance 3, normalise 2, affine 2).
* Elementwise arithmetic, comparisons and activations: 1 FLOP per output element
  (transcendentals such as Exp, Tanh, Sigmoid included: 1). Softmax: 5 per element.
* Reductions and global pooling: 1 FLOP per input element. Average/MaxPool: prod(kernel) per
  output element.
* Data movement (Reshape, Transpose, Concat, Slice, Gather, Pad, Cast, ...): 0 FLOPs.

Ops outside these lists are reported in :attr:`GraphCost.uncounted` rather than silently
counted as zero. Bytes moved per node are its inputs read plus its outputs written, once each
(weights included; views such as Reshape move nothing): the traffic of a node that keeps no data
in cache between calls, which with the FLOPs gives each node's roofline floor.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

from ..schema import GRID_SAMPLE_3D
from .requirements import require_onnx

CUSTOM_GRID_SAMPLE = (GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.name)  # (domain, op_type) of a node

_ELEMENTWISE = frozenset("""
    Add Sub Mul Div Pow Neg Abs Sqrt Reciprocal Exp Log Erf Sin Cos Tanh Sigmoid Relu LeakyRelu
    PRelu Elu Selu Celu Gelu HardSigmoid HardSwish Softplus Softsign Mish Clip Min Max Mean Sum
    Floor Ceil Round Sign Equal Less LessOrEqual Greater GreaterOrEqual Not And Or Xor Where Mod
    IsNaN IsInf BitShift
""".split())
_REDUCTIONS = frozenset("""
    ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceSumSquare ReduceL1 ReduceL2
    ReduceLogSum ReduceLogSumExp ArgMax ArgMin GlobalAveragePool GlobalMaxPool GlobalLpPool
""".split())
_MOVES_DATA = frozenset("""
    Transpose Concat Slice Split Gather GatherElements GatherND ScatterElements ScatterND Expand
    Tile Pad Cast CastLike DepthToSpace SpaceToDepth ConstantOfShape Range Trilu OneHot NonZero
    CumSum
""".split())
_VIEWS = frozenset("Reshape Squeeze Unsqueeze Flatten Identity Shape Size Constant Dropout".split())
_NORMS = {"BatchNormalization": 2, "InstanceNormalization": 8, "GroupNormalization": 8,
          "LayerNormalization": 8}


@dataclass(frozen=True)
class NodeCost:
    """The work of one node: FLOPs by the conventions above, and bytes read plus written."""

    name: str
    op_type: str
    flops: int
    bytes_moved: int


@dataclass
class GraphCost:
    """The counted work of a whole graph at one batch size."""

    nodes: list
    batch: int
    uncounted: dict = field(default_factory=dict)  # op_type -> number of nodes left uncounted

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def bytes_moved(self) -> int:
        return sum(n.bytes_moved for n in self.nodes)

    def flops_by_op(self) -> dict:
        """op_type -> FLOPs, largest first: where a graph spends its arithmetic."""
        totals = defaultdict(int)
        for n in self.nodes:
            totals[n.op_type] += n.flops
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def floor_seconds(self, peak_flops_per_s: float, bandwidth_bytes_per_s: float) -> float:
        """Roofline lower bound: each node takes at least its FLOPs at peak or its bytes at
        full bandwidth, whichever is longer, and nodes run one after another."""
        return sum(max(n.flops / peak_flops_per_s, n.bytes_moved / bandwidth_bytes_per_s)
                   for n in self.nodes)

    def to_dict(self) -> dict:
        return {"batch": self.batch, "flops": self.flops, "bytes_moved": self.bytes_moved,
                "flops_by_op": self.flops_by_op(), "uncounted": dict(self.uncounted)}


def count_graph(model, batch: int = 1, input_shapes: dict | None = None) -> GraphCost:
    """Count the work of an ONNX model (a path or a ``ModelProto``) at a fixed input size.

    Symbolic axis 0 of every input is set to ``batch``; any other symbolic axis must be given in
    ``input_shapes`` (input name -> full shape). Weights are not loaded: only their shapes count.
    """
    onnx = require_onnx()
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    model = _prepare_for_inference(model, batch, input_shapes or {})
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _known_shapes(model)
    nodes, uncounted = [], defaultdict(int)
    for node in model.graph.node:
        op_type = _original_op_type(node)
        ins = [shapes.get(name) for name in node.input]
        outs = [shapes.get(name) for name in node.output]
        flops = _node_flops(op_type, node, ins, outs)
        if flops is None:
            uncounted[op_type] += 1
            flops = 0
        moved = 0 if op_type in _VIEWS else _bytes(ins) + _bytes(outs)
        nodes.append(NodeCost(node.name or node.output[0], op_type, flops, moved))
    return GraphCost(nodes=nodes, batch=batch, uncounted=dict(uncounted))


# ---- preparing the graph for shape inference ----------------------------------------------------
_ORIGINAL_OP = "megaportraits_benchmark_original_op"


def _prepare_for_inference(model, batch: int, input_shapes: dict):
    """A copy with concrete input shapes, local functions inlined, and the custom GridSample3D
    turned into the standard GridSample it equals (docs/design.md, "The custom op"), so onnx can infer
    every shape without the custom op's schema (which lives on the torch side)."""
    onnx = require_onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if copy.functions:
        from onnx import inliner
        copy = inliner.inline_local_functions(copy)
    initializers = {t.name for t in copy.graph.initializer}
    for value in copy.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = input_shapes.get(value.name)
        if wanted is not None and len(wanted) != len(dims):
            raise ValueError(f"input_shapes[{value.name!r}] has rank {len(wanted)}; "
                             f"the graph's input has rank {len(dims)}")
        for axis, dim in enumerate(dims):
            if wanted is not None:
                dim.Clear()
                dim.dim_value = int(wanted[axis])
            elif not dim.HasField("dim_value"):
                if axis != 0:
                    raise ValueError(f"graph input {value.name!r} has symbolic axis {axis} "
                                     f"({dim.dim_param!r}); give its shape in input_shapes")
                dim.Clear()
                dim.dim_value = batch
    del copy.graph.value_info[:]  # symbolic shapes from the export would mask the concrete ones
    if any(n.domain == CUSTOM_GRID_SAMPLE[0] for n in copy.graph.node):
        for node in copy.graph.node:
            if (node.domain, node.op_type) == CUSTOM_GRID_SAMPLE:
                node.domain, node.op_type = "", "GridSample"
                node.doc_string = _ORIGINAL_OP
        if not any(o.domain in ("", "ai.onnx") and o.version >= 20 for o in copy.opset_import):
            raise ValueError(f"a graph with {GRID_SAMPLE_3D.name} must import the default opset >= 20")
    return copy


def _original_op_type(node) -> str:
    return CUSTOM_GRID_SAMPLE[1] if node.doc_string == _ORIGINAL_OP else node.op_type


def _known_shapes(model) -> dict:
    """name -> (shape tuple, itemsize) for every tensor whose shape is fully known."""
    onnx = require_onnx()
    out = {}

    def itemsize(elem_type: int) -> int:
        try:
            return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
        except (KeyError, TypeError):
            return 4

    for t in model.graph.initializer:
        out[t.name] = (tuple(t.dims), itemsize(t.data_type))
    for v in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        tt = v.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[v.name] = (tuple(d.dim_value for d in dims), itemsize(tt.elem_type))
    for node in model.graph.node:  # Constant nodes carry their value, hence their shape
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = (tuple(a.t.dims), itemsize(a.t.data_type))
    return out


# ---- per-op counting ---------------------------------------------------------------------------
def _numel(entry) -> int:
    return math.prod(entry[0])


def _bytes(entries) -> int:
    return sum(_numel(e) * e[1] for e in entries if e is not None)


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            onnx = require_onnx()
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _interp_macs(mode: str, axes: int) -> int | None:
    taps = {"linear": 2, "bilinear": 2, "cubic": 4, "bicubic": 4, "nearest": 0}.get(mode)
    return None if taps is None else taps ** axes if taps else 0


def _node_flops(op_type: str, node, ins: list, outs: list) -> int | None:
    """FLOPs of one node, or None when its shapes are unknown or the op has no convention."""
    if op_type in _VIEWS or op_type in _MOVES_DATA:
        return 0
    out = outs[0] if outs else None
    if out is None:
        return None
    n_out = _numel(out)
    if op_type in _ELEMENTWISE:
        return n_out
    if op_type in _NORMS:
        return _NORMS[op_type] * n_out
    if op_type == "Softmax" or op_type == "LogSoftmax":
        return 5 * n_out
    if op_type in _REDUCTIONS:
        return None if ins[0] is None else _numel(ins[0])
    if op_type in ("AveragePool", "MaxPool", "LpPool"):
        return n_out * math.prod(_attr(node, "kernel_shape", [1]))
    if op_type == "Conv":
        if ins[1] is None:
            return None
        bias = n_out if len(ins) > 2 and node.input[2] else 0
        return 2 * n_out * math.prod(ins[1][0][1:]) + bias
    if op_type == "ConvTranspose":
        if ins[0] is None or ins[1] is None:
            return None
        bias = n_out if len(ins) > 2 and node.input[2] else 0
        return 2 * _numel(ins[0]) * math.prod(ins[1][0][1:]) + bias
    if op_type == "MatMul":
        if ins[0] is None:
            return None
        return 2 * n_out * ins[0][0][-1]
    if op_type == "Gemm":
        if ins[0] is None:
            return None
        k = ins[0][0][0] if _attr(node, "transA", 0) else ins[0][0][1]
        bias = n_out if len(ins) > 2 and node.input[2] else 0
        return 2 * n_out * k + bias
    if op_type in ("GridSample", GRID_SAMPLE_3D.name):
        macs = _interp_macs(_attr(node, "mode", "linear" if op_type == GRID_SAMPLE_3D.name else "bilinear"),
                            len(out[0]) - 2)
        return None if macs is None else 2 * macs * n_out
    if op_type == "Resize":
        if ins[0] is None:
            return None
        resized = sum(1 for a, b in zip(ins[0][0], out[0]) if a != b)
        macs = _interp_macs(_attr(node, "mode", "nearest"), resized)
        return None if macs is None else 2 * macs * n_out
    return None
