"""Fixtures for the router's tests: real etcd, real runtime processes, a router in-process.

The routing table is real: tests load models into runtime processes through their
model-runtime SPI and publish `instances/<id>` records describing them into etcd
(`Fabric.publish`), exactly what instance agents do; the router reads them through a
watched `FabricView`. `StubLoader` stands in for the placement layer's cache miss: it
loads through the SPI and publishes the record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.domain.records import HeldCopy, InstanceRecord, VModelRecord, to_document
from mesh.state.registry import ModelNotRegistered
from router.server import RunningRouter, start_router
from router.settings import RouterSettings
from tests.mesh.conftest import (  # noqa: F401 - fixtures, re-exported for this folder
    _make_client,
    etcd,
    etcd_server,
    keys,
    no_leaked_tasks,
    private_client,
    private_etcd,
)
from tests.support import models
from tests.support.ports import free_port
from tests.support.runtime_process import RuntimeProcess, start_runtime_process


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("router-models")
    return {
        "add": models.add_onnx(root / "add" / "model.onnx").parent,
        "add10": models.add_onnx(root / "add10" / "model.onnx", offset=10.0).parent,
        "identity_bytes": models.identity_onnx(root / "identity_bytes" / "model.onnx", "BYTES").parent,
    }


def _start_pair(tmp_path_factory, model_store) -> list[RuntimeProcess]:
    runtimes = [start_runtime_process(tmp_path_factory.mktemp("runtime"), capacity="256MiB") for _ in range(2)]
    for runtime in runtimes:
        runtime.load("add", model_store["add"], "onnx")
        runtime.load("identity_bytes", model_store["identity_bytes"], "onnx")
    return runtimes


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory, model_store):
    """Two runtime processes, each holding `add` and `identity_bytes`."""
    pair = _start_pair(tmp_path_factory, model_store)
    yield pair
    for runtime in pair:
        assert runtime.stop() == 0, runtime.log()


class Fabric:
    """A fabric of the test's own: publishes instance and vmodel records, reads them back."""

    def __init__(self, client: EtcdClient, keys: Keys, view: FabricView) -> None:
        self.client = client
        self.keys = keys
        self.view = view

    async def publish(self, instance_id: str, runtime: RuntimeProcess, model_ids: list[str],
                      labels: tuple[str, ...] = ()) -> None:
        now = int(time.time() * 1000)
        record = InstanceRecord(instance_id, runtime.address, capacity_bytes=256 << 20,
                                copies={m: HeldCopy(size_bytes=1 << 10, last_used_ms=now) for m in model_ids},
                                published_ms=now, labels=labels)
        await self.client.put(self.keys.instance(instance_id), to_document(record))
        await self.view.wait_for(lambda: all(instance_id in self.view.loaded_on(m) for m in model_ids), 10)

    async def set_vmodel(self, vmodel_id: str, model_id: str) -> None:
        await self.client.put(self.keys.vmodel(vmodel_id), to_document(VModelRecord(vmodel_id, model_id, model_id)))
        await self.view.wait_for(lambda: self.view.resolve(vmodel_id) == model_id, 10)


async def open_fabric(client: EtcdClient, keys: Keys) -> Fabric:
    view = FabricView(client, keys)
    await view.start()
    await view.wait_ready(10)
    return Fabric(client, keys, view)


@pytest.fixture
async def fabric(etcd, keys) -> AsyncIterator[Fabric]:
    made = await open_fabric(etcd, keys)
    yield made
    await made.view.close()


class StubLoader:
    """A test double for `mesh.control.cache_miss.CacheMiss`: knows model paths, loads the model
    onto one runtime through its SPI and publishes the copy, like an instance agent."""

    def __init__(self, fabric: Fabric, paths: dict[str, Path], runtime: RuntimeProcess, instance_id: str,
                 held: list[str] | None = None) -> None:
        self.fabric = fabric
        self.paths = paths
        self.runtime = runtime
        self.instance_id = instance_id
        self.held = list(held or [])
        self.calls: list[str] = []

    async def ensure_loaded(self, model_id: str, timeout: float) -> list[str]:
        self.calls.append(model_id)
        if model_id not in self.paths:
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        loaded = self.fabric.view.loaded_on(model_id)
        if loaded:
            return loaded
        async with asyncio.timeout(timeout):
            await asyncio.to_thread(self.runtime.load, model_id, self.paths[model_id], "onnx")
            self.held.append(model_id)
            await self.fabric.publish(self.instance_id, self.runtime, self.held)
        return self.fabric.view.loaded_on(model_id)


class NeverLoads:
    """A loader whose loads never finish: it honours the timeout it is given."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    async def ensure_loaded(self, model_id: str, timeout: float) -> list[str]:
        self.timeouts.append(timeout)
        async with asyncio.timeout(timeout):
            await asyncio.Event().wait()
        raise AssertionError("unreachable")





@pytest.fixture
async def router_factory() -> AsyncIterator[Callable]:
    """`await router_factory(view, loader, scaler=..., **settings)` -> a started in-process router
    on free loopback ports; stopped at teardown."""
    started: list[RunningRouter] = []

    async def factory(view: FabricView, loader, registry: CollectorRegistry | None = None, scaler=None,
                      **overrides) -> RunningRouter:
        values = {"host": "127.0.0.1", "port": 0, "rest_port": free_port(), "metrics_port": 0, **overrides}
        running = await start_router(RouterSettings(**values), view, loader, registry=registry, scaler=scaler)
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop(0)
