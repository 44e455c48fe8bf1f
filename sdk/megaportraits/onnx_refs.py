"""Read what the SDK must know about an ONNX model file, without the ``onnx`` package.

Two questions are answered at the protobuf wire level, before any session exists:
:func:`external_data_refs` (every external-data file the model refers to) and
:func:`model_interface` (the graph's inputs and outputs with their dtypes and shapes, and the
operator domains its nodes use), so a bundle can be checked against its manifest without
ONNX Runtime opening anything.

A bundle is untrusted: an initializer's ``external_data`` ``location`` could name
``../../etc/passwd`` or an absolute path, and ONNX Runtime would read it when the session is
created. So before any session exists, the model file is walked at the protobuf wire level
(the SDK's runtime dependencies do not include ``onnx``) and every tensor anywhere in it is
checked: graph initializers, sparse initializers, tensor-valued node attributes, subgraphs
(If/Loop/Scan bodies), model-local functions and training graphs.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

# (message, field number) -> message type of that field; everything else is skipped.
_MESSAGE_FIELDS = {
    "Model": {7: "Graph", 20: "TrainingInfo", 25: "Function"},
    "TrainingInfo": {1: "Graph", 2: "Graph"},
    "Graph": {1: "Node", 5: "Tensor", 15: "SparseTensor"},
    "Function": {7: "Node"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "SparseTensor", 23: "SparseTensor"},
    "SparseTensor": {1: "Tensor", 2: "Tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_MAX_DEPTH = 64


class ModelFileError(ValueError):
    """The file is not a well-formed protobuf (truncated, or not an ONNX model at all)."""


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str


@dataclass(frozen=True)
class ValueInfo:
    """One graph input or output: its name, ONNX element type name, and dims (int, or a str
    for a named dynamic axis, or None where the file leaves the dim unknown)."""

    name: str
    dtype: str | None
    shape: tuple | None


@dataclass(frozen=True)
class ModelInterface:
    """A model file's graph inputs (initializers excluded) and outputs, and the ``(domain,
    op_type)`` of every node anywhere in it (subgraphs and model-local functions included)."""

    inputs: tuple
    outputs: tuple
    ops: frozenset

    def domains(self) -> set:
        return {domain for domain, _ in self.ops}


# ONNX TensorProto.DataType numbers -> the manifest's dtype names (others keep their number).
_ELEM_TYPES = {1: "float32", 10: "float16", 7: "int64", 11: "float64", 6: "int32", 9: "bool"}
_MODEL_GRAPH, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 5, 11, 12
_NODE_OP_TYPE, _NODE_DOMAIN = 4, 7


def external_data_refs(path: str | os.PathLike) -> list[ExternalRef]:
    """Every (tensor name, external-data location) in the model file at ``path``."""
    return read_model(path)[0]


def model_interface(path: str | os.PathLike) -> ModelInterface:
    """The main graph's inputs and outputs and every node's operator, read from the file."""
    return read_model(path)[1]


def read_model(path: str | os.PathLike) -> tuple[list[ExternalRef], ModelInterface]:
    """Both answers from one pass over the file (the pass is the cost: ~10^5 fields per model)."""
    found = _with_model_bytes(path, _read)
    if not found.has_graph:
        raise ModelFileError("the file holds no graph")
    interface = ModelInterface(inputs=tuple(v for v in found.inputs if v.name not in found.initializers),
                               outputs=tuple(found.outputs), ops=frozenset(found.ops))
    return found.refs, interface


def _with_model_bytes(path, read):
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ModelFileError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return read(view)
            except ModelFileError as e:
                # raised again below, once the map is closed: the traceback's frames hold slices
                # of the map, and closing it under them is a BufferError, not this message
                failure = str(e)
            finally:
                view.release()
    raise ModelFileError(failure)


def _value_info(buf: memoryview) -> ValueInfo:
    name, dtype, shape = "", None, None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif number == 2 and wire == 2:  # TypeProto
            for n, w, tensor in _fields(value):
                if n == 1 and w == 2:  # tensor_type
                    dtype, shape = _tensor_type(tensor)
    return ValueInfo(name, dtype, shape)


def _tensor_type(buf: memoryview) -> tuple:
    dtype, dims = None, None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dtype = _ELEM_TYPES.get(value, str(value))
        elif number == 2 and wire == 2:  # TensorShapeProto
            dims = []
            for n, w, dim in _fields(value):
                if n == 1 and w == 2:
                    dims.append(_dimension(dim))
    return dtype, None if dims is None else tuple(dims)


def _dimension(buf: memoryview):
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            return value
        if number == 2 and wire == 2:
            return bytes(value).decode("utf-8", "replace")
    return None


@dataclass
class _Found:
    """What one pass over a model collects."""

    refs: list = field(default_factory=list)
    ops: set = field(default_factory=set)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    initializers: set = field(default_factory=set)
    has_graph: bool = False


def _read(view: memoryview) -> _Found:
    found = _Found()
    _walk(view, "Model", found, depth=0)
    return found


def _walk(buf: memoryview, kind: str, found: _Found, depth: int, main: bool = False) -> None:
    """Visit every message that can hold a tensor or a node. ``main``: this is the model's own
    graph (its inputs and outputs are the model's), or one of its initializers."""
    if depth > _MAX_DEPTH:
        raise ModelFileError("nesting is deeper than any real model's")
    if kind == "Tensor":
        name = _tensor(buf, found.refs)
        if main:
            found.initializers.add(name)
        return
    children = _MESSAGE_FIELDS[kind]
    op_type = domain = ""
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number in children:
            top_graph = kind == "Model" and number == _MODEL_GRAPH
            found.has_graph |= top_graph
            _walk(value, children[number], found, depth + 1,
                  main=top_graph or (main and kind == "Graph" and number == _GRAPH_INITIALIZER))
        elif main and kind == "Graph" and number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            (found.inputs if number == _GRAPH_INPUT else found.outputs).append(_value_info(value))
        elif kind == "Node" and number == _NODE_OP_TYPE:
            op_type = bytes(value).decode("utf-8", "replace")
        elif kind == "Node" and number == _NODE_DOMAIN:
            domain = bytes(value).decode("utf-8", "replace")
    if kind == "Node":
        found.ops.add(("" if domain == "ai.onnx" else domain, op_type))


def _tensor(buf: memoryview, refs: list) -> str:
    name, entries, external = "", [], False
    for number, wire, value in _fields(buf):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entries.append(_string_pair(value))
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == 1
    for key, value in entries:
        if key == "location":
            refs.append(ExternalRef(name, value))
    if external and not any(k == "location" for k, _ in entries):
        raise ModelFileError(f"tensor {name!r} is marked external but names no location")
    return name


def _string_pair(buf: memoryview) -> tuple[str, str]:
    key = value = ""
    for number, wire, v in _fields(buf):
        if wire == 2 and number == 1:
            key = bytes(v).decode("utf-8", "replace")
        elif wire == 2 and number == 2:
            value = bytes(v).decode("utf-8", "replace")
    return key, value


def _fields(buf: memoryview):
    """Yield (field number, wire type, value): an int for varints, a memoryview for bytes."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ModelFileError("field number 0 is not valid protobuf")
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > end:
                raise ModelFileError("a field runs past the end of the file (truncated?)")
            value, i = buf[i:i + length], i + length
        else:
            raise ModelFileError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise ModelFileError("the file ends inside a field (truncated?)")
        yield number, wire, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    if i < len(buf) and buf[i] < 0x80:  # most keys and small values: one byte
        return buf[i], i + 1
    result, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ModelFileError("malformed varint (truncated or not protobuf)")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
