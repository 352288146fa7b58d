"""The router under failure: a dead instance, a slow load, etcd gone, retries exhausted."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.records import ModelRecord
from mesh.etcd.keys import Keys
from mesh.state.registry import Registry
from protos import grpc_service_pb2 as pb
from tests.router.conftest import NeverLoads, _make_client, _start_pair, open_fabric

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _infer(address: str, model: str = "add", **kwargs) -> np.ndarray:
    x = np.ones((1, 4), dtype=np.float32)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(address) as client:
        return client.infer(model, [tensor], **kwargs).as_numpy("y")


@pytest.fixture
def doomed_runtimes(tmp_path_factory, model_store):
    """A pair of runtimes of the test's own (one will be killed)."""
    pair = _start_pair(tmp_path_factory, model_store)
    yield pair
    for runtime in pair:
        if runtime.process.poll() is None:
            runtime.stop()


async def test_calls_survive_an_instance_dying(fabric, doomed_runtimes, router_factory):
    await fabric.publish("a", doomed_runtimes[0], ["add"])
    await fabric.publish("b", doomed_runtimes[1], ["add"])
    running = await router_factory(fabric.view, None)
    address = f"127.0.0.1:{running.port}"
    for _ in range(4):  # both copies in use
        assert (await asyncio.to_thread(_infer, address)).tolist() == [[2.0] * 4]
    doomed_runtimes[0].process.kill()
    doomed_runtimes[0].process.wait(10)
    # The record still lists the dead instance (its lease has not expired): every call
    # must still succeed, retried on the other copy.
    for _ in range(6):
        assert (await asyncio.to_thread(_infer, address)).tolist() == [[2.0] * 4]
    assert "a" in fabric.view.loaded_on("add")


async def test_retries_are_bounded(fabric, doomed_runtimes, router_factory):
    """Every copy dead and no loader: UNAVAILABLE naming the model and the last failure."""
    await fabric.publish("a", doomed_runtimes[0], ["add"])
    await fabric.publish("b", doomed_runtimes[1], ["add"])
    running = await router_factory(fabric.view, None, max_tries=2)
    for runtime in doomed_runtimes:
        runtime.process.kill()
        runtime.process.wait(10)
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer, f"127.0.0.1:{running.port}")
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "'add'" in caught.value.message() and "2 tries" in caught.value.message()


async def test_slow_load_gives_deadline_exceeded_with_a_message(fabric, router_factory):
    loader = NeverLoads()
    running = await router_factory(fabric.view, loader, default_deadline_s=0.3)
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer, f"127.0.0.1:{running.port}", "cold-model")
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "cold-model" in caught.value.message() and "not loaded" in caught.value.message()
    assert len(loader.timeouts) == 1 and 0 < loader.timeouts[0] <= 0.3


async def test_the_callers_deadline_bounds_the_load(fabric, router_factory):
    loader = NeverLoads()
    running = await router_factory(fabric.view, loader, default_deadline_s=60)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.ModelInferRequest(model_name="cold").SerializeToString(), timeout=2.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The loader was given what was left of the caller's 2 s, not the router's 60 s default.
    assert len(loader.timeouts) == 1 and loader.timeouts[0] <= 2.0


async def test_routing_goes_on_while_etcd_is_down(private_etcd, runtimes, router_factory):
    client = _make_client(private_etcd)
    fabric = await open_fabric(client, Keys(fabric="down"))
    running = None
    try:
        await fabric.publish("i0", runtimes[0], ["add"])
        await fabric.publish("i1", runtimes[1], ["add"])
        running = await router_factory(fabric.view, None)
        address = f"127.0.0.1:{running.port}"
        assert (await asyncio.to_thread(_infer, address)).tolist() == [[2.0] * 4]
        await private_etcd.astop()
        await fabric.view.wait_for(lambda: not fabric.view.in_sync, 10)
        for _ in range(6):
            assert (await asyncio.to_thread(_infer, address)).tolist() == [[2.0] * 4]

        def ready() -> bool:
            with grpcclient.InferenceServerClient(address) as probe:
                return probe.is_server_ready()

        assert await asyncio.to_thread(ready)  # it still serves from its last table
    finally:
        if running is not None:
            await running.stop(0)
        await fabric.view.close()
        await client.close()


async def test_a_cold_model_while_etcd_is_down_is_unavailable_not_internal(private_etcd, runtimes, router_factory,
                                                                            model_store):
    """Found by bench/soak.py: the load's claim cannot be written, and the router said INTERNAL."""
    client = _make_client(private_etcd)
    keys = Keys(fabric="down-miss")
    fabric = await open_fabric(client, keys)
    clients = RuntimeClients()
    cache_miss = CacheMiss(client, keys, fabric.view, clients, MissConfig())
    running = None
    try:
        await fabric.publish("i0", runtimes[0], ["add"], labels=("mt:onnx",))  # a runtime the claim could go to
        await Registry(client, keys).register(ModelRecord("cold", "onnx", str(model_store["add10"])))
        await fabric.view.wait_for(lambda: fabric.view.model("cold") is not None, 10)
        running = await router_factory(fabric.view, cache_miss)
        await private_etcd.astop()
        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(_infer, f"127.0.0.1:{running.port}", "cold")
        assert caught.value.status() == "StatusCode.UNAVAILABLE", caught.value.message()
        assert "'cold'" in caught.value.message() and "etcd is unreachable" in caught.value.message()
    finally:
        if running is not None:
            await running.stop(0)
        await cache_miss.close()
        await clients.close()
        await fabric.view.close()
        await client.close()
