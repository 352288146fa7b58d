"""protos.v2_datatypes covers every datatype of the KServe V2 protocol, with the right
element sizes, and agrees with tritonclient and the InferTensorContents message."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from tritonclient.utils import triton_to_np_dtype

from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import (
    ALL_DATATYPES, BF16, BYTES_LENGTH, CONTENTS_FIELD, ELEMENT_SIZE, FLOAT_DATATYPES, NUMPY_TO_V2, V2_TO_NUMPY,
    dtype_to_v2,
)

# The KServe V2 protocol's tensor datatypes and each one's element size in bytes (BYTES: variable).
V2_SIZES = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": None,
}


def test_every_v2_datatype_is_known_with_its_element_size():
    assert set(ALL_DATATYPES) == set(V2_TO_NUMPY) == set(V2_SIZES)
    assert ELEMENT_SIZE == {name: size for name, size in V2_SIZES.items() if size is not None}
    for name, size in ELEMENT_SIZE.items():
        assert V2_TO_NUMPY[name].itemsize == size, name
    assert V2_TO_NUMPY["BYTES"] == np.dtype(object)
    assert BF16 == np.dtype(ml_dtypes.bfloat16) == V2_TO_NUMPY["BF16"]
    assert BYTES_LENGTH.size == 4 and BYTES_LENGTH.pack(1) == b"\x01\x00\x00\x00"


@pytest.mark.parametrize("name", [n for n in V2_SIZES if n not in ("BF16", "BYTES")])
def test_numpy_dtypes_agree_with_tritonclient(name):
    assert V2_TO_NUMPY[name] == np.dtype(triton_to_np_dtype(name))
    assert V2_TO_NUMPY[name].byteorder in ("<", "|", "=")  # little-endian on the wire


def test_float_datatypes_include_bf16_whose_numpy_kind_is_not_f():
    assert FLOAT_DATATYPES == {"FP16", "FP32", "FP64", "BF16"}
    assert {n for n, d in V2_TO_NUMPY.items() if d.kind == "f"} == FLOAT_DATATYPES - {"BF16"}


@pytest.mark.parametrize("name", ALL_DATATYPES)
def test_dtype_to_v2_inverts_the_table(name):
    assert dtype_to_v2(V2_TO_NUMPY[name]) == name
    assert NUMPY_TO_V2[V2_TO_NUMPY[name].newbyteorder("=")] == name


def test_dtype_to_v2_knows_str_arrays_the_other_byte_order_and_nothing_else():
    assert dtype_to_v2(np.dtype("U3")) == dtype_to_v2(np.dtype("S3")) == "BYTES"
    assert dtype_to_v2(np.dtype(">f4")) == "FP32" and dtype_to_v2(np.dtype(">i8")) == "INT64"
    assert dtype_to_v2(np.dtype(np.complex64)) is None


def test_contents_fields_are_fields_of_infer_tensor_contents():
    fields = set(pb.InferTensorContents.DESCRIPTOR.fields_by_name)
    assert set(CONTENTS_FIELD.values()) <= fields
    assert set(CONTENTS_FIELD) == set(ALL_DATATYPES) - {"FP16", "BF16"}


def test_the_leaf_imports_no_grpc_and_no_generated_module():
    code = ("import sys, protos.v2_datatypes; "
            "print(sorted(m for m in sys.modules if m.startswith('grpc') or m.endswith('_pb2') or m.startswith(("
            "'runtimes', 'router', 'mesh', 'puller'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
