"""End to end with the real placement layer: runtime processes joined to the fabric by their
instance agent, the model registered in the registry, the router's misses served by the
real `CacheMiss`."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mesh.control import cache_miss
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.records import ModelRecord
from mesh.state.registry import Registry
from tests.support.runtime_process import start_runtime_process

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture
def joined_runtime(tmp_path_factory, etcd_server, keys):
    runtime = start_runtime_process(tmp_path_factory.mktemp("joined"), "--etcd", etcd_server.endpoint,
                                    "--fabric", keys.fabric, "--instance-id", "agent-0", capacity="256MiB")
    yield runtime
    runtime.stop()


async def test_a_registered_model_loads_on_first_call(fabric, etcd, keys, joined_runtime, model_store, router_factory):
    await fabric.view.wait_for(lambda: fabric.view.instance("agent-0"), 30)
    await Registry(etcd, keys).register(ModelRecord("add-e2e", "onnx", str(model_store["add"])))
    async with RuntimeClients() as runtimes, AsyncExitStack() as stack:
        loader = await stack.enter_async_context(cache_miss.CacheMiss(etcd, keys, fabric.view, runtimes))
        running = await router_factory(fabric.view, loader)
        x = np.ones((1, 4), dtype=np.float32)

        def infer():
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            with grpcclient.InferenceServerClient(f"127.0.0.1:{running.port}") as client:
                return client.infer("add-e2e", [tensor], client_timeout=60).as_numpy("y")

        assert (await asyncio.to_thread(infer)).tolist() == (x + 1).tolist()
        assert fabric.view.loaded_on("add-e2e") == ["agent-0"]
        assert (await asyncio.to_thread(infer)).tolist() == (x + 1).tolist()
        await running.stop(0)
