"""The model-runtime SPI that `meshserve agent` serves to the fabric, in front of a remote runtime.

The fabric calls an instance's SPI at its record's `address`: the cache miss asks it to
load, the controller and the management API to unload. For an instance seated by
`meshserve agent` that address is the agent's own port, so every load goes through the
agent's `RemoteModels`: room is made by LRU eviction (unloading over the SPI), the bytes
are reserved, the runtime is asked, and the size is recorded; the agent's lifecycle
observers then update the model record and publish the instance record, exactly as for
an in-process runtime.

- `loadModel` / `unloadModel`: through `RemoteModels` (ordering, capacity, eviction);
- `predictModelSize`: the runtime's answer (or its default model size);
- `modelSize`: the size this agent holds the copy at;
- `runtimeStatus`: the runtime's answer, with the capacity this agent enforces, and
  STARTING until the agent is ready (it waits for the runtime and purges it first).

Errors keep the runtime's status codes (`mesh.instance.remote.runtime_error` turns them
into the runtime's errors, and `runtimes.grpc_servicers.mapped_errors` back into codes,
through the runtime's one table).
"""

from __future__ import annotations

import asyncio

import grpc

from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from mesh.instance.remote import RemoteModels, runtime_error
from runtimes.grpc_servicers import mapped_errors

__all__ = ["AgentRuntimeServicer"]


class AgentRuntimeServicer(rt_grpc.ModelRuntimeServicer):
    """`mmesh.ModelRuntime` on the agent's port, over `models` (see the module docstring)."""

    def __init__(self, models: RemoteModels, ready: asyncio.Event) -> None:
        self._models = models
        self._ready = ready

    @mapped_errors
    async def loadModel(self, request, context):
        size = await self._models.load(request.modelId, request.modelType, request.modelPath, request.modelKey)
        return rt.LoadModelResponse(sizeInBytes=size, maxConcurrency=self._models.max_concurrency.get(request.modelId, 0),
                                    deviceSizeInBytes=self._models.device_size_of(request.modelId))

    @mapped_errors
    async def unloadModel(self, request, context):
        await self._models.unload(request.modelId)
        return rt.UnloadModelResponse()

    @mapped_errors
    async def predictModelSize(self, request, context):
        size = await self._models.predict(request.modelId, request.modelType, request.modelPath, request.modelKey)
        return rt.PredictModelSizeResponse(sizeInBytes=size.host, deviceSizeInBytes=size.device)

    @mapped_errors
    async def modelSize(self, request, context):
        return rt.ModelSizeResponse(sizeInBytes=self._models.size_of(request.modelId),
                                    deviceSizeInBytes=self._models.device_size_of(request.modelId))

    @mapped_errors
    async def runtimeStatus(self, request, context):
        try:
            status = await self._models.status()
        except grpc.aio.AioRpcError as error:
            raise runtime_error(error, "", self._models.runtime_address) from None
        reply = rt.RuntimeStatusResponse()
        reply.CopyFrom(status)
        reply.capacityInBytes = self._models.capacity_bytes
        reply.deviceCapacityInBytes = self._models.device_capacity_bytes or 0
        if not self._ready.is_set() and reply.status == rt.RuntimeStatusResponse.READY:
            reply.status = rt.RuntimeStatusResponse.STARTING
        return reply
