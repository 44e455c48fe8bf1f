"""Find every external-data file an ONNX model refers to, without the ``onnx`` package.

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
from dataclasses import dataclass

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


def external_data_refs(path: str | os.PathLike) -> list[ExternalRef]:
    """Every (tensor name, external-data location) in the model file at ``path``."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ModelFileError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                refs: list[ExternalRef] = []
                _walk(view, "Model", refs, depth=0)
                return refs
            finally:
                view.release()


def _walk(buf: memoryview, kind: str, refs: list, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ModelFileError("nesting is deeper than any real model's")
    if kind == "Tensor":
        _tensor(buf, refs)
        return
    children = _MESSAGE_FIELDS[kind]
    for number, wire, value in _fields(buf):
        if wire == 2 and number in children:
            _walk(value, children[number], refs, depth + 1)


def _tensor(buf: memoryview, refs: list) -> None:
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
