"""KServe V2 tensors as numpy arrays for the models (pure): raw contents in and out.

The datatype table itself (names, numpy dtypes, element sizes) is
`protos.v2_datatypes`, shared with the router and the CLI; `BF16`, `V2_TO_NUMPY` and
`ALL_DATATYPES` are re-exported here for the runtime's own modules. What is the
runtime's: lookups that raise `InvalidInput`, and decoding/encoding raw tensors
(BYTES: a 4-byte little-endian length before each element).
"""

from __future__ import annotations

from math import prod

import numpy as np

from protos.v2_datatypes import ALL_DATATYPES, BF16, BYTES_LENGTH, NUMPY_TO_V2, V2_TO_NUMPY, dtype_to_v2
from runtimes.errors import InvalidInput

__all__ = [
    "ALL_DATATYPES", "BF16", "V2_TO_NUMPY", "decode_raw", "element_count", "encode_raw", "numpy_dtype_of",
    "shaped", "v2_datatype_of",
]

_pack_length = BYTES_LENGTH.pack
_unpack_length = BYTES_LENGTH.unpack_from
# Bound here rather than used under its imported name: CPython 3.11 compiles
# `imported_name.get(...)` as a plain attribute load (it expects a module there), a
# bound method built per call, about 40 ns more on every output tensor.
_NUMPY_TO_V2 = NUMPY_TO_V2


def v2_datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name for a numpy array (object and str arrays are BYTES)."""
    known = _NUMPY_TO_V2.get(array.dtype)  # native byte order or object: the usual case, one lookup
    if known is None:
        known = dtype_to_v2(array.dtype)  # str arrays, the other byte order
        if known is None:
            raise InvalidInput(f"numpy dtype {array.dtype} has no V2 datatype")
    return known


def numpy_dtype_of(datatype: str) -> np.dtype:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype '{datatype}'; expected one of {', '.join(ALL_DATATYPES)}"
        ) from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    return prod(shape) if shape else 1


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """One input's raw bytes as an array of `shape`; InvalidInput if the size is wrong."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, raw)
    dtype = numpy_dtype_of(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw content is {len(raw)} bytes, expected {expected} "
            f"({count} {datatype} elements of shape {list(shape)})"
        )
    return shaped(name, np.frombuffer(raw, dtype=dtype), shape)


def shaped(name: str, flat: np.ndarray, shape: list[int]) -> np.ndarray:
    """`flat` as an array of `shape`; InvalidInput where numpy cannot make one (more than
    64 dimensions, or dimensions whose product overflows even with no elements)."""
    try:
        return flat.reshape(shape)
    except ValueError as error:
        raise InvalidInput(f"input '{name}': shape {list(shape)} is not a possible array: {error}") from None


def _decode_bytes(name: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    items: list[bytes] = []
    offset, view = 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} has a truncated length prefix")
        (length,) = _unpack_length(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} says {length} bytes but the content ends first")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': {len(items)} BYTES elements, expected {count} for shape {list(shape)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return shaped(name, array, shape)


def encode_raw(array: np.ndarray) -> bytes:
    """An output array as V2 raw bytes (little-endian, row-major)."""
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_pack_length(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # row-major whatever the array's memory layout
