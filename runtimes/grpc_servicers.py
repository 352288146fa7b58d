"""gRPC adapters: convert, call the service, convert back. Errors are mapped once, here."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import NoReturn

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from protos.limits import BUSY_TRAILER, DEFAULT_MAX_MESSAGE_BYTES
from runtimes import converters
from runtimes.dataplane import InferenceService
from runtimes.errors import (
    Busy,
    CapacityExhausted,
    DeadlineExceeded,
    ModelTooLarge,
    InvalidInput,
    InvalidModel,
    LoadFailed,
    MessageTooLarge,
    ModelNotFound,
    ModelUnavailable,
    RuntimeError_,
)
from runtimes.metrics import RuntimeMetrics
from runtimes.model_manager import ModelManager

log = logging.getLogger(__name__)

STATUS_OF_ERROR: dict[type[RuntimeError_], grpc.StatusCode] = {
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidModel: grpc.StatusCode.INVALID_ARGUMENT,
    CapacityExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelTooLarge: grpc.StatusCode.FAILED_PRECONDITION,
    Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    MessageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
}
MODEL_ID_HEADER = "mm-model-id"


def status_of(error: RuntimeError_) -> grpc.StatusCode:
    if isinstance(error, LoadFailed):
        return grpc.StatusCode.UNAVAILABLE if error.retryable else grpc.StatusCode.FAILED_PRECONDITION
    for kind in type(error).__mro__:
        if kind in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[kind]
    return grpc.StatusCode.INTERNAL


def trailers_of(error: RuntimeError_) -> tuple[tuple[str, str], ...]:
    """The trailing metadata an error's status carries: backpressure is marked (`BUSY_TRAILER`)."""
    if isinstance(error, Busy):
        return ((BUSY_TRAILER, error.limit),)
    return ()


async def abort_for(error: Exception, context: grpc.aio.ServicerContext, handler_name: str) -> NoReturn:
    """End the call with the error's status: ours map to their codes, anything else is INTERNAL with an id in the log."""
    if isinstance(error, grpc.aio.AbortError):  # the handler already chose the status
        raise error
    if isinstance(error, RuntimeError_):
        await context.abort(status_of(error), str(error), trailers_of(error))
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s in %s", error_id, handler_name, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); see the runtime's log")


def mapped_errors(handler):
    """Turn a handler's errors into statuses with abort_for."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except Exception as error:
            await abort_for(error, context, handler.__name__)

    return wrapper


def _model_id(name: str, context: grpc.aio.ServicerContext) -> str:
    """The request's model name, or the mm-model-id header when the name is empty."""
    if name:
        return name
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID_HEADER:
            return value
    raise InvalidInput("no model name in the request and no mm-model-id header")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the transport-free InferenceService."""

    def __init__(self, service: InferenceService, manager: ModelManager, metrics: RuntimeMetrics | None,
                 ready: asyncio.Event, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._service = service
        self._max_message_bytes = max_message_bytes
        self._manager = manager
        self._metrics = metrics
        self._ready = ready

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._ready.is_set())

    @mapped_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._service.model_ready(_model_id(request.name, context)))

    async def ServerMetadata(self, request, context):
        name, version, extensions = self._service.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))

    @mapped_errors
    async def ModelMetadata(self, request, context):
        return converters.metadata_to_proto(self._service.signature(_model_id(request.name, context)))

    @mapped_errors
    async def ModelConfig(self, request, context):
        return converters.config_to_proto(self._service.signature(_model_id(request.name, context)))

    @mapped_errors
    async def ModelStatistics(self, request, context):
        return converters.statistics_to_proto(self._service.statistics(request.name))

    async def ModelInfer(self, request, context):
        # The hot path: one coroutine, with error mapping inline rather than through mapped_errors.
        started = time.perf_counter()
        code = "OK"
        try:
            domain = converters.infer_request_from_proto(request)
            domain.model_id = _model_id(domain.model_id, context)
            remaining = context.time_remaining()
            if remaining is not None:
                domain.deadline = started + remaining
            response = converters.infer_response_to_proto(await self._service.infer(domain))
            size = response.ByteSize()
            if size > self._max_message_bytes:  # grpc would refuse it with words of its own
                raise MessageTooLarge(f"the reply of model '{domain.model_id}'", size, self._max_message_bytes)
            return response
        except Exception as error:
            try:
                await abort_for(error, context, "ModelInfer")
            except grpc.aio.AbortError:
                code = (context.code() or grpc.StatusCode.UNKNOWN).name
                raise
        finally:
            if self._metrics:
                self._metrics.observe_inference(request.model_name or "", code, time.perf_counter() - started)

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            try:
                domain = converters.infer_request_from_proto(request)
                domain.model_id = _model_id(domain.model_id, context)
                response = converters.infer_response_to_proto(await self._service.infer(domain))
                yield pb.ModelStreamInferResponse(infer_response=response)
            except RuntimeError_ as error:
                yield pb.ModelStreamInferResponse(error_message=f"{status_of(error).name}: {error}")

    @mapped_errors
    async def RepositoryIndex(self, request, context):
        models = [pb.RepositoryIndexResponse.ModelIndex(name=m, version="1", state=e.state.value)
                  for m, e in sorted(self._manager.entries().items())]
        return pb.RepositoryIndexResponse(models=models)

    @mapped_errors
    async def RepositoryModelUnload(self, request, context):
        await self._manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


class ModelRuntimeServicer(rt_grpc.ModelRuntimeServicer):
    """mmesh.ModelRuntime: the SPI the placement layer drives."""

    # ModelMesh injects the model id into field 1 (model_name / name) of these methods.
    ID_INJECTED_METHODS = ("ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ModelStreamInfer")

    def __init__(self, manager: ModelManager, ready: asyncio.Event, version: str, loading_timeout_ms: int) -> None:
        self._manager = manager
        self._ready = ready
        self._version = version
        self._loading_timeout_ms = loading_timeout_ms

    @mapped_errors
    async def loadModel(self, request, context):
        size = await self._manager.load(request.modelId, request.modelType, request.modelPath, request.modelKey)
        return rt.LoadModelResponse(sizeInBytes=size, maxConcurrency=self._manager.config.max_concurrency,
                                    deviceSizeInBytes=self._manager.device_size_of(request.modelId))

    @mapped_errors
    async def unloadModel(self, request, context):
        await self._manager.unload(request.modelId)
        return rt.UnloadModelResponse()

    @mapped_errors
    async def predictModelSize(self, request, context):
        size = self._manager.predict_footprint(request.modelType, request.modelPath, request.modelKey)
        return rt.PredictModelSizeResponse(sizeInBytes=size.host, deviceSizeInBytes=size.device)

    @mapped_errors
    async def modelSize(self, request, context):
        return rt.ModelSizeResponse(sizeInBytes=self._manager.size_of(request.modelId),
                                    deviceSizeInBytes=self._manager.device_size_of(request.modelId))

    async def runtimeStatus(self, request, context):
        config = self._manager.config
        infos = {
            f"/inference.GRPCInferenceService/{method}": rt.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])
            for method in self.ID_INJECTED_METHODS
        }
        return rt.RuntimeStatusResponse(
            status=rt.RuntimeStatusResponse.READY if self._ready.is_set() else rt.RuntimeStatusResponse.STARTING,
            # What models may use: the SPI has no used bytes, so the backends' overhead comes off.
            capacityInBytes=max(self._manager.capacity_bytes - self._manager.backend_overhead_bytes, 0),
            deviceCapacityInBytes=max((self._manager.device_capacity_bytes or 0)
                                      - self._manager.device_overhead_bytes, 0),
            maxLoadingConcurrency=config.max_loading_concurrency,
            modelLoadingTimeoutMs=self._loading_timeout_ms,
            defaultModelSizeInBytes=config.default_model_size,
            runtimeVersion=self._version,
            methodInfos=infos,
            limitModelConcurrency=True,
            allowAnyMethod=False,
        )
