"""ModelInfer calls to one instance as messages on one long-lived stream (`meshserve.stream.v1`).

One unary grpc.aio call per forwarded request costs the router (and the runtime) more CPU
than the request itself for small models; `InstanceStream` opens one `InferenceStream/Calls`
stream to an instance on first use and multiplexes calls on it, each a `CallFrame` under its
own correlation id, answered by a `ReplyFrame` of that id in whatever order calls finish.

What a caller sees is what the unary call gives (`call` returns the reply bytes and the
trailing metadata, or raises `grpc.aio.AioRpcError`, so `router.routing` retries as before):
- the deadline travels in the frame and also bounds the wait here (DEADLINE_EXCEEDED);
- a caller that goes away (its task cancelled) sends a cancel frame: the runtime stops it;
- a broken stream fails only the calls in flight on it, with UNAVAILABLE; the next call
  opens a new stream;
- a runtime serving the stream opens it with the `meshserve-stream: v1` header; an instance
  without the service answers the open UNIMPLEMENTED, with nothing written to it: its
  calls in flight raise `StreamUnsupported` (none ran), the caller sends them unary, and so
  does every call to that instance for `REPROBE_S`, after which one call tries again.

One writer task per stream sends the frames waiting in its outbox as one `CallBatch`
message. It is the only writer because gRPC allows one message in flight per direction and
because grpc.aio cancels the whole call when a write is cancelled: a caller that goes away
must never be the one writing. Batches are whatever waits when the previous message left;
measured, that is ~1.05 frames per message even at 16 callers (grpc.aio hands the router
each incoming call in a loop turn of its own), so batching is a bound, not a saving. Past
`OUTBOX_BYTES` waiting, new callers wait, so a slow reader at the instance holds callers
back as HTTP/2 flow control does a unary call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence

import grpc

from protos import meshserve_stream_pb2 as spb
from protos.limits import DEFAULT_MAX_MESSAGE_BYTES
from protos.stream_frames import call_entry, encode_varint, entry, take_batch

__all__ = ["CALLS_PATH", "FRAME_MARGIN_BYTES", "InstanceStream", "StreamUnsupported"]

log = logging.getLogger(__name__)

CALLS_PATH = "/meshserve.stream.v1.InferenceStream/Calls"
#: The header a runtime serving the stream opens it with (`runtimes.stream_servicer`).
STREAM_HEADER = "meshserve-stream"
#: The header the router opens a stream with: the largest reply it takes (bytes).
MAX_REPLY_HEADER = "meshserve-max-reply-bytes"
#: A frame is its request plus its id, headers and deadline; the stream's channel allows this
#: much over the largest request so that any request a unary call could carry fits one frame.
FRAME_MARGIN_BYTES = 1 << 20
#: Frames waiting to be sent beyond this make new callers wait (as HTTP/2 flow control would).
OUTBOX_BYTES = 8 << 20
#: How long an instance that answered UNIMPLEMENTED gets unary calls before the stream is tried again.
REPROBE_S = 60.0

Metadata = Sequence[tuple[str, str | bytes]]


class StreamUnsupported(Exception):
    """The instance does not serve the stream; the call did not run there."""


def _status(code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def headers(metadata: Metadata | None) -> bytes:
    """The caller's metadata as CallFrame field 3 entries (serialized `Header`s)."""
    out = []
    for key, value in metadata or ():
        if isinstance(value, bytes):
            header = spb.Header(key=key, binary_value=value).SerializeToString()
        else:
            header = spb.Header(key=key, value=value).SerializeToString()
        out.append(b"\x1a" + encode_varint(len(header)) + header)
    return b"".join(out)


def metadata_of(frame_headers) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((h.key, h.binary_value if h.key.endswith("-bin") else h.value) for h in frame_headers)


class _Stream:
    """One open Calls stream: the calls in flight on it and the frames waiting to be sent."""

    __slots__ = ("call", "pending", "outbox", "outbox_bytes", "wake", "room", "reader", "writer")

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future] = {}
        self.outbox: deque[tuple[int, tuple[bytes, ...]]] = deque()  # (size, parts) per frame
        self.outbox_bytes = 0
        self.wake = asyncio.Event()  # frames are waiting
        self.room = asyncio.Event()  # the outbox is under OUTBOX_BYTES
        self.room.set()
        self.reader: asyncio.Task | None = None
        self.writer: asyncio.Task | None = None

    def post(self, size: int, parts: tuple[bytes, ...]) -> None:
        self.outbox.append((size, parts))
        self.outbox_bytes += size
        if self.outbox_bytes >= OUTBOX_BYTES:
            self.room.clear()
        self.wake.set()


class InstanceStream:
    """The stream to one instance (opened lazily, reopened after a break)."""

    def __init__(self, channel: grpc.aio.Channel, address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 clock=time.monotonic) -> None:
        self.address = address
        open_call = channel.stream_stream(CALLS_PATH, request_serializer=None,
                                          response_deserializer=spb.ReplyBatch.FromString)
        # The runtime keeps each reply (and each batch) within what this channel receives.
        limit = ((MAX_REPLY_HEADER, str(max_message_bytes)),)
        self._open_call = lambda: open_call(metadata=limit)
        self._max_batch_bytes = max_message_bytes + FRAME_MARGIN_BYTES
        self._clock = clock
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._unsupported_until = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.calls_sent = 0  # calls this stream carried (answered or not; not those sent back unary)

    def usable(self) -> bool:
        """False while the instance is known not to serve the stream (send unary instead)."""
        return not self._unsupported_until or self._clock() >= self._unsupported_until

    async def call(self, body: bytes, metadata: Metadata | None, timeout: float) -> tuple[bytes, Metadata]:
        """(reply bytes, trailing metadata) of one ModelInfer; AioRpcError or StreamUnsupported."""
        stream = self._stream or self._start()
        self.calls_sent += 1
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        stream.pending[call_id] = future
        parts = call_entry(call_id, body, max(int(timeout * 1e6), 1), headers(metadata) if metadata else b"")
        posted = False
        try:
            async with asyncio.timeout(timeout):
                while stream.outbox and not stream.room.is_set():  # flow control: the instance reads slower
                    await stream.room.wait()
                stream.post(len(parts[0]) + len(body) + len(parts[2]), parts)
                posted = True
                reply = await future
        except TimeoutError:
            self._forget(stream, call_id, posted)
            raise _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            self._forget(stream, call_id, posted)
            raise
        except StreamUnsupported:
            self.calls_sent -= 1  # it goes unary instead
            raise
        if reply.code == 0:
            return reply.body, metadata_of(reply.trailing_metadata)
        raise _status(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message,
                      metadata_of(reply.trailing_metadata))

    def _forget(self, stream: _Stream, call_id: int, posted: bool) -> None:
        """The caller gave up: tell the instance to stop the call (it may be running there)."""
        if stream.pending.pop(call_id, None) is not None and posted and self._stream is stream:
            stream.post(*_cancel_entry(call_id))

    def _start(self) -> _Stream:
        stream = self._stream = _Stream(self._open_call())
        loop = asyncio.get_running_loop()
        stream.reader = loop.create_task(self._read(stream), name=f"instance-stream reader {self.address}")
        stream.writer = loop.create_task(self._write(stream), name=f"instance-stream writer {self.address}")
        for task in (stream.reader, stream.writer):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return stream

    async def _write(self, stream: _Stream) -> None:
        """Send what the outbox holds, as few messages as the batch limit allows."""
        outbox = stream.outbox
        try:
            # A runtime serving the stream answers the open with its marker header; an instance
            # without the service answers UNIMPLEMENTED (trailers only) instead. Nothing is
            # written before: a write racing that answer would turn it into an INTERNAL error.
            opened = await stream.call.initial_metadata()
            if not any(key == STREAM_HEADER for key, _ in opened or ()):
                if self.usable():
                    self._unsupported_until = self._clock() + REPROBE_S
                    log.info("instance at %s does not serve %s; sending it unary calls", self.address, CALLS_PATH)
                stream.call.cancel()
                return
            while True:
                if not outbox:
                    stream.wake.clear()
                    await stream.wake.wait()
                    continue
                message, total = take_batch(outbox, self._max_batch_bytes)
                stream.outbox_bytes -= total
                if stream.outbox_bytes < OUTBOX_BYTES:
                    stream.room.set()
                await stream.call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the stream ended: its reader fails the calls in flight with the stream's verdict

    async def _read(self, stream: _Stream) -> None:
        failure: Exception
        try:
            while True:
                batch = await stream.call.read()
                if batch is grpc.aio.EOF:
                    break
                pending = stream.pending
                for reply in batch.replies:
                    future = pending.pop(reply.id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
            failure = _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} ended")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED and self.usable():
                self._unsupported_until = self._clock() + REPROBE_S
                log.info("instance at %s does not serve %s; sending it unary calls", self.address, CALLS_PATH)
            if not self.usable():  # UNIMPLEMENTED, or the writer found no marker on the open
                failure = StreamUnsupported(self.address)
            else:
                failure = _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} broke: "
                                  f"{error.code().name}: {error.details()}")
        except asyncio.CancelledError:
            failure = (StreamUnsupported(self.address) if not self.usable() else
                       _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} was closed"))
            raise
        finally:
            if self._stream is stream:
                self._stream = None
            pending, stream.pending = stream.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(failure)
            stream.room.set()  # callers waiting for room find the stream gone
            if stream.writer is not None:
                stream.writer.cancel()
            stream.call.cancel()

    async def close(self) -> None:
        """End the stream and wait for its reader and writer."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _cancel_entry(call_id: int) -> tuple[int, tuple[bytes, ...]]:
    parts = entry(spb.CallFrame(id=call_id, cancel=True).SerializeToString())
    return len(parts[0]) + len(parts[1]), parts
