"""meshserve.stream.v1.InferenceStream: many ModelInfer calls on one stream (a router's hop).

A router keeps one `Calls` stream open to this runtime and sends each ModelInfer it
forwards as a `CallFrame` (the request's bytes, a correlation id, the caller's headers and
time left); each is answered by a `ReplyFrame` of the same id, in the order calls finish.
Per call this takes the unary servicer's path (`InferenceServicer.ModelInfer`): the same
decode, `InferenceService.infer`, the same error-to-status mapping and the same
`modelmesh_invoke_model_milliseconds` observation; calls run concurrently, as unary calls
do, each bounded by its own deadline and stopped by a cancel frame or by the stream going
away. What this saves is the per-call cost of gRPC itself (a call's setup, headers, status).

Size limits are the unary ones, checked per call (RESOURCE_EXHAUSTED), so the server
allows frames a little over `max_message_bytes`; a reply larger than the router takes (its
`meshserve-max-reply-bytes` header on the open) fails alone, as the unary reply would at
the router, and no batch of replies exceeds it. `drain()` (at shutdown) answers new calls
UNAVAILABLE, so the router retries them elsewhere, lets those running finish, then ends
every stream, so that the server's stop is not held for its whole grace by open streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque

import grpc
from google.protobuf.message import DecodeError

from protos import grpc_service_pb2 as pb
from protos import meshserve_stream_pb2 as spb
from protos.stream_frames import entry, reply_entry, take_batch
from runtimes import converters
from runtimes.dataplane import InferenceService
from runtimes.errors import InvalidInput, MessageTooLarge, RuntimeError_
from runtimes.grpc_servicers import MODEL_ID_HEADER, status_of, trailers_of
from runtimes.metrics import RuntimeMetrics

__all__ = ["FRAME_MARGIN_BYTES", "InferenceStreamServicer", "add_to_server"]

log = logging.getLogger(__name__)

#: What a call's task is cancelled with when its deadline passes (its answer: DEADLINE_EXCEEDED).
_DEADLINE = "the call's deadline passed"
#: Room a frame needs beyond its request or reply (id, headers, deadline).
FRAME_MARGIN_BYTES = 1 << 20
SERVICE = "meshserve.stream.v1.InferenceStream"
#: The header a stream opens with: the router writes no call before it has seen it.
STREAM_HEADER = "meshserve-stream"
#: The header a router opens a stream with: the largest reply its channel takes (bytes).
MAX_REPLY_HEADER = "meshserve-max-reply-bytes"


class _CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InferenceStreamServicer:
    def __init__(self, service: InferenceService, metrics: RuntimeMetrics | None, max_message_bytes: int) -> None:
        self._service = service
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._draining = False
        self._calls: set[asyncio.Task] = set()  # every stream's calls running now
        self._idle = asyncio.Event()
        self._idle.set()
        self._drained = asyncio.Event()

    async def Calls(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        await context.send_initial_metadata(((STREAM_HEADER, "v1"),))  # the router writes once it sees this
        running: dict[int, asyncio.Task] = {}
        max_reply = min(self._max_message_bytes, _max_reply(context))
        replies = _Replies(context, max_reply + FRAME_MARGIN_BYTES)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            while True:
                batch = await context.read()
                if batch is grpc.aio.EOF:
                    return
                for frame in batch.calls:
                    if frame.cancel:
                        task = running.get(frame.id)
                        if task is not None:
                            task.cancel()
                    elif self._draining:
                        replies.post(*entry(_reply_error(frame.id, grpc.StatusCode.UNAVAILABLE,
                                                         "the runtime is shutting down")))
                    else:
                        task = loop.create_task(self._run(frame, replies, max_reply))
                        running[frame.id] = task
                        self._calls.add(task)
                        self._idle.clear()
                        task.add_done_callback(lambda done, call_id=frame.id: self._call_done(running, call_id, done))

        reader = loop.create_task(read(), name="stream-calls reader")
        writer = loop.create_task(replies.send(), name="stream-calls writer")
        drained = loop.create_task(self._drained.wait(), name="stream-calls drain")
        try:
            await asyncio.wait((reader, drained, writer), return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # the router half-closed: answer what it sent, then end
            while running and not writer.done():
                await asyncio.wait([*running.values(), writer], return_when=asyncio.FIRST_COMPLETED)
            await replies.flush(writer)
        finally:
            for task in (reader, drained, writer, *running.values()):
                task.cancel()  # the router went away: its calls go with it

    def _call_done(self, running: dict[int, asyncio.Task], call_id: int, task: asyncio.Task) -> None:
        if running.get(call_id) is task:
            del running[call_id]
        self._calls.discard(task)
        if not self._calls:
            self._idle.set()

    async def _run(self, frame: spb.CallFrame, replies: _Replies, max_reply: int) -> None:
        started = time.perf_counter()
        code = "OK"
        model_name = ""
        try:
            timeout = frame.timeout_us / 1e6 if frame.timeout_us else None
            # One timer that cancels this task, not an asyncio.timeout: that costs several times more.
            expiry = asyncio.get_running_loop().call_later(timeout, asyncio.current_task().cancel, _DEADLINE) \
                if timeout else None
            try:
                request, body = self._infer_bytes(frame, started + timeout if timeout else None)
                model_name = request.model_name
                body = await body
            except asyncio.CancelledError as cancelled:
                if cancelled.args != (_DEADLINE,):
                    raise  # a cancel frame, or the stream went away
                raise _CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            finally:
                if expiry is not None:
                    expiry.cancel()
            if len(body) > self._max_message_bytes:
                raise MessageTooLarge(f"the reply of model '{model_name}'", len(body), self._max_message_bytes)
            if len(body) > max_reply:  # what the router refuses of a unary reply
                raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the reply of model '{model_name}' of {len(body)} bytes is larger than max "
                                  f"({max_reply} bytes), the router's max_message_bytes")
            answer = reply_entry(frame.id, body)
        except _CallFailed as error:
            code = error.code.name
            answer = entry(_reply_error(frame.id, error.code, str(error)))
        except RuntimeError_ as error:
            status = status_of(error)
            code = status.name
            answer = entry(_reply_error(frame.id, status, str(error), trailers_of(error)))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as error:
            error_id = uuid.uuid4().hex[:12]
            log.error("internal error %s in ModelInfer (stream)", error_id, exc_info=error)
            code = "INTERNAL"
            answer = entry(_reply_error(frame.id, grpc.StatusCode.INTERNAL,
                                        f"internal error (id {error_id}); see the runtime's log"))
        finally:
            if self._metrics:
                self._metrics.observe_inference(model_name, code, time.perf_counter() - started)
        replies.post(*answer)

    def _infer_bytes(self, frame: spb.CallFrame, deadline: float | None):
        """(the decoded request, a coroutine of the reply's bytes), as the unary servicer does it."""
        body = frame.body  # a copy out of the batch, each time it is read
        if len(body) > self._max_message_bytes:
            raise MessageTooLarge("the request", len(body), self._max_message_bytes)
        try:
            request = pb.ModelInferRequest.FromString(body)
        except DecodeError:
            raise _CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a ModelInferRequest") from None
        domain = converters.infer_request_from_proto(request)
        if not domain.model_id:
            domain.model_id = _header(frame, MODEL_ID_HEADER)
        domain.deadline = deadline
        return request, self._respond(domain)

    async def _respond(self, domain) -> bytes:
        return converters.infer_response_to_proto(await self._service.infer(domain)).SerializeToString()

    async def drain(self, timeout: float | None) -> None:
        """Refuse new calls, wait (at most `timeout`) for the running ones, end every stream."""
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("%d streamed calls still running at shutdown", len(self._calls))
        self._drained.set()


def _max_reply(context: grpc.aio.ServicerContext) -> int:
    """The largest reply the router takes, as it said when it opened the stream (else no limit of its own)."""
    for key, value in context.invocation_metadata() or ():
        if key == MAX_REPLY_HEADER and value.isdigit():
            return int(value)
    return 1 << 62


def _header(frame: spb.CallFrame, key: str) -> str:
    for header in frame.metadata:
        if header.key == key:
            return header.value
    raise InvalidInput("no model name in the request and no mm-model-id header")


def _reply_error(call_id: int, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()) -> bytes:
    return spb.ReplyFrame(id=call_id, code=code.value[0], message=message,
                          trailing_metadata=[spb.Header(key=k, value=v) for k, v in trailers]).SerializeToString()


class _Replies:
    """One stream's answers waiting to go: the writer sends all that wait as one ReplyBatch."""

    def __init__(self, context: grpc.aio.ServicerContext, max_batch_bytes: int) -> None:
        self._context = context
        self._max_batch_bytes = max_batch_bytes
        self._outbox: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # nothing posted is still waiting or being written
        self._written.set()

    def post(self, *parts: bytes) -> None:
        self._outbox.append((sum(len(p) for p in parts), parts))
        self._written.clear()
        self._wake.set()

    async def send(self) -> None:
        outbox = self._outbox
        while True:
            if not outbox:
                self._written.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            message, _ = take_batch(outbox, self._max_batch_bytes)
            await self._context.write(message)

    async def flush(self, writer: asyncio.Task) -> None:
        """Wait until every posted answer is written (or the writer is gone)."""
        if writer.done() or self._written.is_set():
            return
        written = asyncio.get_running_loop().create_task(self._written.wait())
        try:
            await asyncio.wait((written, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            written.cancel()


def add_to_server(servicer: InferenceStreamServicer, server: grpc.aio.Server) -> None:
    """Registered as a generic handler: answers go out as bytes batched by hand (`protos.stream_frames`)."""
    handler = grpc.stream_stream_rpc_method_handler(servicer.Calls, request_deserializer=spb.CallBatch.FromString,
                                                    response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Calls": handler}),))
