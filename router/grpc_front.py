"""The V2 gRPC front: `inference.GRPCInferenceService` as raw bytes (no decoding).

`InferenceFront` is a `grpc.GenericRpcHandler` whose forwarded methods (ModelInfer,
ModelMetadata, ModelConfig, ModelReady, ModelStatistics) take and return serialized
bytes: it reads the routing headers, passes the rest of the caller's metadata on, calls
`DataPlane.forward` and hands back the instance's reply with its initial and trailing
metadata. ModelStreamInfer forwards each message of the stream that way
(`router.stream_front`). ServerLive, ServerReady and ServerMetadata are the router's own answers.

Errors are mapped once, here: a `RouterError` becomes its status code and message; an
instance's own error passes through unchanged; anything else is INTERNAL with an id
that appears in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import grpc

from protos import grpc_service_pb2 as pb
from router.call_metadata import budget as _budget, split_metadata as _split_metadata
from router.dataplane import DataPlane, method_path
from router.errors import InvalidRequest, RouterError, Unimplemented
from router.observed import CallObserver, observe_forward
from router.stream_front import stream_infer_handler

__all__ = ["FORWARDED_METHODS", "InferenceFront", "CallObserver"]

log = logging.getLogger(__name__)

FORWARDED_METHODS = ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics")
EXTENSIONS = ("model_configuration", "statistics")

class InferenceFront(grpc.GenericRpcHandler):
    def __init__(self, dataplane: DataPlane, *, ready: Callable[[], bool], version: str,
                 observer: CallObserver | None = None) -> None:
        self._dataplane = dataplane
        self._ready = ready
        self._observer = observer
        self._live = pb.ServerLiveResponse(live=True).SerializeToString()
        self._metadata = pb.ServerMetadataResponse(name="meshserve", version=version,
                                                   extensions=list(EXTENSIONS)).SerializeToString()
        handlers = {method_path(name): self._forwarder(name) for name in FORWARDED_METHODS}
        handlers[method_path("ModelStreamInfer")] = stream_infer_handler(dataplane, observer)
        handlers[method_path("ServerLive")] = self._own("ServerLive", self._server_live)
        handlers[method_path("ServerReady")] = self._own("ServerReady", self._server_ready)
        handlers[method_path("ServerMetadata")] = self._own("ServerMetadata", self._server_metadata)
        for name in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
            handlers[method_path(name)] = self._own(name, self._repository)
        self._handlers = handlers

    def service(self, handler_call_details):
        return self._handlers.get(handler_call_details.method)

    # -- forwarded ------------------------------------------------------------------------------
    def _forwarder(self, name: str) -> grpc.RpcMethodHandler:
        path = method_path(name)
        forward = self._dataplane.forward
        needs_name = name == "ModelStatistics"

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # Each outcome is counted before the client can see it (an abort sends the
            # status at once), so a scrape right after a call always includes it.
            started = time.perf_counter()
            model_header = vmodel_header = None
            try:
                metadata, model_header, vmodel_header, tried = _split_metadata(context.invocation_metadata())
                if needs_name and not body and model_header is None and vmodel_header is None:
                    raise InvalidRequest("ModelStatistics through the router needs a model name")
                reply = await forward(path, body, metadata, _budget(context.time_remaining()), model_header,
                                      vmodel_header, tried)
                if reply.initial_metadata:
                    await context.send_initial_metadata(reply.initial_metadata)
                if reply.trailing_metadata:
                    context.set_trailing_metadata(reply.trailing_metadata)
                self._observe_forward(name, "OK", started, body, reply.body, model_header, vmodel_header)
                return reply.body
            except RouterError as error:
                self._observe_forward(name, error.code, started, body, None, model_header, vmodel_header)
                await context.abort(grpc.StatusCode[error.code], str(error), error.trailing_metadata)
            except asyncio.CancelledError:
                self._observe_forward(name, "CANCELLED", started, body, None, model_header, vmodel_header)
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                error_id = uuid.uuid4().hex[:12]
                log.exception("internal error %s in %s", error_id, name)
                self._observe_forward(name, "INTERNAL", started, body, None, model_header, vmodel_header)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); see the router's log")

        return grpc.unary_unary_rpc_method_handler(handle)

    # -- answered here ----------------------------------------------------------------------------
    def _own(self, name: str, answer) -> grpc.RpcMethodHandler:
        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = time.perf_counter()
            try:
                reply = answer()
            except RouterError as error:
                self._observe(name, error.code, started)
                await context.abort(grpc.StatusCode[error.code], str(error))
            self._observe(name, "OK", started)
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)

    def _observe(self, method: str, code: str, started: float) -> None:
        if self._observer is not None:
            self._observer.observe_call(method, code, time.perf_counter() - started)

    def _observe_forward(self, method: str, code: str, started: float, body: bytes, reply: bytes | None,
                         model_header: str | None, vmodel_header: str | None) -> None:
        if self._observer is not None:
            observe_forward(self._observer, self._dataplane, method, code, started, body, reply, model_header,
                            vmodel_header)

    def _server_live(self) -> bytes:
        return self._live

    def _server_ready(self) -> bytes:
        return pb.ServerReadyResponse(ready=self._ready()).SerializeToString()

    def _server_metadata(self) -> bytes:
        return self._metadata

    def _repository(self) -> bytes:
        raise Unimplemented("model repository calls are not served by the router; register models "
                            "through the mmesh.ModelMesh API or the meshserve CLI")
