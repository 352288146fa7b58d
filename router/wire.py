"""The model name of a serialized V2 request, read and replaced without decoding it (pure).

Every request the router forwards (ModelInferRequest, ModelMetadataRequest,
ModelConfigRequest, ModelReadyRequest, ModelStatisticsRequest) holds the model name in
field 1, a length-delimited string. `read_model_name` walks only the top-level framing of
the message (tag varints, lengths, fixed widths), never its tensors, and returns the
last field 1 it finds: protobuf's rule for a singular field, so the router and the
runtime always agree on which model a message names.

`with_model_name` points a message at another model by appending a new field 1: the
last occurrence wins in every protobuf parser, so nothing before it is copied apart or
re-encoded. The router uses it when a vmodel or a routing header names the model (what
ModelMesh calls id injection).

A message whose framing is broken raises `MalformedRequest` (INVALID_ARGUMENT); nothing
here reads past the end of the buffer or loops without progress.
"""

from __future__ import annotations

from protos.stream_frames import encode_varint

__all__ = ["MalformedRequest", "read_model_name", "with_model_name"]

_MAX_VARINT_BYTES = 10


class MalformedRequest(ValueError):
    """The bytes are not a well-framed protobuf message (or field 1 is not a UTF-8 string)."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    limit = min(end, pos + _MAX_VARINT_BYTES)
    while pos < limit:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise MalformedRequest("truncated or overlong varint in the request")


def read_model_name(data: bytes) -> str:
    """The model name (field 1) of a serialized request; "" when it has none."""
    end = len(data)
    pos = 0
    start = stop = -1
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos, end)
        wire = tag & 7
        if tag >> 3 == 0:
            raise MalformedRequest("field number 0 in the request")
        if wire == 2:
            length = data[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(data, pos, end)
            field_end = pos + length
            if field_end > end:
                raise MalformedRequest("a field runs past the end of the request")
            if tag == 0x0A:
                start, stop = pos, field_end
            pos = field_end
        elif tag >> 3 == 1:
            raise MalformedRequest("field 1 (the model name) is not a string")
        elif wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise MalformedRequest(f"unsupported wire type {wire} in the request")
    if pos != end:
        raise MalformedRequest("a fixed-width field runs past the end of the request")
    if start < 0:
        return ""
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the model name is not valid UTF-8") from None


def with_model_name(data: bytes, name: str) -> bytes:
    """`data` naming `name` instead: field 1 appended (the last occurrence wins)."""
    encoded = name.encode("utf-8")
    return b"".join((data, b"\x0a", encode_varint(len(encoded)), encoded))
