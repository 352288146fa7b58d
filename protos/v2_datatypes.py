"""KServe V2 tensor datatypes: their names, numpy dtypes and element sizes (pure).

The one table of V2 datatypes, which are facts of the wire protocol. Imported by
every module that reads or writes V2 tensors: `runtimes.datatypes` (the model
server's raw tensor codec, which re-exports `BF16`, `V2_TO_NUMPY` and
`ALL_DATATYPES`), `router.rest_codec` (REST JSON <-> V2 protobuf) and
`mesh.cli.tensors` (`meshserve infer`). It sits in `protos` because that is the one
package all three may import (the router never imports `runtimes`). It imports numpy,
ml_dtypes and struct only: no gRPC and no generated modules.

Fixed-size datatypes map to little-endian numpy dtypes; BF16 is ml_dtypes' bfloat16
(a real numpy dtype, but of kind "V", not "f": ask `FLOAT_DATATYPES`, not
`dtype.kind`); BYTES is a numpy object array of `bytes`, sent raw as each element's
length (`BYTES_LENGTH`, 4 bytes little-endian) followed by the element.
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

__all__ = [
    "ALL_DATATYPES", "BF16", "BYTES_LENGTH", "CONTENTS_FIELD", "ELEMENT_SIZE", "FLOAT_DATATYPES",
    "NUMPY_TO_V2", "V2_TO_NUMPY", "dtype_to_v2",
]

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

# Bytes per element of each fixed-size datatype; BYTES elements vary in size.
ELEMENT_SIZE: dict[str, int] = {name: dtype.itemsize for name, dtype in V2_TO_NUMPY.items() if name != "BYTES"}

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})

# The length prefix of each BYTES element in raw contents.
BYTES_LENGTH = struct.Struct("<I")

# numpy dtype (native byte order; object for BYTES) -> V2 name: one dict lookup for the
# usual array. `dtype_to_v2` also knows str arrays and the other byte order.
NUMPY_TO_V2: dict[np.dtype, str] = {dtype.newbyteorder("="): name for name, dtype in V2_TO_NUMPY.items()}

# Which InferTensorContents field carries each datatype when a tensor is sent typed
# rather than raw. FP16 and BF16 have no field of their own.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def dtype_to_v2(dtype: np.dtype) -> str | None:
    """The V2 datatype name for a numpy dtype (object and str dtypes are BYTES); None
    where it has none."""
    known = NUMPY_TO_V2.get(dtype)
    if known is not None:
        return known
    if dtype.kind in ("U", "S"):
        return "BYTES"
    return NUMPY_TO_V2.get(dtype.newbyteorder("="))
