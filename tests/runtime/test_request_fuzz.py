"""Fuzzing the runtime's V2 request decoding: shapes, datatypes, raw sizes, BYTES framing.

`infer_request_from_proto` (raw and typed contents, down to numpy through
`runtimes.datatypes`) must answer any ModelInferRequest with arrays of the declared
shape and datatype, or `InvalidInput` (INVALID_ARGUMENT): never another exception. A
real runtime process then gets a sample of the same requests over gRPC: each answer is
OK or INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import CONTENTS_FIELD
from runtimes.converters import infer_request_from_proto
from runtimes.datatypes import ALL_DATATYPES, V2_TO_NUMPY, encode_raw
from runtimes.errors import InvalidInput

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datatypes = st.one_of(st.sampled_from(ALL_DATATYPES), st.sampled_from(["", "FP33", "fp32", "STRING", "INT128"]),
                      st.text(max_size=6))
# Mostly small dimensions, sometimes negative, huge (product past int64) or many (past numpy's 64).
dimension = st.one_of(st.integers(0, 4), st.integers(-3, -1), st.integers(2**40, 2**63 - 1))
shapes = st.one_of(st.lists(dimension, max_size=4), st.lists(st.integers(0, 2), min_size=60, max_size=70))


def _length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# BYTES framing: well framed, lengths past the end, a truncated prefix, or anything at all.
raw_contents = st.one_of(
    st.binary(max_size=64),
    st.lists(st.binary(max_size=8), max_size=6).map(_length_prefixed),
    st.tuples(st.lists(st.binary(max_size=8), max_size=3), st.binary(min_size=1, max_size=3))
      .map(lambda parts: _length_prefixed(parts[0]) + parts[1]),
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack("<I", n) + b"abc"),
)


@st.composite
def tensors(draw, raw: bool) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    tensor = pb.ModelInferRequest.InferInputTensor(name=draw(st.text(max_size=5)), datatype=draw(datatypes),
                                                   shape=draw(shapes))
    if raw:
        return tensor, draw(raw_contents)
    field = draw(st.sampled_from(sorted(set(CONTENTS_FIELD.values()))))
    values = {
        "bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=6),
        "int_contents": st.integers(-2**31, 2**31 - 1), "int64_contents": st.integers(-2**63, 2**63 - 1),
        "uint_contents": st.integers(0, 2**32 - 1), "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
    }[field]
    getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=6)))
    return tensor, None


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    raw = draw(st.booleans())
    request = pb.ModelInferRequest(model_name="m")
    for tensor, contents in draw(st.lists(tensors(raw), max_size=3)):
        request.inputs.append(tensor)
        if contents is not None:
            request.raw_input_contents.append(contents)
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(b"\x00")  # one more raw entry than inputs
    return request


def _check_decoded(request: pb.ModelInferRequest) -> None:
    """Decoding gives arrays of the declared shape and dtype, raw ones byte for byte; or InvalidInput."""
    try:
        decoded = infer_request_from_proto(request)
    except InvalidInput as error:
        assert str(error)
        return
    for index, (tensor, decoded_input) in enumerate(zip(request.inputs, decoded.inputs)):
        assert decoded_input.data.shape == tuple(tensor.shape)
        assert decoded_input.data.dtype == V2_TO_NUMPY[tensor.datatype]
        if request.raw_input_contents:
            assert encode_raw(decoded_input.data) == request.raw_input_contents[index]


@FUZZ
@given(request=requests())
def test_any_request_decodes_to_its_declared_arrays_or_is_invalid_input(request):
    _check_decoded(request)


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes_that_parse_as_a_request_decode_or_are_invalid_input(data):
    try:
        request = pb.ModelInferRequest.FromString(data)
    except Exception:  # not a message at all: grpc refuses it before our code runs
        return
    _check_decoded(request)


@settings(max_examples=100, deadline=None)
@given(datatype=st.sampled_from([d for d in ALL_DATATYPES if d.startswith(("INT", "UINT"))]),
       value=st.integers(-2**64, 2**64))
def test_typed_integers_decode_exactly_or_are_refused_never_wrapped(datatype, value):
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1])
    try:
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).append(value)
    except ValueError:
        return  # outside the contents field's own type: no client can send it
    limits = np.iinfo(V2_TO_NUMPY[datatype])
    if limits.min <= value <= limits.max:
        assert infer_request_from_proto(request).inputs[0].data.tolist() == [value]
    else:
        with pytest.raises(InvalidInput, match=f"does not fit in {datatype}"):
            infer_request_from_proto(request)


@pytest.mark.parametrize("shape", [[1] * 65, [2**62, 2**62, 0], [2**62, 0]])
@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_shapes_numpy_cannot_make_are_invalid_input(shape, datatype):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    request.raw_input_contents.append(b"\x00" * 4 if shape[-1] else b"")  # one FP32 0.0, or one empty BYTES element
    with pytest.raises(InvalidInput, match="not a possible array"):
        infer_request_from_proto(request)


def test_a_value_that_does_not_fit_its_typed_field_is_refused():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="UINT8", shape=[1]).contents.uint_contents.append(300)
    with pytest.raises(InvalidInput, match="does not fit in UINT8"):
        infer_request_from_proto(request)  # it was decoded as 44 (300 mod 256)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_a_runtime_process_answers_fuzzed_requests_ok_or_invalid_argument(loaded_add, request):
    """The same requests over gRPC to the tests' `add` model (x FP32 [-1, 4])."""
    request.model_name = "add"
    try:
        loaded_add.inference.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())


@pytest.fixture(scope="module")
def loaded_add(runtime, model_store):
    runtime.load("add", model_store["add"], "onnx")
    return runtime
