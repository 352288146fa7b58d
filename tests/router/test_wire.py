"""The field-1 reader against real protobuf serialization (no decoding of tensors)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from protos.stream_frames import encode_varint
from router.wire import MalformedRequest, read_model_name, with_model_name

names = st.text(min_size=0, max_size=300)


def _infer_request(name: str, request_id: str, raws: list[bytes], version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=request_id)
    request.parameters["priority"].int64_param = 7
    for index, raw in enumerate(raws):
        request.inputs.add(name=f"in{index}", datatype="UINT8", shape=[len(raw)])
        request.raw_input_contents.append(raw)
    request.outputs.add(name="out")
    return request


@given(name=names, request_id=st.text(max_size=20), raws=st.lists(st.binary(max_size=200), max_size=4),
       version=st.text(max_size=5))
def test_reads_the_name_protobuf_wrote(name, request_id, raws, version):
    data = _infer_request(name, request_id, raws, version).SerializeToString()
    assert read_model_name(data) == name


@given(name=names)
def test_every_forwarded_request_type(name):
    for kind in (pb.ModelMetadataRequest, pb.ModelConfigRequest, pb.ModelReadyRequest, pb.ModelStatisticsRequest):
        assert read_model_name(kind(name=name, version="3").SerializeToString()) == name


@given(old=names, new=names.filter(bool), raws=st.lists(st.binary(max_size=100), max_size=3))
def test_renaming_changes_only_the_name(old, new, raws):
    original = _infer_request(old, "id-1", raws)
    renamed = with_model_name(original.SerializeToString(), new)
    assert read_model_name(renamed) == new
    parsed = pb.ModelInferRequest.FromString(renamed)
    assert parsed.model_name == new
    original.model_name = new
    assert parsed == original


@given(first=names, second=names)
def test_last_field_one_wins_as_in_protobuf(first, second):
    data = pb.ModelReadyRequest(name=first).SerializeToString() + pb.ModelReadyRequest(name=second).SerializeToString()
    expected = pb.ModelReadyRequest.FromString(data).name
    assert read_model_name(data) == expected


@settings(max_examples=500)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_and_agree_with_protobuf(data):
    try:
        name = read_model_name(data)
    except MalformedRequest:
        return
    try:
        parsed = pb.ModelReadyRequest.FromString(data)
    except Exception:  # protobuf also checks what our reader skips (nested, unknown groups)
        return
    assert name == parsed.name


@given(name=names.filter(bool), cut=st.integers(min_value=1))
def test_truncated_requests_are_malformed_or_agree(name, cut):
    data = _infer_request(name, "x", [b"\x01\x02\x03"]).SerializeToString()
    truncated = data[: max(0, len(data) - cut)]
    try:
        found = read_model_name(truncated)
    except MalformedRequest:
        return
    assert found == pb.ModelInferRequest.FromString(truncated).model_name


@pytest.mark.parametrize("data, why", [
    (b"\x0a\x05abc", "past the end"),
    (b"\x0a", "varint"),
    (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint"),
    (b"\x08\x01", "not a string"),  # field 1 as a varint
    (b"\x00\x01", "field number 0"),
    (b"\x13\x14", "wire type"),  # a group (field 2)
    (b"\x11\x00\x00", "fixed-width"),  # fixed64 cut short
    (b"\x0a\x02\xc3\x28", "UTF-8"),
])
def test_malformed(data, why):
    with pytest.raises(MalformedRequest, match=why):
        read_model_name(data)


def test_empty_message_has_no_name():
    assert read_model_name(b"") == ""
    assert read_model_name(pb.ModelInferRequest(id="x").SerializeToString()) == ""


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_encoding_matches_protobuf(value):
    field = pb.StatisticDuration(count=value).SerializeToString()
    assert field == (b"\x08" + encode_varint(value) if value else b"")


edits = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(min_value=0),
                           st.integers(0, 255)), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(name=names, raws=st.lists(st.binary(max_size=40), max_size=3), changes=edits)
def test_edited_requests_are_malformed_or_agree_with_protobuf(name, raws, changes):
    """Real requests with bytes flipped, inserted or deleted: the parser's framing checks are
    what stand between them and an exception other than MalformedRequest."""
    data = bytearray(_infer_request(name, "r", raws).SerializeToString())
    for kind, where, value in changes:
        at = where % (len(data) + 1)
        if kind == "insert":
            data.insert(at, value)
        elif data and at < len(data):
            if kind == "flip":
                data[at] ^= value or 0x80
            else:
                del data[at]
    try:
        found = read_model_name(bytes(data))
    except MalformedRequest:
        return
    try:
        parsed = pb.ModelInferRequest.FromString(bytes(data))
    except Exception:  # protobuf also checks the nested messages our reader skips
        return
    assert found == parsed.model_name
