"""Graph rewrites that make an int8 (QDQ) graph cheaper to run on ONNX Runtime's CPU provider.

Profiled on the small256 generator (ORT 1.32, 1 thread): the int8 convolutions were no faster
than the fp32 ones would make the frame, because the frame's time was elsewhere: the float
work between the convolutions, at full resolution. Each GroupNorm is exported in its accurate
two-pass form (:mod:`.group_norm`: mean, centre, mean again, centre again, square, mean, scale,
then the affine), ten passes over the tensor, and the quantizer gives each consumer of a
dequantized tensor a DequantizeLinear of its own, so a conv's output was dequantized twice.

* :func:`instance_norm_group_norms` rewrites each two-pass GroupNorm into one
  InstanceNormalization node: on the tensor itself with the layer's scale and shift folded in
  for per-channel groups (most of this model's), on the grouped view otherwise. One kernel and
  one consumer of the dequantized tensor (ONNX Runtime's QDQ propagation gives every consumer
  edge a DequantizeLinear of its own, so a rewrite with three consumers dequantized three
  times). Its output keeps its name, so the calibration ranges of the fp32 graph still name the
  same tensors. ONNX Runtime's InstanceNormalization is less exact over large groups (1.9e-4
  off at 512 x 512, :mod:`.group_norm`), far below what 8-bit activations keep; the fp32 graphs
  keep the two-pass form.
* :func:`share_dequantizers` merges DequantizeLinear nodes that read the same tensor with the
  same scale and zero point into one.
* :func:`small_output_convolutions`: convolutions with fewer output channels than an int8 GEMM
  tile wants (the 3-channel deformation-field head: 7.2 ms int8 vs 3.8 ms fp32) stay float.

A second profile (small256, 1 thread, ``benchmarks/precision_profile.py``) found, of a 54 ms
int8 frame, 20 ms in the int8 convolutions and the rest in float work that fp32 frames do not
pay for, or pay less for:

* each G2D upsample ran in float at the upsampled size (2.6 ms at 256 x 256) and the quantizer
  then quantized its output (2.4 ms): :func:`quantize_before_nearest_resizes` quantizes first
  and resizes the uint8 tensor. Exact: a nearest-neighbour resize copies elements and
  QuantizeLinear acts on each element alone, so the two commute bit for bit.
* a float 1x1 convolution (the image head, kept float for accuracy) is what makes ONNX Runtime
  convert the int8 graph's plain NCHW tensor into its blocked NCHWc layout and back (1.4 ms of
  ReorderInput/ReorderOutput for a 0.7 ms conv): :func:`pointwise_convolutions_as_matmuls`
  writes it as the MatMul over channels it is. (fp32 graphs keep their Conv: their tensors are
  NCHWc already, and the blocked kernels are their fast path.)
* the residual Adds (a block's last conv + its skip) were float Adds of two dequantized maps
  (4 ms): :func:`residual_adds` names them for the quantizer, and ONNX Runtime runs each as one
  uint8 QLinearAdd. This one is not exact: the residual stream between the blocks is 8-bit
  too (image PSNR vs fp32, small256 random weights 37.0 -> 36.4 dB; the demo model, 24
  held-out frames, median 42.8 -> 41.2 dB, min 40.0 -> 39.3).
* ONNX Runtime's NhwcTransformer gives each QLinearConv NHWC tensors and leaves Transposes at
  every InstanceNormalization; its transpose optimiser then merged pairs of cheap uint8
  Transposes into one float Transpose after the residual Add (1.3 ms at 128 x 128 x 32). That
  one is a session option, not the graph: ``megaportraits.sessions`` turns it off.

On two threads (``precision_profile.py --threads 2``) the int8 frame shrank less than the fp32
one: ONNX Runtime 1.32 runs DequantizeLinear and InstanceNormalization on one thread, and those
were ~11 of its ~45 ms (QLinearConv went 23.4 -> 15.7 ms with the second core, they did not).
:func:`fuse_dequantize_instance_norms` gives each normalisation of a uint8 tensor to the op
library's ``DequantizeInstanceNormalization`` (``megaportraits.schema.DEQUANTIZE_INSTANCE_NORM``,
cpp_ext/dequantize_instance_norm.h): integer statistics, exact, on the session's intra-op pool.
Only graphs that already need the library get it (those with a portable twin, which spells it
as DequantizeLinear + InstanceNormalization again: :mod:`.portable`). Not taken: the fp32
graphs' decomposed ReduceMean/Sub/Mul form is multi-threaded, but costs more than
InstanceNormalization even on two threads (fp32 frame, 2 threads: ~21 ms in those ops vs 7 ms
of InstanceNormalization in the int8 frame).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from megaportraits.schema import DEQUANTIZE_INSTANCE_NORM

# int8 GEMMs pack output channels by 8 or more; a conv writing fewer runs slower than in fp32.
MIN_INT8_OUTPUT_CHANNELS = 8
#: the rewrites an int8 graph gets, recorded in the manifest (provenance.precision.int8_rewrites),
#: so a bundle converted before a rewrite existed can be told apart from a current one
REWRITES = ("instance_norm_group_norms", "share_dequantizers", "small_output_convolutions", "residual_adds",
            "quantize_before_nearest_resizes", "pointwise_convolutions_as_matmuls", "fuse_dequantize_instance_norms")


class _Graph:
    """Producers, consumers and initializers of a graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}

    def made_by(self, name: str, op: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def only_consumer(self, name: str, op: str):
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            return None
        return users[0]

    def constant(self, name: str):
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.made_by(name, "Constant")
        if node is not None:
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def _reduce_axes(g: _Graph, node) -> tuple | None:
    if len(node.input) > 1 and node.input[1]:
        axes = g.constant(node.input[1])
        return None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
    for attribute in node.attribute:
        if attribute.name == "axes":
            return tuple(attribute.ints)
    return None


def _match_group_norm(g: _Graph, reciprocal) -> dict | None:
    """The two-pass GroupNorm around ``reciprocal`` (see :mod:`.group_norm`), or None."""
    sqrt = g.made_by(reciprocal.input[0], "Sqrt")
    add_eps = sqrt and g.made_by(sqrt.input[0], "Add")
    if add_eps is None:
        return None
    var_mean = g.made_by(add_eps.input[0], "ReduceMean")
    eps = g.constant(add_eps.input[1])
    square = var_mean and g.made_by(var_mean.input[0], "Mul")
    if square is None or eps is None or square.input[0] != square.input[1]:
        return None
    centred2 = g.made_by(square.input[0], "Sub")
    mean2 = centred2 and g.made_by(centred2.input[1], "ReduceMean")
    centred1 = centred2 and g.made_by(centred2.input[0], "Sub")
    mean1 = centred1 and g.made_by(centred1.input[1], "ReduceMean")
    if mean2 is None or mean1 is None or mean2.input[0] != centred1.output[0] or mean1.input[0] != centred1.input[0]:
        return None
    grouped = centred1.input[0]
    axes = _reduce_axes(g, mean1)
    if axes != (-1,) or any(_reduce_axes(g, n) != axes for n in (mean2, var_mean)):
        return None
    normalise = [n for n in g.consumers.get(reciprocal.output[0], []) if n.op_type == "Mul"]
    if len(normalise) != 1 or centred2.output[0] not in normalise[0].input:
        return None
    back = g.only_consumer(normalise[0].output[0], "Reshape")
    view = g.made_by(grouped, "Reshape")
    if back is None or view is None:
        return None
    out, scale, shift = back.output[0], None, None
    mul = g.only_consumer(out, "Mul")
    if mul is not None:
        scale = g.constant(mul.input[1] if mul.input[0] == out else mul.input[0])
        add = scale is not None and g.only_consumer(mul.output[0], "Add")
        if add:
            shift = g.constant(add.input[1] if add.input[0] == mul.output[0] else add.input[0])
        if scale is None or shift is None:
            scale = shift = None
        else:
            out = add.output[0]
    return {"input": view.input[0], "grouped": grouped, "normalised": normalise[0].output[0],
            "eps": float(np.asarray(eps).reshape(-1)[0]), "output": out, "scale": scale, "shift": shift}


def instance_norm_group_norms(proto: onnx.ModelProto) -> int:
    """Rewrite, in place, every two-pass GroupNorm of ``proto`` whose shapes are known into one
    InstanceNormalization node (module docstring): per-channel groups (GroupNorm(C, C), most of
    this model's) on the tensor itself with the layer's scale and shift, other group counts on
    the grouped view, followed by the layer's own affine. Returns how many were rewritten."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    g = _Graph(proto.graph)
    matches = [m for m in (_match_group_norm(g, n) for n in proto.graph.node if n.op_type == "Reciprocal") if m]
    replacement, new_inits = {}, []
    for k, m in enumerate(matches):
        x_shape, grouped_shape = shapes.get(m["input"]), shapes.get(m["grouped"])
        if not x_shape or not grouped_shape or len(grouped_shape) != 3 or x_shape[1] is None or grouped_shape[1] is None:
            continue
        channels, groups, p = x_shape[1], grouped_shape[1], f"instance_norm_gn_{k}"
        if groups == channels:  # the tensor itself, scale and shift folded in
            scale = np.ones(channels, np.float32) if m["scale"] is None else np.broadcast_to(
                np.asarray(m["scale"], np.float32).reshape(-1), (channels,)).astype(np.float32)
            shift = np.zeros(channels, np.float32) if m["shift"] is None else np.broadcast_to(
                np.asarray(m["shift"], np.float32).reshape(-1), (channels,)).astype(np.float32)
            source, output = m["input"], m["output"]
        else:  # the grouped view; the Reshape back and the affine that follow stay
            scale, shift = np.ones(groups, np.float32), np.zeros(groups, np.float32)
            source, output = m["grouped"], m["normalised"]
        new_inits += [numpy_helper.from_array(scale, f"{p}_scale"), numpy_helper.from_array(shift, f"{p}_bias")]
        replacement[output] = helper.make_node("InstanceNormalization", [source, f"{p}_scale", f"{p}_bias"],
                                               [output], name=p, epsilon=m["eps"])
    if not replacement:
        return 0
    kept = []
    for node in proto.graph.node:  # the old producer of each output makes way for the new node
        hit = [o for o in node.output if o in replacement]
        kept.append(replacement[hit[0]] if hit else node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    proto.graph.initializer.extend(new_inits)
    _drop_dead_nodes(proto.graph)
    return len(replacement)


def share_dequantizers(proto: onnx.ModelProto) -> int:
    """Merge DequantizeLinear nodes with the same inputs and attributes; returns how many went."""
    first: dict = {}
    rename: dict = {}
    kept = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear":
            key = (tuple(node.input), tuple(a.SerializeToString() for a in node.attribute))
            if key in first:
                rename[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        kept.append(node)
    outputs = {o.name for o in proto.graph.output}
    if not rename or outputs & set(rename):
        return 0
    for node in kept:
        node.input[:] = [rename.get(name, name) for name in node.input]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return len(rename)


def small_output_convolutions(graph: onnx.GraphProto, minimum: int = MIN_INT8_OUTPUT_CHANNELS) -> set:
    """Names of the Conv nodes whose weight has fewer than ``minimum`` output channels."""
    weights = {t.name: t for t in graph.initializer}
    return {n.name for n in graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights and weights[n.input[1]].dims[0] < minimum}


def quantize_before_nearest_resizes(proto: onnx.ModelProto) -> int:
    """Make, in place, each nearest-neighbour Resize of a quantized tensor run on its uint8
    form (module docstring; bit-exact: both Q and DQ act on each element alone). A Resize that
    reads a per-tensor DequantizeLinear reads its uint8 input instead, dequantized after it (and
    where a QuantizeLinear of the same scale and zero point is its only reader, the pair goes);
    otherwise, where a QuantizeLinear is its only reader, that moves to the Resize's input.
    Returns how many Resizes now read uint8."""
    g = _Graph(proto.graph)
    before, after, dropped = {}, {}, set()  # id(Resize) -> node now just before / after it; removed
    for k, node in enumerate(proto.graph.node):
        if node.op_type != "Resize" or _attribute(node, "mode", b"nearest") != b"nearest":
            continue
        q = g.only_consumer(node.output[0], "QuantizeLinear")
        if q is not None and q.input[0] != node.output[0]:
            q = None
        dq = g.made_by(node.input[0], "DequantizeLinear")
        if dq is not None and _per_tensor(g, dq):
            if q is not None and _same_quantization(g, dq, q):
                node.input[0], node.output[0] = dq.input[0], q.output[0]
                dropped.add(id(q))
            else:
                resized = node.output[0]
                node.input[0], node.output[0] = dq.input[0], f"{resized}_uint8"
                after[id(node)] = helper.make_node("DequantizeLinear", [node.output[0], *dq.input[1:]], [resized],
                                                   name=f"{resized}_dequantize")
        elif q is not None:
            quantized = q.output[0]
            q.input[0], q.output[0] = node.input[0], f"{quantized}_before_resize"
            node.input[0], node.output[0] = q.output[0], quantized
            before[id(node)] = q
    if not before and not after and not dropped:
        return 0
    moved = {id(q) for q in before.values()} | dropped
    order = []
    for node in proto.graph.node:
        if id(node) in moved:
            continue
        if id(node) in before:
            order.append(before[id(node)])
        order.append(node)
        if id(node) in after:
            order.append(after[id(node)])
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    _drop_dead_nodes(proto.graph)
    return len(before) + len(after) + len(dropped)


def fuse_dequantize_instance_norms(proto: onnx.ModelProto) -> int:
    """Rewrite, in place, each InstanceNormalization that reads a per-tensor uint8
    DequantizeLinear (directly, or through a Reshape, as a GroupNorm's grouped view does) into
    one ``DequantizeInstanceNormalization`` node of the op library on the uint8 tensor (module
    docstring; the Reshape, if any, moves onto the uint8 tensor: a reshape commutes with an
    element-wise DequantizeLinear). The node keeps the normalisation's output name. A graph
    with such nodes needs the op library (or its portable twin). Returns how many were fused."""
    g = _Graph(proto.graph)
    # position of an InstanceNormalization -> the nodes that take its place (positions, not id():
    # protobuf's node wrappers are made afresh on each access, their ids reused)
    replaced = {}
    for k, node in enumerate(proto.graph.node):
        if node.op_type != "InstanceNormalization" or node.domain or len(node.input) != 3:
            continue
        before = []
        source = node.input[0]
        reshape = g.made_by(source, "Reshape")
        if reshape is not None:
            source = reshape.input[0]
        dq = g.made_by(source, "DequantizeLinear")
        if dq is None or not _per_tensor(g, dq) or g.constant(dq.input[2]).dtype != np.uint8:
            continue
        quantized = dq.input[0]
        if reshape is not None:
            quantized = f"{reshape.output[0]}_uint8"
            before.append(helper.make_node("Reshape", [dq.input[0], *reshape.input[1:]], [quantized],
                                           name=f"{reshape.name or reshape.output[0]}_uint8",
                                           **{a.name: helper.get_attribute_value(a) for a in reshape.attribute}))
        fused = helper.make_node(DEQUANTIZE_INSTANCE_NORM.name, [quantized, *dq.input[1:3], *node.input[1:3]],
                                 [node.output[0]], name=f"{node.name or node.output[0]}_dequantized",
                                 domain=DEQUANTIZE_INSTANCE_NORM.domain, epsilon=float(_attribute(node, "epsilon", 1e-5)))
        replaced[k] = before + [fused]
    if not replaced:
        return 0
    _splice(proto.graph, replaced)
    if not any(o.domain == DEQUANTIZE_INSTANCE_NORM.domain for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DEQUANTIZE_INSTANCE_NORM.domain, DEQUANTIZE_INSTANCE_NORM.version))
    _drop_dead_nodes(proto.graph)
    return len(replaced)


def _splice(graph: onnx.GraphProto, replaced: dict) -> None:
    """Put each ``replaced[k]`` (a list of nodes) where node ``k`` stood, in place, keeping the
    graph's topological order."""
    order = []
    for k, node in enumerate(graph.node):
        order.extend(replaced.get(k, [node]))
    del graph.node[:]
    graph.node.extend(order)


def dequantize_instance_norms_as_standard(proto: onnx.ModelProto) -> int:
    """The inverse of :func:`fuse_dequantize_instance_norms`, in place: each
    ``DequantizeInstanceNormalization`` node becomes the DequantizeLinear + InstanceNormalization
    it equals (the portable twins, :mod:`.portable`). Returns how many."""
    replaced = {}  # by position (see fuse_dequantize_instance_norms)
    for k, node in enumerate(proto.graph.node):
        if node.domain != DEQUANTIZE_INSTANCE_NORM.domain or node.op_type != DEQUANTIZE_INSTANCE_NORM.name:
            continue
        dequantized = f"{node.output[0]}_dequantized"
        replaced[k] = [
            helper.make_node("DequantizeLinear", list(node.input[:3]), [dequantized], name=f"{node.name}_dq"),
            helper.make_node("InstanceNormalization", [dequantized, *node.input[3:5]], [node.output[0]],
                             name=node.name, epsilon=float(_attribute(node, "epsilon", 1e-5)))]
    if not replaced:
        return 0
    _splice(proto.graph, replaced)
    return len(replaced)


def _per_tensor(g: _Graph, dq) -> bool:
    """A DequantizeLinear with one constant scale and zero point (the activations' kind)."""
    values = [g.constant(name) for name in dq.input[1:3]]
    return len(dq.input) == 3 and not dq.attribute and all(v is not None and v.size == 1 for v in values)


def _same_quantization(g: _Graph, dq, q) -> bool:
    """Whether a DequantizeLinear and a QuantizeLinear use one per-tensor scale and zero point."""
    if len(q.input) < 3 or q.attribute or not _per_tensor(g, dq):
        return False
    values = [g.constant(name) for name in (*dq.input[1:3], *q.input[1:3])]
    if any(v is None or v.size != 1 for v in values):
        return False
    dq_scale, dq_zero, q_scale, q_zero = values
    return dq_scale.dtype == q_scale.dtype and dq_zero.dtype == q_zero.dtype \
        and dq_scale.item() == q_scale.item() and dq_zero.item() == q_zero.item()


def pointwise_convolutions_as_matmuls(proto: onnx.ModelProto) -> int:
    """Rewrite, in place, each float 1x1 Conv of a 4-D tensor (stride 1, one group, no padding,
    constant weights, known height and width) as Reshape -> MatMul over channels (+ bias) ->
    Reshape, the same sums without the NCHWc layout conversion (module docstring). Returns how
    many were rewritten."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    g = _Graph(proto.graph)
    replaced, new_inits = {}, []
    for k, node in enumerate(proto.graph.node):
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = g.constant(node.input[1])
        bias = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        shape = shapes.get(node.output[0])
        if weight is None or weight.ndim != 4 or weight.shape[2:] != (1, 1) or weight.dtype != np.float32 \
                or not shape or len(shape) != 4 or None in shape[2:] or not _plain_pointwise(node):
            continue
        if len(node.input) > 2 and node.input[2] and bias is None:
            continue
        cout, cin = weight.shape[:2]
        p = f"{node.name or node.output[0]}_as_matmul"
        new_inits += [numpy_helper.from_array(np.array([0, cin, -1], np.int64), f"{p}_flat"),
                      numpy_helper.from_array(weight.reshape(cout, cin).astype(np.float32), f"{p}_weight"),
                      numpy_helper.from_array(np.array([0, cout, shape[2], shape[3]], np.int64), f"{p}_image")]
        nodes = [helper.make_node("Reshape", [node.input[0], f"{p}_flat"], [f"{p}_columns"], name=f"{p}_columns"),
                 helper.make_node("MatMul", [f"{p}_weight", f"{p}_columns"], [f"{p}_product"], name=p)]
        product = f"{p}_product"
        if bias is not None:
            new_inits.append(numpy_helper.from_array(bias.reshape(cout, 1).astype(np.float32), f"{p}_bias"))
            nodes.append(helper.make_node("Add", [product, f"{p}_bias"], [f"{p}_biased"], name=f"{p}_bias"))
            product = f"{p}_biased"
        nodes.append(helper.make_node("Reshape", [product, f"{p}_image"], [node.output[0]], name=f"{p}_image"))
        replaced[id(node)] = nodes
    if not replaced:
        return 0
    order = []
    for node in proto.graph.node:
        order.extend(replaced.get(id(node), [node]))
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    proto.graph.initializer.extend(new_inits)
    _drop_dead_nodes(proto.graph)
    return len(replaced)


def residual_adds(graph: onnx.GraphProto, quantized_convolutions: set) -> list:
    """Names of the Add nodes of a float graph that sum two feature maps of the quantized
    convolutions (named in ``quantized_convolutions``): each input is such a convolution's output
    or another such Add's, as residual blocks sum a block's last conv and its skip. Quantized
    too, they become ONNX Runtime's uint8 QLinearAdd (module docstring). An Add read by a linear
    Resize is left float: interpolating uint8 values rounds once more (-1.6 dB measured)."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list = []
    names: set = set()
    for node in graph.node:  # topological order: an Add's residual inputs are judged first
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        writers = [producer.get(name) for name in node.input]
        if not all(w is not None and (w.name in quantized_convolutions or w.name in names) for w in writers):
            continue
        if any(r.op_type == "Resize" and _attribute(r, "mode", b"nearest") != b"nearest"
               for r in consumers.get(node.output[0], [])):
            continue
        found.append(node.name)
        names.add(node.name)
    return found


def _plain_pointwise(node) -> bool:
    """A Conv with stride 1, dilation 1, one group and no padding (what a MatMul computes)."""
    for attribute in node.attribute:
        values = list(attribute.ints) if attribute.ints else [attribute.i] if attribute.type == onnx.AttributeProto.INT else None
        if attribute.name in ("strides", "dilations") and any(v != 1 for v in values):
            return False
        if attribute.name == "pads" and any(v != 0 for v in values):
            return False
        if attribute.name == "group" and attribute.i != 1:
            return False
        if attribute.name == "auto_pad" and attribute.s not in (b"NOTSET", b"VALID"):
            return False
    return True


def _attribute(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used (the rewritten chains' leftovers)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
