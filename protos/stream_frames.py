"""The batches of `meshserve.stream.v1` framed by hand on the hot path (pure).

A `CallBatch` (or `ReplyBatch`) is its frames one after another, each as field 1; a frame
written here is a few header bytes around the request's (or reply's) own bytes, so that
building a batch copies each body once (in `b"".join`), where building the messages
would copy it into each message and again into the serialized batch. The receiving side
parses the batch with the generated classes, as any protobuf reader would.
"""

from __future__ import annotations

from collections import deque

__all__ = ["call_entry", "encode_varint", "entry", "reply_entry", "take_batch"]


def take_batch(outbox: deque[tuple[int, tuple[bytes, ...]]], max_bytes: int) -> tuple[bytes, int]:
    """One message from the front of a non-empty `outbox` of (size, parts) entries: as many
    entries as fit in `max_bytes` (at least one, however big), joined; and their total size."""
    batch: list[bytes] = []
    total = 0
    while outbox and (not batch or total + outbox[0][0] <= max_bytes):
        size, parts = outbox.popleft()
        batch.extend(parts)
        total += size
    return b"".join(batch), total


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def call_entry(call_id: int, body: bytes, timeout_us: int, headers: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, tail) of one CallFrame in a CallBatch: id (1), body (2), the serialized
    `repeated Header metadata` (3) as given, timeout_us (4)."""
    inner_head = b"".join((b"\x08", encode_varint(call_id), b"\x12", encode_varint(len(body))))
    tail = b"".join((headers, b"\x20", encode_varint(timeout_us))) if timeout_us else headers
    size = len(inner_head) + len(body) + len(tail)
    return b"".join((b"\x0a", encode_varint(size), inner_head)), body, tail


def reply_entry(call_id: int, body: bytes) -> tuple[bytes, bytes]:
    """(head, body) of one successful ReplyFrame (code 0) in a ReplyBatch: id (1), body (2)."""
    inner_head = b"".join((b"\x08", encode_varint(call_id), b"\x12", encode_varint(len(body))))
    return b"".join((b"\x0a", encode_varint(len(inner_head) + len(body)), inner_head)), body


def entry(frame: bytes) -> tuple[bytes, bytes]:
    """(head, frame) of an already serialized frame in a batch."""
    return b"".join((b"\x0a", encode_varint(len(frame)))), frame
