"""A stand-in instance for controller and management API tests: a real gRPC
ModelRuntime server that publishes an instance record under its own lease and updates
model-record claims the way the agent does, but holds no models, so tests can set
request rates, in-flight counts and failures that real traffic could not produce on cue.
End-to-end behaviour with real runtimes is covered by tests/mesh/test_fabric.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc

from mesh.etcd.client import EtcdClient
from mesh.etcd.session import LeaseSession
from mesh.etcd.keys import Keys
from mesh.domain.records import CopyClaim, HeldCopy, InstanceRecord, to_document
from mesh.state.registry import ModelNotRegistered, Registry
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc

MODEL_SIZE = 1 << 20


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeInstance(rt_grpc.ModelRuntimeServicer):
    """An instance of the fabric, minus the models: loads succeed (or fail with `fail[model]`)
    at once, or when `gate` is set; the instance record is published under its own lease."""

    def __init__(self, client: EtcdClient, keys: Keys, instance_id: str, *, capacity: int = 64 * MODEL_SIZE,
                 zone: str = "", fail: dict[str, str] | None = None) -> None:
        self.client, self.keys, self.id = client, keys, instance_id
        self.capacity, self.zone = capacity, zone
        self.fail = dict(fail or {})
        self.gate: asyncio.Event | None = None
        self.held: dict[str, HeldCopy] = {}
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.rates: dict[str, float] = {}
        self.registry = Registry(client, keys)
        self.server = grpc.aio.server()
        rt_grpc.add_ModelRuntimeServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.session: LeaseSession | None = None

    async def start(self) -> FakeInstance:
        await self.server.start()
        self.session = await LeaseSession(self.client, 5, name=self.id).__aenter__()
        await self.publish()
        return self

    async def publish(self, **overrides) -> None:
        copies = {m: dataclasses.replace(c, rate_per_min=self.rates.get(m, 0.0)) for m, c in self.held.items()}
        record = InstanceRecord(self.id, f"127.0.0.1:{self.port}", self.capacity,
                                used_bytes=sum(c.size_bytes for c in self.held.values()), zone=self.zone,
                                model_types=("onnx",), copies=copies, published_ms=now_ms(),
                                request_rate_per_min=sum(self.rates.values()), **overrides)
        await self.session.put(self.keys.instance(self.id), to_document(record))

    async def loadModel(self, request, context):
        if self.gate is not None:
            await self.gate.wait()
        self.loads.append(request.modelId)
        if request.modelId in self.fail:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.fail[request.modelId])
        self.held[request.modelId] = HeldCopy(MODEL_SIZE, now_ms())
        await self.publish()
        try:
            await self.registry.update(request.modelId, lambda r: dataclasses.replace(
                r, copies={**r.copies, self.id: CopyClaim("loaded", now_ms())}))
        except ModelNotRegistered:
            pass
        return rt.LoadModelResponse(sizeInBytes=MODEL_SIZE)

    async def unloadModel(self, request, context):
        self.unloads.append(request.modelId)
        if self.held.pop(request.modelId, None) is not None:
            await self.publish()
        try:
            await self.registry.update(request.modelId, lambda r: dataclasses.replace(
                r, copies={i: c for i, c in r.copies.items() if i != self.id}))
        except ModelNotRegistered:
            pass
        return rt.UnloadModelResponse()

    async def close(self) -> None:
        """Leave the fabric: the lease is revoked, so the record goes as if the lease expired."""
        if self.session is not None:
            await self.session.close()
        await self.server.stop(None)
