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
- an instance without the service answers the open UNIMPLEMENTED: its calls in flight raise
  `StreamUnsupported` (none ran), the caller sends them unary, and so does every call to
  that instance for `REPROBE_S`, after which one call tries the stream again.

Writes on one stream are serialized (gRPC allows one message in flight per direction), so
a slow reader at the instance holds callers back as HTTP/2 flow control does a unary call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence

import grpc

from protos import meshserve_stream_pb2 as spb

__all__ = ["CALLS_PATH", "FRAME_MARGIN_BYTES", "InstanceStream", "StreamUnsupported"]

log = logging.getLogger(__name__)

CALLS_PATH = "/meshserve.stream.v1.InferenceStream/Calls"
#: A frame is its request plus its id, headers and deadline; the stream's channel allows this
#: much over the largest request so that any request a unary call could carry fits one frame.
FRAME_MARGIN_BYTES = 1 << 20
#: How long an instance that answered UNIMPLEMENTED gets unary calls before the stream is tried again.
REPROBE_S = 60.0

Metadata = Sequence[tuple[str, str | bytes]]


class StreamUnsupported(Exception):
    """The instance does not serve the stream; the call did not run there."""


def _status(code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def headers(metadata: Metadata | None) -> list[spb.Header]:
    out = []
    for key, value in metadata or ():
        if isinstance(value, bytes):
            out.append(spb.Header(key=key, binary_value=value))
        else:
            out.append(spb.Header(key=key, value=value))
    return out


def metadata_of(frame_headers) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((h.key, h.binary_value if h.key.endswith("-bin") else h.value) for h in frame_headers)


class _Stream:
    """One open Calls stream and the calls in flight on it."""

    __slots__ = ("call", "pending", "write_lock", "reader")

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future] = {}
        self.write_lock = asyncio.Lock()
        self.reader: asyncio.Task | None = None


class InstanceStream:
    """The stream to one instance (opened lazily, reopened after a break)."""

    def __init__(self, channel: grpc.aio.Channel, address: str, *, clock=time.monotonic) -> None:
        self.address = address
        self._open_call = channel.stream_stream(CALLS_PATH, request_serializer=spb.CallFrame.SerializeToString,
                                                response_deserializer=spb.ReplyFrame.FromString)
        self._clock = clock
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._unsupported_until = 0.0
        self._cancels: set[asyncio.Task] = set()
        self._readers: set[asyncio.Task] = set()
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
        frame = spb.CallFrame(id=call_id, body=body, timeout_us=max(int(timeout * 1e6), 1))
        if metadata:
            frame.metadata.extend(headers(metadata))
        try:
            async with asyncio.timeout(timeout):
                try:
                    async with stream.write_lock:
                        await stream.call.write(frame)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    pass  # the stream ended: its reader fails `future` with the stream's verdict
                reply = await future
        except TimeoutError:
            stream.pending.pop(call_id, None)
            self._cancel(stream, call_id)
            raise _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            if stream.pending.pop(call_id, None) is not None:
                self._cancel(stream, call_id)
            raise
        except StreamUnsupported:
            self.calls_sent -= 1  # it goes unary instead
            raise
        if reply.code == 0:
            return reply.body, metadata_of(reply.trailing_metadata)
        raise _status(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message,
                      metadata_of(reply.trailing_metadata))

    def _start(self) -> _Stream:
        stream = self._stream = _Stream(self._open_call())
        reader = stream.reader = asyncio.get_running_loop().create_task(
            self._read(stream), name=f"instance-stream {self.address}")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return stream

    async def _read(self, stream: _Stream) -> None:
        failure: Exception
        try:
            while True:
                reply = await stream.call.read()
                if reply is grpc.aio.EOF:
                    break
                future = stream.pending.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
            failure = _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} ended")
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unsupported_until = self._clock() + REPROBE_S
                log.info("instance at %s does not serve %s; sending it unary calls", self.address, CALLS_PATH)
                failure = StreamUnsupported(self.address)
            else:
                failure = _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} broke: "
                                  f"{error.code().name}: {error.details()}")
        except asyncio.CancelledError:
            failure = _status(grpc.StatusCode.UNAVAILABLE, f"the stream to instance {self.address} was closed")
            raise
        finally:
            if self._stream is stream:
                self._stream = None
            pending, stream.pending = stream.pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(failure)
            stream.call.cancel()

    def _cancel(self, stream: _Stream, call_id: int) -> None:
        """Tell the instance the caller went away (in the background: the caller is leaving)."""
        if stream.call.done():
            return

        async def send() -> None:
            try:
                async with stream.write_lock:
                    await stream.call.write(spb.CallFrame(id=call_id, cancel=True))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the stream is gone, and with it the call

        task = asyncio.get_running_loop().create_task(send(), name=f"instance-stream cancel {self.address}")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def close(self) -> None:
        """End the stream and wait for its reader (and cancel frames being sent)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()
        tasks = [*self._readers, *self._cancels]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
