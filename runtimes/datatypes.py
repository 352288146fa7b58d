"""KServe V2 datatypes and their numpy representation (pure).

Fixed-size types map to numpy dtypes; BF16 uses ml_dtypes' bfloat16 (a real
numpy dtype); BYTES is a numpy object array of `bytes`, serialized raw as a
4-byte little-endian length before each element.
"""

from __future__ import annotations

import struct
from math import prod

import ml_dtypes
import numpy as np

from runtimes.errors import InvalidInput

BF16 = np.dtype(ml_dtypes.bfloat16)

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": BF16,
    "BYTES": np.dtype(object),
}
ALL_DATATYPES = tuple(V2_TO_NUMPY)
_NUMPY_TO_V2 = {dtype.newbyteorder("="): name for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}


def v2_datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name for a numpy array (object and str arrays are BYTES)."""
    known = _NUMPY_TO_V2.get(array.dtype)  # native byte order: the usual case, one lookup
    if known is not None:
        return known
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no V2 datatype") from None


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
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_bytes(name: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    items: list[bytes] = []
    offset, view = 0, memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} has a truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element {len(items)} says {length} bytes but the content ends first")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': {len(items)} BYTES elements, expected {count} for shape {list(shape)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def encode_raw(array: np.ndarray) -> bytes:
    """An output array as V2 raw bytes (little-endian, row-major)."""
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # row-major whatever the array's memory layout
