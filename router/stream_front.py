"""`ModelStreamInfer` through the router: a caller's stream of ModelInfer requests (raw bytes).

Each request on the stream names its model (field 1, or the stream's `mm-model-id` /
`mm-vmodel-id` header) and is forwarded on its own, as a ModelInfer call
(`DataPlane.forward`: its own copy, retries and deadline), so one stream may mix models.
Up to `WINDOW` requests of one stream are forwarded at once; answers go back in the order
the requests came, each a `ModelStreamInferResponse` framed around the instance's reply
bytes (never decoded). A request that fails answers with `error_message` ("<CODE>:
<message>", as the runtime's own stream does) and the stream goes on, as Triton's does;
only the caller ending or cancelling the stream ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from router.call_metadata import budget, split_metadata
from router.dataplane import DataPlane, method_path
from router.errors import RouterError
from router.observed import CallObserver, observe_forward
from protos.stream_frames import encode_varint

__all__ = ["WINDOW", "stream_infer_handler"]

log = logging.getLogger(__name__)

#: Requests of one stream forwarded at once; the caller's further requests wait (flow control).
WINDOW = 64
_INFER = method_path("ModelInfer")
_METHOD = "ModelStreamInfer"


def infer_response(reply: bytes) -> bytes:
    """A ModelStreamInferResponse holding `reply` (a serialized ModelInferResponse) as field 2."""
    return b"".join((b"\x12", encode_varint(len(reply)), reply))


def error_response(message: str) -> bytes:
    """A ModelStreamInferResponse whose error_message (field 1) is `message`."""
    encoded = message.encode("utf-8")
    return b"".join((b"\x0a", encode_varint(len(encoded)), encoded))


def stream_infer_handler(dataplane: DataPlane, observer: CallObserver | None) -> grpc.RpcMethodHandler:
    async def one(body: bytes, metadata, timeout: float | None, model_header, vmodel_header) -> bytes:
        started = time.perf_counter()
        try:
            reply = await dataplane.forward(_INFER, body, metadata, timeout, model_header, vmodel_header)
        except RouterError as error:
            if observer is not None:
                observe_forward(observer, dataplane, _METHOD, error.code, started, body, None, model_header,
                                vmodel_header)
            return error_response(f"{error.code}: {error}")
        except asyncio.CancelledError:
            if observer is not None:
                observe_forward(observer, dataplane, _METHOD, "CANCELLED", started, body, None, model_header,
                                vmodel_header)
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s in %s", error_id, _METHOD)
            if observer is not None:
                observe_forward(observer, dataplane, _METHOD, "INTERNAL", started, body, None, model_header,
                                vmodel_header)
            return error_response(f"INTERNAL: internal error (id {error_id}); see the router's log")
        if observer is not None:
            observe_forward(observer, dataplane, _METHOD, "OK", started, body, reply.body, model_header,
                            vmodel_header)
        return infer_response(reply.body)

    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata, model_header, vmodel_header, _ = split_metadata(context.invocation_metadata())
        loop = asyncio.get_running_loop()
        # In order of arrival: each request's answer (a task), then None once the caller is done.
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(WINDOW)

        async def read() -> None:
            async for body in requests:
                task = loop.create_task(one(body, metadata, budget(context.time_remaining()), model_header,
                                            vmodel_header))
                await answers.put(task)
            await answers.put(None)

        reader = loop.create_task(read(), name="router ModelStreamInfer reader")
        try:
            while True:
                getting = loop.create_task(answers.get())
                await asyncio.wait((getting, reader), return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():  # the reader ended without its None: the caller's stream broke
                    getting.cancel()
                    reader.result()
                    return
                task = getting.result()
                if task is None:
                    return
                yield await task
        finally:
            reader.cancel()
            while not answers.empty():
                task = answers.get_nowait()
                if task is not None:
                    task.cancel()

    return grpc.stream_stream_rpc_method_handler(handle)
