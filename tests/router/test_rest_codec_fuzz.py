"""Fuzzing the REST JSON codecs (V2 `rest_codec`, V1 `rest_v1_codec`), both ways.

Any body a client sends is either turned into a ModelInferRequest that serializes, or
refused with `BadTensor` (HTTP 400): never another exception (the REST front answers
those with 500). Valid tensors round-trip: JSON -> raw contents -> JSON gives the values
back, for every V2 datatype.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import ALL_DATATYPES, ELEMENT_SIZE, V2_TO_NUMPY
from router.rest_codec import BadTensor, request_from_json, response_to_json
from router.rest_v1_codec import Signature, TensorSpec, predict_request, predictions_json, read_instances

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=100, deadline=None)

# JSON's own values, with what makes codecs trip: huge integers, NaN/Infinity, lone surrogates.
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
texts = st.one_of(st.text(max_size=6), surrogates)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=3)), max_leaves=12)
datatype_names = st.one_of(st.sampled_from(ALL_DATATYPES), st.sampled_from(["FP33", "fp32", "STRING"]), json_values)
parameters = st.one_of(st.dictionaries(texts, scalars, max_size=3), json_values)


def _either(valid, junk=json_values):
    return st.one_of(valid, junk)


v2_inputs = st.fixed_dictionaries(
    {"name": _either(texts), "datatype": datatype_names,
     "shape": _either(st.lists(st.one_of(st.integers(0, 3), st.integers(-2, 2**64)), max_size=3)),
     "data": json_values},
    optional={"parameters": _either(st.fixed_dictionaries({"binary_data_size": _either(st.integers(-1, 40))}))},
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": _either(st.lists(v2_inputs, max_size=3))},
    optional={"id": _either(texts), "parameters": parameters,
              "outputs": _either(st.lists(st.fixed_dictionaries({"name": _either(texts)},
                                                                optional={"parameters": parameters}), max_size=2))},
)


@FUZZ
@given(body=st.one_of(v2_bodies, json_values), binary=st.binary(max_size=40))
def test_any_v2_body_becomes_a_request_or_is_bad_tensor(body, binary):
    header = json.dumps(body).encode()
    try:
        decoded = request_from_json("m", header, binary)
    except BadTensor as error:
        assert str(error)
        return
    decoded.request.SerializeToString()
    for tensor, raw in zip(decoded.request.inputs, decoded.request.raw_input_contents):
        if tensor.datatype != "BYTES":
            assert len(raw) == math.prod(tensor.shape) * ELEMENT_SIZE[tensor.datatype]


@FUZZ
@given(header=st.binary(max_size=80))
def test_any_bytes_as_a_v2_body_are_a_request_or_bad_tensor(header):
    try:
        request_from_json("m", header).request.SerializeToString()
    except BadTensor:
        pass


@pytest.mark.parametrize("header, fragment", [
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}', "lone surrogate"),
    (b'{"id": "\\udfff", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', "lone surrogate"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"p": 1e999999}}',
     None),  # Infinity: a double parameter, fine
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": {"p": '
     + str(2**64).encode() + b"}}", "does not fit an int64"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [' + str(2**64).encode() + b', 0], "data": []}]}',
     "int64"),
    (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [' + str(2**63).encode() + b"]}]}",
     "do not fit INT64"),
    (b'{"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1], "data": [-1]}]}', "do not fit UINT64"),
])
def test_bodies_the_fuzzer_found(header, fragment):
    if fragment is None:
        request_from_json("m", header)
        return
    with pytest.raises(BadTensor, match=fragment):
        request_from_json("m", header)


# -- valid tensors round-trip ---------------------------------------------------------------
def _values(datatype: str):
    if datatype == "BYTES":
        return st.text(max_size=5)
    if datatype == "BOOL":
        return st.booleans()
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return st.integers(int(limits.min), int(limits.max))
    # Values the float type holds exactly (drawn, then rounded to it), so JSON -> raw -> JSON gives them back.
    width = {"FP16": 16, "BF16": 32, "FP32": 32, "FP64": 64}[datatype]
    floats = st.floats(width=width, allow_nan=False, allow_infinity=False)
    return floats.map(lambda v: float(np.float64(v).astype(dtype))).filter(math.isfinite)


@st.composite
def tensors(draw) -> tuple[str, list[int], list]:
    datatype = draw(st.sampled_from(ALL_DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3))
    flat = draw(st.lists(_values(datatype), min_size=math.prod(shape), max_size=math.prod(shape)))
    return datatype, list(shape), flat


def _raw(datatype: str, flat: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in flat)
    return np.asarray(flat, dtype=np.float64 if datatype == "BF16" else V2_TO_NUMPY[datatype]).astype(V2_TO_NUMPY[datatype]).tobytes()


@ROUND_TRIP
@given(tensor=tensors(), nested=st.booleans(), binary_in=st.booleans(), binary_out=st.booleans(),
       request_id=st.text(max_size=5))
def test_v2_tensors_round_trip_through_json(tensor, nested, binary_in, binary_out, request_id):
    datatype, shape, flat = tensor
    raw = _raw(datatype, flat)
    data = np.array(flat, dtype=object).reshape(shape).tolist() if nested and flat else flat
    entry = {"name": "x", "datatype": datatype, "shape": shape}
    if binary_in:
        entry["parameters"] = {"binary_data_size": len(raw)}
    else:
        entry["data"] = data
    decoded = request_from_json("m", json.dumps({"id": request_id, "inputs": [entry]}).encode(),
                                raw if binary_in else b"")
    [sent] = decoded.request.inputs
    assert (sent.name, sent.datatype, list(sent.shape)) == ("x", datatype, shape)
    assert decoded.request.raw_input_contents[0] == raw and decoded.request.id == request_id

    response = pb.ModelInferResponse(model_name="m", model_version="1", id=request_id)
    response.outputs.add(name="y", datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)
    body, tail = response_to_json(response.SerializeToString(), {"y"} if binary_out else set(), False)
    [output] = json.loads(body)["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", datatype, shape)
    if binary_out:
        assert tail == raw and output["parameters"]["binary_data_size"] == len(raw)
    else:
        assert tail == b"" and output["data"] == flat


# -- V1 -------------------------------------------------------------------------------------
specs = st.builds(TensorSpec, name=st.sampled_from(["a", "b", "predict"]),
                  datatype=st.one_of(st.just(""), st.sampled_from(ALL_DATATYPES), st.just("FP33")),
                  shape=st.lists(st.integers(-1, 3), max_size=3).map(tuple))
signatures = st.builds(Signature, inputs=st.lists(specs, max_size=2, unique_by=lambda s: s.name).map(tuple),
                       outputs=st.lists(specs, max_size=2, unique_by=lambda s: s.name).map(tuple))
v1_bodies = st.one_of(
    st.fixed_dictionaries({"instances": json_values}),
    st.fixed_dictionaries({"inputs": st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values,
                                                              max_size=3), max_size=3)}),
    json_values,
)


@FUZZ
@given(body=v1_bodies, signature=signatures)
def test_any_v1_body_becomes_a_request_or_is_bad_tensor(body, signature):
    try:
        request = predict_request("m", read_instances(json.dumps(body).encode()), signature)
    except BadTensor as error:
        assert str(error)
        return
    request.SerializeToString()
    assert len(request.inputs) == len(signature.inputs)


@ROUND_TRIP
@given(tensor=tensors())
def test_v1_instances_round_trip_to_predictions(tensor):
    datatype, shape, flat = tensor
    instances = np.array(flat, dtype=object).reshape(shape).tolist()
    if not instances or 0 in shape[:-1]:
        return  # V1 needs an instance, and nested JSON lists cannot hold dimensions after an empty one
    signature = Signature((TensorSpec("x", datatype, (-1, *shape[1:])),), (TensorSpec("predict", datatype, ()),))
    request = predict_request("m", instances, signature)
    assert list(request.inputs[0].shape) == shape and request.raw_input_contents[0] == _raw(datatype, flat)
    assert [o.name for o in request.outputs] == ["predict"]
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="predict", datatype=datatype, shape=shape)
    response.raw_output_contents.append(request.raw_input_contents[0])
    assert json.loads(predictions_json(response.SerializeToString(), signature)) == {"predictions": instances}
