"""The instance agent against a real etcd, real models and real runtimes.

Held here: the instance record appears and tracks the copies; loads update model records
(claim and size, or the failure with its reason); eviction is LRU, never exceeds capacity
and never takes a copy with a request in flight; the agent registers again after an etcd
restart and when etcd was unreachable at start; SIGTERM publishes shutting_down and then
removes the record; a killed process's record goes with its lease.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mesh.instance.agent import InstanceAgent
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.domain.records import CopyClaim, InstanceRecord, ModelRecord, decode
from mesh.state.registry import Registry
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from runtimes.backends import Backend, BackendRegistry, Device, LoadedModel, TensorSpec
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from runtimes.errors import CapacityExhausted, InvalidModel
from runtimes.model_manager import ManagerConfig, ModelManager
from runtimes.server import RunningRuntime, start_runtime
from runtimes.settings import RuntimeSettings
from tests.mesh.conftest import TEST_CALL_TIMEOUT, TEST_RETRY
from tests.support import models
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port
from tests.support.runtime_process import start_runtime_process
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

WAIT = 15.0  # generous bound for conditions that normally hold within a publish interval
FAST = {"publish_min_interval_s": 0.02, "publish_max_interval_s": 0.3}


async def until(condition: Callable[[], object | Awaitable[object]], what: str, timeout: float = WAIT):
    """Wait for a condition that no watch announces (a local flag, a lease's TTL)."""

    async def check() -> object:
        value = condition()
        return await value if inspect.isawaitable(value) else value

    return await async_wait_until(check, timeout, what)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """Five ONNX models of one size (~1 MB on disk each), and a corrupt one."""
    root = tmp_path_factory.mktemp("agent-models")
    store = {f"m{i}": models.add_onnx(root / f"m{i}" / "model.onnx", offset=float(i), weights=250_000).parent
             for i in range(5)}
    corrupt = root / "corrupt" / "model.onnx"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not an onnx protobuf \x00\x01\x02" * 10)
    store["corrupt"] = corrupt.parent
    return store


#: What each model is charged besides its tensors: fixed here (not calibrated at start-up),
#: so that a model's size is known before the runtime starts.
FIXED_COST = 64 << 10


def onnx_size(path: Path) -> int:
    """What the runtime charges for one of these models: the fixed cost and its tensors' bytes."""
    return FIXED_COST + constant_tensor_bytes(path / "model.onnx")


@asynccontextmanager
async def runtime_with_agent(client: EtcdClient, keys: Keys, workdir: Path, capacity: int,
                             instance_id: str = "i1", **agent_options) -> AsyncIterator[tuple[RunningRuntime, InstanceAgent]]:
    settings = RuntimeSettings(host="127.0.0.1", port=0, metrics_port=0, capacity=capacity,
                               models_dir=workdir / "cache", infer_threads=2, model_fixed_cost=FIXED_COST)
    registry = CollectorRegistry()
    running = await start_runtime(settings, registry)
    agent = InstanceAgent(client, keys, running.manager, instance_id=instance_id,
                          address=f"127.0.0.1:{running.port}", zone="z1", version="test",
                          metrics_registry=registry, **{**FAST, **agent_options})
    try:
        await agent.start()
        yield running, agent
    finally:
        await agent.drain()
        await running.stop(grace=0)
        await agent.close()


@asynccontextmanager
async def fabric_view(client: EtcdClient, keys: Keys) -> AsyncIterator[FabricView]:
    async with FabricView(client, keys) as view:
        await view.wait_ready(WAIT)
        yield view


async def register(client: EtcdClient, keys: Keys, model_id: str, path: Path, model_type: str = "onnx") -> None:
    await Registry(client, keys).register(ModelRecord(model_id, model_type, str(path)))


def held(view: FabricView, instance_id: str = "i1") -> set[str] | None:
    """The model ids the instance's published record holds (None before it is published)."""
    record = view.instance(instance_id)
    return set(record.copies) if record else None


def claim(view: FabricView, model_id: str, instance_id: str = "i1"):
    record = view.model(model_id)
    return record.copies.get(instance_id) if record else None


X = {"x": np.ones((1, 4), dtype=np.float32)}


# -- registration, copies and model records ------------------------------------------------------
async def test_record_appears_and_spi_loads_become_copies_and_claims(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    size = onnx_size(onnx_models["m0"])
    await register(etcd, keys, "m0", onnx_models["m0"])
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=64 << 20) as (running, agent), \
            fabric_view(etcd, keys) as view:
        record = await view.wait_for(lambda: view.instance("i1"), WAIT)
        assert record.address == f"127.0.0.1:{running.port}"
        assert record.capacity_bytes == 64 << 20 and record.used_bytes == 0 and record.copies == {}
        assert record.labels == ("mt:onnx", "mt:pytorch") and record.zone == "z1" and not record.shutting_down
        assert set(record.model_types) == {"onnx", "pytorch"}  # for readers older than labels
        kv = await etcd.get(keys.instance("i1"))
        assert kv is not None and kv.lease != 0  # bound to the agent's lease

        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            spi = rt_grpc.ModelRuntimeStub(channel)
            reply = await spi.loadModel(rt.LoadModelRequest(modelId="m0", modelType="onnx",
                                                            modelPath=str(onnx_models["m0"])), timeout=30)
            assert reply.sizeInBytes == size
            # A model loaded through the bare SPI, never registered: a copy, but no record to update.
            await spi.loadModel(rt.LoadModelRequest(modelId="m1", modelType="onnx",
                                                    modelPath=str(onnx_models["m1"])), timeout=30)

            record = await view.wait_for(lambda: (r := view.instance("i1")) and set(r.copies) == {"m0", "m1"}
                                         and r.loading_bytes == 0 and r, WAIT)
            assert record.copies["m0"].size_bytes == size and not record.copies["m0"].loading
            assert record.used_bytes == 2 * size and record.loading_bytes == 0
            model = await view.wait_for(lambda: claim(view, "m0") and view.model("m0"), WAIT)
            assert model.copies["i1"].state == "loaded" and model.size_estimate_bytes == size
            assert view.model("m1") is None

            await running.manager.run("m0", X, [])
            await running.manager.run("m0", X, [])
            # Rates come from the request counters, read on the publish tick.
            record = await view.wait_for(lambda: (r := view.instance("i1")) and r.copies["m0"].rate_per_min > 0 and r, WAIT)
            assert record.request_rate_per_min >= record.copies["m0"].rate_per_min and record.copies["m1"].rate_per_min == 0
            await spi.unloadModel(rt.UnloadModelRequest(modelId="m0"), timeout=30)
            model = await view.wait_for(lambda: claim(view, "m0") is None and view.model("m0"), WAIT)
            assert model.last_used_ms > 0
            await view.wait_for(lambda: held(view) == {"m1"}, WAIT)
        assert agent.metrics_registry.get_sample_value("modelmesh_instance_capacity_bytes") == 64 << 20


async def test_loading_claims_an_earlier_run_left_are_dropped_once_registered(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    """Found by bench/soak.py: a runtime SIGKILLed mid-load and restarted under its id at once
    left `loading` claims that made every miss of those models wait for the loading timeout."""
    now = int(time.time() * 1000)
    registry = Registry(etcd, keys)
    await registry.register(ModelRecord("left", "onnx", str(onnx_models["m0"]),
                                        copies={"i1": CopyClaim("loading", now - 5_000),
                                                "i2": CopyClaim("loading", now - 5_000)}))
    # A claim made after the agent starts (clock ahead here) is a live load's: it stays.
    await registry.register(ModelRecord("fresh", "onnx", str(onnx_models["m1"]),
                                        copies={"i1": CopyClaim("loading", now + 60_000)}))
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=64 << 20), fabric_view(etcd, keys) as view:
        await view.wait_for(lambda: (m := view.model("left")) and set(m.copies) == {"i2"}, WAIT)
        assert set(view.model("fresh").copies) == {"i1"}


async def test_load_failure_is_recorded_with_its_reason(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    await register(etcd, keys, "bad", onnx_models["corrupt"])
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=64 << 20) as (running, _), \
            fabric_view(etcd, keys) as view:
        with pytest.raises(InvalidModel):
            await running.manager.load("bad", "onnx", str(onnx_models["corrupt"]))
        model = await view.wait_for(lambda: (r := view.model("bad")) and "i1" in r.failures and r, WAIT)
        failure = model.failures["i1"]
        assert "ONNX Runtime cannot load" in failure.reason
        assert failure.expires_ms - failure.time_ms == 600_000
        assert "i1" not in model.copies
        await view.wait_for(lambda: (r := view.instance("i1")) and "bad" not in r.copies and r.loading_bytes == 0, WAIT)
        assert running.manager.used_bytes == 0


# -- eviction -----------------------------------------------------------------------------------------
async def test_a_backends_one_time_overhead_is_published_as_used_and_leaves_less_room(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    size = onnx_size(onnx_models["m0"])
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=64 << 20) as (running, agent), \
            fabric_view(etcd, keys) as view:
        await running.manager.load("m0", "onnx", str(onnx_models["m0"]))
        # Stands in for a backend set up at its first load (`runtimes.backend_setup`), which
        # adds what its import took to the manager's overhead: these runtimes fix the cost per model.
        running.manager.backend_overhead_bytes = 5 << 20
        record = await view.wait_for(lambda: (r := view.instance("i1")) and r.used_bytes == size + (5 << 20) and r,
                                     WAIT)
        assert set(record.copies) == {"m0"} and record.copies["m0"].size_bytes == size
        assert running.manager.used_bytes == size + (5 << 20)
        await until(lambda: agent.metrics_registry.get_sample_value("modelmesh_instance_used_bytes")
                    == size + (5 << 20), "the used-bytes gauge to count the overhead")


async def test_lru_eviction_takes_least_recently_used_and_never_exceeds_capacity(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    size = onnx_size(onnx_models["m0"])
    capacity = int(size * 3.5)  # three fit, a fourth needs an eviction
    ids = [f"m{i}" for i in range(5)]
    for model_id in ids:
        await register(etcd, keys, model_id, onnx_models[model_id])
    sampled: list[InstanceRecord] = []
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=capacity) as (running, agent), \
            fabric_view(etcd, keys) as view:
        view.subscribe(lambda: sampled.append(view.instance("i1")) if view.instance("i1") else None)
        manager = running.manager

        async def load(model_id: str) -> None:
            # Loaded and then called, as a cache miss does: a copy that never served is
            # spared for a grace period (the next test), which is not what this one checks.
            await manager.load(model_id, "onnx", str(onnx_models[model_id]))
            await manager.run(model_id, X, [])

        for model_id in ("m0", "m1", "m2"):
            await load(model_id)
        await manager.run("m0", X, [])  # m0 is now the most recently used; m1 the least
        await load("m3")
        assert manager.loaded_models() == ["m0", "m2", "m3"]
        await manager.run("m2", X, [])  # order now: m0 (oldest), m3, m2
        await load("m4")
        assert manager.loaded_models() == ["m2", "m3", "m4"]

        await view.wait_for(lambda: held(view) == {"m2", "m3", "m4"}, WAIT)
        await view.wait_for(lambda: all(claim(view, m) for m in ("m2", "m3", "m4"))
                            and not any(claim(view, m) for m in ("m0", "m1")), WAIT)
        assert view.model("m0").last_used_ms >= view.model("m1").last_used_ms > 0
        metrics = agent.metrics_registry
        assert metrics.get_sample_value("modelmesh_age_at_eviction_milliseconds_count") == 2  # evictions, as ModelMesh counts them
        exposition = generate_latest(metrics).decode()
        for name in ("modelmesh_instance_used_bytes", "modelmesh_instance_used_bps", "modelmesh_instance_lru_seconds",
                     "modelmesh_instance_lru_age_seconds", "modelmesh_instance_models_total",
                     "meshserve_instance_loads_in_progress", "modelmesh_loadmodel_milliseconds_count"):
            assert name in exposition
    assert sampled, "no instance record was observed"
    for record in sampled:
        assert record.used_bytes + record.loading_bytes <= record.capacity_bytes, record


class GatedModel(LoadedModel):
    platform = "fake"
    inputs = [TensorSpec("x", "FP32", (-1,))]
    outputs = [TensorSpec("y", "FP32", (-1,))]

    def __init__(self, size: int, gate: threading.Event) -> None:
        self._size, self._gate = size, gate
        self.running = 0

    def infer(self, inputs, output_names):
        self.running += 1
        try:
            assert self._gate.wait(WAIT), "test gate never opened"
            return {"y": inputs["x"] + 1}
        finally:
            self.running -= 1

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        pass


class GatedBackend(Backend):
    """Loads any file as a model whose inference waits until the test opens the gate."""

    name = "onnx"
    file_suffixes = (".onnx",)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.models: dict[str, GatedModel] = {}

    def load(self, model_file: Path, device: Device) -> GatedModel:
        model = GatedModel(model_file.stat().st_size, self.gate)
        self.models[model_file.parent.name] = model
        return model



async def test_a_fresh_copy_that_has_not_served_is_spared_and_a_load_waits_for_room(
        etcd: EtcdClient, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    size = onnx_size(onnx_models["m0"])
    for model_id in ("m0", "m1", "m2", "m3", "m4"):
        await register(etcd, keys, model_id, onnx_models[model_id])
    async with runtime_with_agent(etcd, keys, tmp_path, capacity=int(size * 3.5),
                                  fresh_copy_grace_s=600, room_wait_s=0.2) as (running, _):
        manager = running.manager
        await manager.load("m0", "onnx", str(onnx_models["m0"]))
        await manager.run("m0", X, [])  # m0 served: it may go
        await manager.load("m1", "onnx", str(onnx_models["m1"]))  # m1, m2: loaded, never called
        await manager.load("m2", "onnx", str(onnx_models["m2"]))
        await manager.load("m3", "onnx", str(onnx_models["m3"]))
        assert manager.loaded_models() == ["m1", "m2", "m3"], "the copy that served goes, not the fresh LRU one"
        # Every copy is fresh now: the load waits for room (0.2 s here), then is refused.
        with pytest.raises(CapacityExhausted):
            await manager.load("m4", "onnx", str(onnx_models["m4"]))
        assert manager.loaded_models() == ["m1", "m2", "m3"]

@dataclass
class Pulled:
    local_path: Path


class LocalFiles:
    async def pull(self, model_id, model_path, model_key=None):
        return Pulled(Path(model_path))

    async def release(self, model_id):
        pass


async def test_copy_with_request_in_flight_is_not_evicted(etcd: EtcdClient, keys: Keys, tmp_path: Path) -> None:
    size = 10_000
    for name in ("a-busy", "b-idle", "c-new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"\0" * size)
    backend = GatedBackend()
    manager = ModelManager(ManagerConfig(capacity_bytes=2 * size, size_factor=1.0, infer_threads=2),
                           BackendRegistry([backend]), LocalFiles())
    agent = InstanceAgent(etcd, keys, manager, instance_id="i1", address="127.0.0.1:1", **FAST)
    request = None
    try:
        async with fabric_view(etcd, keys) as view:
            await agent.start()
            await manager.load("a-busy", "onnx", str(tmp_path / "a-busy"))
            await manager.load("b-idle", "onnx", str(tmp_path / "b-idle"))
            # a-busy is the least recently used copy (loaded first; ties go by id), but busy.
            request = asyncio.ensure_future(manager.run("a-busy", {"x": np.ones(2, np.float32)}, []))
            await until(lambda: backend.models["a-busy"].running == 1, "the request to reach the model")
            published = await view.wait_for(lambda: (r := view.instance("i1")) and r.copies.get("a-busy")
                                            and r.copies["a-busy"].in_flight == 1 and r, WAIT)
            assert published.copies["b-idle"].in_flight == 0

            await manager.load("c-new", "onnx", str(tmp_path / "c-new"))
            assert manager.loaded_models() == ["a-busy", "c-new"]
            assert not request.done()
            backend.gate.set()
            assert (await request)["y"].tolist() == [2.0, 2.0]
            await view.wait_for(lambda: held(view) == {"a-busy", "c-new"}, WAIT)
    finally:
        backend.gate.set()
        if request is not None:
            await asyncio.gather(request, return_exceptions=True)
        await agent.close()
        await manager.close()


# -- etcd trouble -------------------------------------------------------------------------------------
async def test_reregisters_after_etcd_restart_and_replays_record_writes(
        private_etcd: EtcdServer, private_client: EtcdClient, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    keys = Keys(fabric="restart")
    key = keys.instance("i1")
    await register(private_client, keys, "m0", onnx_models["m0"])
    async with runtime_with_agent(private_client, keys, tmp_path, capacity=64 << 20, lease_ttl_s=1,
                                  register_backoff_s=(0.1, 0.5)) as (running, agent):
        await agent.wait_registered(WAIT)
        first_lease = (await private_client.get(key)).lease

        await private_etcd.astop()
        await until(lambda: not agent.registered.is_set(), "the agent to notice its lease is lost")
        # The runtime keeps serving while etcd is away; the record write waits for etcd.
        await running.manager.load("m0", "onnx", str(onnx_models["m0"]))
        await private_etcd.astart()

        await agent.wait_registered(WAIT)
        kv = await until(lambda: private_client.get(key), "the instance record to be back")
        assert kv.lease != first_lease
        # etcd brings old leases back on restart; once the old one expires, the record stays.
        await until(lambda: _lease_gone(private_client, first_lease), "the old lease to expire")
        kv = await until(lambda: private_client.get(key), "the record under the new lease")
        assert kv.lease != first_lease and "m0" in decode(InstanceRecord, kv.raw).copies
        record = await until(lambda: _claimed(private_client, keys, "m0"), "the model record's claim")
        assert record.copies["i1"].state == "loaded"


async def _lease_gone(client: EtcdClient, lease_id: int) -> bool:
    return await client.lease_ttl(lease_id) == -1


async def _claimed(client: EtcdClient, keys: Keys, model_id: str) -> ModelRecord | None:
    found = await Registry(client, keys).get(model_id)
    return found[0] if found and "i1" in found[0].copies else None


async def test_unreachable_etcd_at_start_is_logged_and_the_runtime_serves(
        tmp_path: Path, onnx_models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mesh.instance")
    async with EtcdClient(f"127.0.0.1:{free_port()}", call_timeout=TEST_CALL_TIMEOUT, retry=TEST_RETRY) as client:
        async with runtime_with_agent(client, Keys(fabric="nowhere"), tmp_path, capacity=64 << 20) as (running, agent):
            await until(lambda: "cannot register with etcd" in caplog.text, "the registration failure log line")
            assert await running.manager.load("m0", "onnx", str(onnx_models["m0"])) > 0
            assert not agent.registered.is_set()


# -- the process --------------------------------------------------------------------------------------------
async def test_process_sigterm_publishes_shutting_down_then_removes_record(
        etcd: EtcdClient, etcd_server: EtcdServer, keys: Keys, tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    await register(etcd, keys, "m0", onnx_models["m0"])
    runtime = await asyncio.to_thread(
        start_runtime_process, tmp_path, "--etcd", etcd_server.endpoint, "--fabric", keys.fabric,
        "--instance-id", "p1", "--lease-ttl-s", "5", "--labels", "rt:meshserve-1.x, RT:meshserve-1.x")
    key = keys.instance("p1")
    try:
        async with fabric_view(etcd, keys) as view:
            record = await view.wait_for(lambda: view.instance("p1"), WAIT)
            assert record.address == runtime.address
            # mt:<format> and mt:<format>:<version> per backend, the protocol it speaks, then --labels (folded, once).
            assert {"mt:onnx", "mt:onnx:1", "mt:triton", "mt:triton:2"} <= set(record.labels)
            assert record.labels[-2:] == ("pv:grpc-v2", "rt:meshserve-1.x")
            await asyncio.to_thread(runtime.load, "m0", onnx_models["m0"], "onnx")
            await view.wait_for(lambda: claim(view, "m0", "p1"), WAIT)

        seen: list[InstanceRecord] = []
        async with await etcd.watch(key) as events:
            runtime.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                async for event in events:
                    if event.kind == "delete":
                        break
                    seen.append(decode(InstanceRecord, event.kv.raw))
        flags = [r.shutting_down for r in seen]
        assert True in flags, flags  # routers were told before the record went...
        assert all(flags[flags.index(True):]), flags  # ...and it never went back
        assert await asyncio.to_thread(runtime.process.wait, 30) == 0, runtime.log()
        model = (await Registry(etcd, keys).get("m0"))[0]
        assert "p1" not in model.copies and model.last_used_ms > 0  # the unload updated the record
    finally:
        await asyncio.to_thread(runtime.stop)


async def test_process_killed_record_goes_with_its_lease(
        etcd: EtcdClient, etcd_server: EtcdServer, keys: Keys, tmp_path: Path) -> None:
    runtime = await asyncio.to_thread(
        start_runtime_process, tmp_path, "--etcd", etcd_server.endpoint, "--fabric", keys.fabric,
        "--instance-id", "p2", "--lease-ttl-s", "2")
    try:
        async with fabric_view(etcd, keys) as view:
            await view.wait_for(lambda: view.instance("p2"), WAIT)
            runtime.process.kill()
            await view.wait_for(lambda: view.instance("p2") is None, 2 + 3)  # TTL plus etcd's expiry sweep
    finally:
        await asyncio.to_thread(runtime.stop)
