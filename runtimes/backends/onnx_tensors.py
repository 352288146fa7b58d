"""The bytes an ONNX model's constant tensors take in memory, read from the file's protobuf
wire format without parsing the whole model (pure: standard library only).

ONNX Runtime keeps every initializer, sparse initializer and Constant node's tensor of a
model (and of its subgraphs) in memory for the session's life, as dense arrays of their
element type; that is most of what a model costs beyond the runtime's fixed cost per
session. The sizes come from each tensor's `dims` and `data_type`, so embedded and external
data count alike, and the raw bytes are skipped, never read: sizing a 100 MB model reads a
few hundred bytes of it. The file is memory-mapped, so nothing is copied.

Field numbers are onnx.proto's, frozen by ONNX's compatibility rules (a test checks them
against the onnx package's descriptors).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from math import prod
from pathlib import Path

# onnx.proto field numbers
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_T, _ATTRIBUTE_G, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS = 22, 23
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_STRING_DATA = 1, 2, 6
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2

_STRING = 8  # TensorProto.STRING: one std::string per element
_STRING_OVERHEAD = 32  # sizeof(std::string) in libstdc++, besides the characters
# Bits per element of each TensorProto.DataType (UNDEFINED and STRING excepted)
_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
    16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4,
}

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class NotOnnx(ValueError):
    """The bytes are not a well-formed protobuf message where an ONNX model was expected."""


def constant_tensor_bytes(model_file: Path) -> int:
    """Bytes of every constant tensor of the model in `model_file` (see the module docstring)."""
    with open(model_file, "rb") as file:
        if file.seek(0, 2) == 0:
            return 0
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return model_tensor_bytes(data)


def model_tensor_bytes(data) -> int:
    """The same for a serialized ModelProto (bytes, or anything indexable and sliceable as bytes)."""
    try:
        return sum(_graph_bytes(data, *span) for number, span in _fields(data, 0, len(data)) if number == _MODEL_GRAPH)
    except IndexError:
        raise NotOnnx("the message ends inside a field") from None


def _graph_bytes(data, start: int, end: int) -> int:
    total = 0
    for number, span in _fields(data, start, end):
        if number == _GRAPH_INITIALIZER:
            total += _tensor_bytes(data, *span)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            total += _sparse_bytes(data, *span)
        elif number == _GRAPH_NODE:
            total += sum(_attribute_bytes(data, *a) for n, a in _fields(data, *span) if n == _NODE_ATTRIBUTE)
    return total


def _attribute_bytes(data, start: int, end: int) -> int:
    """Tensors held by a node's attribute: a Constant's value, or those in its subgraphs (If, Loop)."""
    total = 0
    for number, span in _fields(data, start, end):
        if number in (_ATTRIBUTE_T, _ATTRIBUTE_TENSORS):
            total += _tensor_bytes(data, *span)
        elif number in (_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS):
            total += _sparse_bytes(data, *span)
        elif number in (_ATTRIBUTE_G, _ATTRIBUTE_GRAPHS):
            total += _graph_bytes(data, *span)
    return total


def _sparse_bytes(data, start: int, end: int) -> int:
    return sum(_tensor_bytes(data, *span) for number, span in _fields(data, start, end)
               if number in (_SPARSE_VALUES, _SPARSE_INDICES))


def _tensor_bytes(data, start: int, end: int) -> int:
    dims: list[int] = []
    data_type = 0
    strings = 0
    for number, value in _fields(data, start, end, varints=True):
        if number == _TENSOR_DIMS:
            dims.extend(_packed_varints(data, *value) if isinstance(value, tuple) else (value,))
        elif number == _TENSOR_DATA_TYPE and isinstance(value, int):
            data_type = value
        elif number == _TENSOR_STRING_DATA and isinstance(value, tuple):
            strings += value[1] - value[0] + _STRING_OVERHEAD
    if data_type == _STRING:
        return strings
    if any(d >= 1 << 63 for d in dims):
        raise NotOnnx("a tensor with a negative dimension")
    return (prod(dims) * _BITS.get(data_type, 0) + 7) // 8


def _fields(data, start: int, end: int, varints: bool = False) -> Iterator[tuple[int, tuple[int, int] | int]]:
    """(field number, (start, end) of its bytes) for each length-delimited field of the
    message in data[start:end]; with `varints`, also (field number, value) for varint fields."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _LENGTH:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise NotOnnx("a field runs past the end of its message")
            yield number, (pos, pos + length)
            pos += length
        elif wire == _VARINT:
            value, pos = _varint(data, pos)
            if varints:
                yield number, value
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        else:
            raise NotOnnx(f"wire type {wire} does not occur in ONNX models")
    if pos != end:
        raise NotOnnx("a field runs past the end of its message")


def _packed_varints(data, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _varint(data, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise NotOnnx("a varint longer than 10 bytes")
