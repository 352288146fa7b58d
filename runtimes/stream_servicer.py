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
allows frames a little over `max_message_bytes`. `drain()` (at shutdown) answers new calls
UNAVAILABLE, so the router retries them elsewhere, lets those running finish, then ends
every stream, so that the server's stop is not held for its whole grace by open streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc
from google.protobuf.message import DecodeError

from protos import grpc_service_pb2 as pb
from protos import meshserve_stream_pb2 as spb
from protos import meshserve_stream_pb2_grpc as spb_grpc
from runtimes import converters
from runtimes.dataplane import InferenceService
from runtimes.errors import InvalidInput, RuntimeError_
from runtimes.grpc_servicers import MODEL_ID_HEADER, status_of
from runtimes.metrics import RuntimeMetrics

__all__ = ["FRAME_MARGIN_BYTES", "InferenceStreamServicer", "add_to_server"]

log = logging.getLogger(__name__)

#: Room a frame needs beyond its request or reply (id, headers, deadline).
FRAME_MARGIN_BYTES = 1 << 20
_OK = grpc.StatusCode.OK.value[0]


class _CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InferenceStreamServicer(spb_grpc.InferenceStreamServicer):
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
        running: dict[int, asyncio.Task] = {}
        write_lock = asyncio.Lock()

        async def reply(frame: bytes) -> None:
            async with write_lock:
                await context.write(frame)

        async def read() -> None:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF:
                    return
                if frame.cancel:
                    task = running.get(frame.id)
                    if task is not None:
                        task.cancel()
                    continue
                if self._draining:
                    await reply(_reply_error(frame.id, grpc.StatusCode.UNAVAILABLE, "the runtime is shutting down"))
                    continue
                task = asyncio.get_running_loop().create_task(self._run(frame, reply))
                running[frame.id] = task
                self._calls.add(task)
                self._idle.clear()
                task.add_done_callback(lambda done, call_id=frame.id: self._call_done(running, call_id, done))

        reader = asyncio.get_running_loop().create_task(read(), name="stream-calls reader")
        drained = asyncio.get_running_loop().create_task(self._drained.wait(), name="stream-calls drain")
        try:
            await asyncio.wait((reader, drained), return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # the router half-closed: answer what it sent, then end
            while running:
                await asyncio.wait(list(running.values()))
        finally:
            reader.cancel()
            drained.cancel()
            for task in list(running.values()):
                task.cancel()  # the router went away: its calls go with it

    def _call_done(self, running: dict[int, asyncio.Task], call_id: int, task: asyncio.Task) -> None:
        if running.get(call_id) is task:
            del running[call_id]
        self._calls.discard(task)
        if not self._calls:
            self._idle.set()

    async def _run(self, frame: spb.CallFrame, reply) -> None:
        started = time.perf_counter()
        code = "OK"
        model_name = ""
        try:
            timeout = frame.timeout_us / 1e6 if frame.timeout_us else None
            try:
                async with asyncio.timeout(timeout):
                    request, body = self._infer_bytes(frame)
                    model_name = request.model_name
                    body = await body
            except TimeoutError:
                raise _CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            if len(body) > self._max_message_bytes:
                raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"Sent message larger than max ({len(body)} vs. {self._max_message_bytes})")
            answer = _reply_ok(frame.id, body)
        except _CallFailed as error:
            code = error.code.name
            answer = _reply_error(frame.id, error.code, str(error))
        except RuntimeError_ as error:
            status = status_of(error)
            code = status.name
            answer = _reply_error(frame.id, status, str(error))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as error:
            error_id = uuid.uuid4().hex[:12]
            log.error("internal error %s in ModelInfer (stream)", error_id, exc_info=error)
            code = "INTERNAL"
            answer = _reply_error(frame.id, grpc.StatusCode.INTERNAL,
                                  f"internal error (id {error_id}); see the runtime's log")
        finally:
            if self._metrics:
                self._metrics.observe_inference(model_name, code, time.perf_counter() - started)
        await reply(answer)

    def _infer_bytes(self, frame: spb.CallFrame):
        """(the decoded request, a coroutine of the reply's bytes), as the unary servicer does it."""
        if len(frame.body) > self._max_message_bytes:
            raise _CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"Received message larger than max ({len(frame.body)} vs. {self._max_message_bytes})")
        try:
            request = pb.ModelInferRequest.FromString(frame.body)
        except DecodeError:
            raise _CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a ModelInferRequest") from None
        domain = converters.infer_request_from_proto(request)
        if not domain.model_id:
            domain.model_id = _header(frame, MODEL_ID_HEADER)
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


def _header(frame: spb.CallFrame, key: str) -> str:
    for header in frame.metadata:
        if header.key == key:
            return header.value
    raise InvalidInput("no model name in the request and no mm-model-id header")


def _reply_ok(call_id: int, body: bytes) -> spb.ReplyFrame:
    return spb.ReplyFrame(id=call_id, body=body, code=_OK)


def _reply_error(call_id: int, code: grpc.StatusCode, message: str) -> spb.ReplyFrame:
    return spb.ReplyFrame(id=call_id, code=code.value[0], message=message)


def add_to_server(servicer: InferenceStreamServicer, server: grpc.aio.Server) -> None:
    spb_grpc.add_InferenceStreamServicer_to_server(servicer, server)
