"""The management API (mmesh.ModelMesh) on a real gRPC server, over a real etcd.

`FakeInstance` is a real gRPC `mmesh.ModelRuntime` server that publishes its
`InstanceRecord` under a lease and records its copies in the model records, as the
instance agent does, without loading real models (the controller tests use it too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.domain.timings import FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.api.model_mesh import ModelMeshServicer
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.state.vmodels import VModels
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support.fake_instance import FakeInstance

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

S = mm.ModelStatusInfo
V = mm.VModelStatusInfo
# A sync wait without a deadline is bounded by the loading timeout: 20 s keeps a hung test short.
TIMINGS = FabricTimings(loading_timeout_ms=20_000, failure_expiry_ms=60_000)

@dataclass
class Api:
    stub: mm_grpc.ModelMeshStub
    view: FabricView
    registry: Registry
    servicer: ModelMeshServicer
    instances: list[FakeInstance]
    client: EtcdClient
    keys: Keys

    async def instance(self, instance_id: str, **kw) -> FakeInstance:
        inst = await FakeInstance(self.client, self.keys, instance_id, **kw).start()
        self.instances.append(inst)
        await self.view.wait_for(lambda: self.view.instance(instance_id), 10)
        return inst


async def _api(client: EtcdClient, keys: Keys) -> AsyncIterator[Api]:
    view = FabricView(client, keys)
    await view.start()
    await view.wait_ready(10)
    runtimes = RuntimeClients()
    registry = Registry(client, keys)
    cache_miss = CacheMiss(client, keys, view, runtimes, MissConfig(timings=TIMINGS))
    servicer = ModelMeshServicer(registry, view, cache_miss, VModels(client, keys, registry), runtimes,
                                 timings=TIMINGS)
    server = grpc.aio.server()
    mm_grpc.add_ModelMeshServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    api = Api(mm_grpc.ModelMeshStub(channel), view, registry, servicer, [], client, keys)
    try:
        yield api
    finally:
        await channel.close()
        await server.stop(None)
        await servicer.close()
        await cache_miss.close()
        for inst in api.instances:
            await inst.close()
        await runtimes.close()
        await view.close()


@pytest.fixture
async def api(etcd, keys) -> AsyncIterator[Api]:
    async for made in _api(etcd, keys):
        yield made


def _info(model_id: str = "m", **kw) -> mm.RegisterModelRequest:
    return mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=f"s3://b/{model_id}"), **kw)


async def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details()


async def test_register_status_and_unregister(api):
    info = await api.stub.registerModel(_info())
    assert info.status == S.NOT_LOADED
    assert (await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m"))).status == S.NOT_LOADED
    # Same model again: idempotent; a different one under the same id: ALREADY_EXISTS.
    assert (await api.stub.registerModel(_info())).status == S.NOT_LOADED
    other = mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="onnx", path="s3://b/other"))
    code, message = await _code(api.stub.registerModel(other))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already registered" in message
    await api.stub.unregisterModel(mm.UnregisterModelRequest(modelId="m"))
    assert (await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m"))).status == S.NOT_FOUND


async def test_bad_input_and_unknown_models(api):
    code, message = await _code(api.stub.registerModel(mm.RegisterModelRequest(modelId="m")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo is required" in message
    code, message = await _code(api.stub.registerModel(
        mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(path="s3://b/m"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo.type" in message
    code, message = await _code(api.stub.registerModel(
        mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="onnx", path="p", key="{nope"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo.key must be a JSON object" in message
    for bad, why in (("a/b", "must not contain '/'"), ("a\x01b", "control characters"), ("", "modelId is required")):
        code, message = await _code(api.stub.registerModel(_info(bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and why in message, (bad, message)
    code, _ = await _code(api.stub.getModelStatus(mm.GetStatusRequest(modelId="x/y")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, message = await _code(api.stub.ensureLoaded(mm.EnsureLoadedRequest(modelId="ghost", sync=True)))
    assert code == grpc.StatusCode.NOT_FOUND and "'ghost' is not registered" in message
    code, _ = await _code(api.stub.unregisterModel(mm.UnregisterModelRequest(modelId="ghost")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = await _code(api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="ghost")))
    assert code == grpc.StatusCode.NOT_FOUND and "ghost" in message
    await api.stub.registerModel(_info("m"))
    code, message = await _code(api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m", updateOnly=True)))
    assert code == grpc.StatusCode.NOT_FOUND and "updateOnly" in message
    code, message = await _code(api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m",
                                                                       autoDeleteTargetModel=True)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo" in message
    assert (await api.stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId="v"))).status == V.NOT_FOUND


async def test_load_now_sync_loads_and_unregister_unloads(api):
    inst = await api.instance("i1")
    info = await api.stub.registerModel(_info(loadNow=True, sync=True), timeout=20)
    assert info.status == S.LOADED
    assert [(c.location, c.copyStatus) for c in info.modelCopyInfos] == [("i1", S.LOADED)]
    assert inst.loads == ["m"]
    # Already loaded: ensureLoaded answers at once without another load.
    assert (await api.stub.ensureLoaded(mm.EnsureLoadedRequest(modelId="m", sync=True), timeout=20)).status == S.LOADED
    assert inst.loads == ["m"]
    await api.stub.unregisterModel(mm.UnregisterModelRequest(modelId="m"))
    await api.view.wait_for(lambda: "m" not in api.view.instance("i1").copies, 10)
    assert inst.unloads == ["m"]


async def test_failed_load_is_reported_as_loading_failed(api):
    await api.instance("i1", fail={"bad": "model file is corrupt"})
    await api.stub.registerModel(_info("bad"))
    info = await api.stub.ensureLoaded(mm.EnsureLoadedRequest(modelId="bad", sync=True), timeout=20)
    assert info.status == S.LOADING_FAILED
    assert any("model file is corrupt" in e for e in info.errors), info.errors


async def test_load_now_without_sync_loads_in_the_background(api):
    inst = await api.instance("i1")
    inst.gate = asyncio.Event()
    await api.stub.registerModel(_info(loadNow=True))

    async def status():
        return (await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m"))).status

    await api.view.wait_for(lambda: api.view.model("m") and api.view.model("m").copies, 10)
    assert await status() == S.LOADING
    inst.gate.set()
    await api.view.wait_for(lambda: api.view.loaded_on("m"), 10)
    assert await status() == S.LOADED


async def test_vmodels_through_the_api(api):
    await api.instance("i1")
    await api.stub.registerModel(_info("m1"))
    made = await api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m1", owner="o", sync=True),
                                    timeout=20)
    assert (made.status, made.activeModelId, made.owner) == (V.DEFINED, "m1", "o")
    assert made.activeModelStatus.status == S.LOADED
    # sync: the new target is loaded and the vmodel switched before the answer.
    moved = await api.stub.setVModel(mm.SetVModelRequest(
        vModelId="v", targetModelId="m2", modelInfo=mm.ModelInfo(type="onnx", path="s3://b/m2"),
        autoDeleteTargetModel=True, sync=True, expectedTargetModelId="m1", owner="o"), timeout=20)
    assert (moved.status, moved.activeModelId, moved.targetModelId) == (V.DEFINED, "m2", "m2")
    code, message = await _code(api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m1",
                                                                       expectedTargetModelId="m1")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "expected" in message
    code, _ = await _code(api.stub.deleteVModel(mm.DeleteVModelRequest(vModelId="v", owner="intruder")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, message = await _code(api.stub.unregisterModel(mm.UnregisterModelRequest(modelId="m2")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "vmodel" in message
    await api.stub.deleteVModel(mm.DeleteVModelRequest(vModelId="v", owner="o"))
    assert (await api.stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId="v"))).status == V.NOT_FOUND
    assert (await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m2"))).status == S.NOT_FOUND  # auto-deleted
    assert (await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m1"))).status != S.NOT_FOUND


async def test_etcd_unreachable_is_unavailable_with_a_message(private_etcd, private_client, keys):
    async for api in _api(private_client, keys):
        await api.stub.registerModel(_info())
        await private_etcd.astop()
        code, message = await _code(api.stub.getModelStatus(mm.GetStatusRequest(modelId="m"), timeout=20))
        assert code == grpc.StatusCode.UNAVAILABLE and "etcd is unreachable" in message
        code, _ = await _code(api.stub.registerModel(_info("m2"), timeout=20))
        assert code == grpc.StatusCode.UNAVAILABLE
        await private_etcd.astart()
        info = await api.stub.getModelStatus(mm.GetStatusRequest(modelId="m"), timeout=20, wait_for_ready=True)
        assert info.status == S.NOT_LOADED


async def test_registrations_with_bad_names_or_paths_are_refused_and_write_nothing(api):
    before = (await api.client.get_prefix(api.keys.prefix))[1]
    cases = [
        (api.stub.registerModel(_info("../escape")), "modelId"),
        (api.stub.registerModel(_info("a b")), "modelId"),
        (api.stub.registerModel(_info("x" * 257)), "modelId is longer than 256"),
        (api.stub.registerModel(mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(
            type="onnx", path="s3://bucket/../other"))), "modelInfo.path must not contain '..'"),
        (api.stub.registerModel(mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(
            type="onnx", path="gs://bucket/m"))), "modelInfo.path has an unsupported scheme 'gs://'"),
        (api.stub.registerModel(mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(
            type="onnx\n", path="s3://b/m"))), "modelInfo.type must not contain control characters"),
        (api.stub.setVModel(mm.SetVModelRequest(vModelId="v:../x", targetModelId="m", modelInfo=mm.ModelInfo(
            type="onnx", path="s3://b/m"))), "vModelId"),
        (api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId=".hidden", modelInfo=mm.ModelInfo(
            type="onnx", path="s3://b/m"))), "targetModelId"),
        (api.stub.setVModel(mm.SetVModelRequest(vModelId="v", targetModelId="m", modelInfo=mm.ModelInfo(
            type="onnx", path="file:///models/%2e%2e/etc"))), "modelInfo.path must not contain '..'"),
    ]
    for call, why in cases:
        code, message = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and why in message, (why, message)
    assert (await api.client.get_prefix(api.keys.prefix))[1] == before
    # modelmesh-serving's concrete ids and Kubernetes names register.
    for model_id in ("example-sklearn-isvc__isvc-3642375d03", "mnist.v2"):
        assert (await api.stub.registerModel(_info(model_id))).status == S.NOT_LOADED
