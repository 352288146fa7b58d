"""Calls to instances' model-runtime SPI (`mmesh.ModelRuntime`) from the placement layer.

One channel per instance address, shared by every caller in the process and closed when
the instance leaves (`forget`) or the client closes; over TLS when given a `ClientTls`. Errors come back as `grpc.aio.AioRpcError`
with the instance's status code and message; callers decide what a code means.
"""

from __future__ import annotations

import grpc

from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from protos.limits import DEFAULT_MAX_MESSAGE_BYTES
from protos.tls import ClientTls, aio_channel
from mesh.domain.records import ModelRecord
from mesh.aio.tasks import AsyncClosing

__all__ = ["RuntimeClients"]


class RuntimeClients(AsyncClosing):
    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls: ClientTls | None = None) -> None:
        self._tls = tls
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes)]
        self._channels: dict[str, tuple[grpc.aio.Channel, rt_grpc.ModelRuntimeStub]] = {}

    def stub(self, address: str) -> rt_grpc.ModelRuntimeStub:
        found = self._channels.get(address)
        if found is None:
            channel = aio_channel(address, self._options, self._tls)
            found = self._channels[address] = (channel, rt_grpc.ModelRuntimeStub(channel))
        return found[1]

    async def load(self, address: str, record: ModelRecord, timeout: float) -> rt.LoadModelResponse:
        """Ask the instance at `address` to load the model; returns when it is loaded."""
        request = rt.LoadModelRequest(modelId=record.model_id, modelType=record.model_type,
                                      modelPath=record.storage_path, modelKey=record.storage_key)
        return await self.stub(address).loadModel(request, timeout=timeout)

    async def unload(self, address: str, model_id: str, timeout: float) -> None:
        await self.stub(address).unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=timeout)

    async def forget(self, address: str) -> None:
        found = self._channels.pop(address, None)
        if found is not None:
            await found[0].close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close()
