"""The cache-miss protocol against a real etcd and real in-process runtimes with their agents."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from mesh.instance.agent import InstanceAgent
from mesh.api.status import status_of
from mesh.control.cache_miss import (CacheMiss, LoadingFailed, MissConfig, NoCapacity, NoLiveInstance,
                                     NoSupportingRuntime)
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.domain.records import CopyClaim, ModelRecord
from mesh.state.registry import ModelNotRegistered, Registry
from mesh.control.runtime_client import RuntimeClients
from runtimes.server import start_runtime
from runtimes.settings import RuntimeSettings
from tests.mesh.conftest import TEST_CALL_TIMEOUT, TEST_RETRY
from tests.support.models import add_onnx

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


class LoadCounter:
    """Counts loads and load failures per model across runtimes (a LifecycleObserver)."""

    def __init__(self) -> None:
        self.loaded: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def model_loaded(self, model_id, seconds, size_bytes):
        self.loaded[model_id] += 1

    def model_load_failed(self, model_id, seconds, error):
        self.failed[model_id] += 1

    def model_unloaded(self, model_id, seconds):
        pass


class Caller:
    """One process's worth of placement client: its own etcd client, view and CacheMiss."""

    def __init__(self, endpoint: str, keys) -> None:
        self.client = EtcdClient(endpoint, call_timeout=TEST_CALL_TIMEOUT, retry=TEST_RETRY)
        self.view = FabricView(self.client, keys)
        self.runtimes = RuntimeClients()
        self.miss = CacheMiss(self.client, keys, self.view, self.runtimes, MissConfig(max_load_attempts=3))

    async def __aenter__(self):
        await self.view.start()
        await self.view.wait_ready(10)
        return self

    async def __aexit__(self, *exc):
        await self.miss.close()
        await self.view.close()
        await self.runtimes.close()
        await self.client.close()


@pytest.fixture
async def fabric(etcd_server, etcd, keys, tmp_path):
    """Three runtimes with agents (room for a few small models each), and a registry; i0 also
    advertises the runtime label `rt:special`."""
    counter = LoadCounter()
    async with AsyncExitStack() as stack:
        agents = {}
        for n in range(3):
            # Models are charged their tensors' bytes alone (no fixed cost), so 64 KiB holds three.
            settings = RuntimeSettings(host="127.0.0.1", port=0, metrics_port=0, capacity="64KiB",
                                       models_dir=tmp_path / f"cache-{n}", size_factor=1.0, model_fixed_cost=0)
            running = await start_runtime(settings)
            stack.push_async_callback(running.stop)
            running.manager.add_observer(counter)
            labels = ("mt:onnx", "mt:pytorch", "pv:grpc-v2", *(("rt:special",) if n == 0 else ()))
            agent = InstanceAgent(etcd, keys, running.manager, instance_id=f"i{n}",
                                  address=f"127.0.0.1:{running.port}", labels=labels, lease_ttl_s=5)
            await agent.start()
            stack.push_async_callback(agent.close)
            agents[f"i{n}"] = (agent, running)
        caller = await stack.enter_async_context(Caller(etcd_server.endpoint, keys))
        await caller.view.wait_for(lambda: len(caller.view.all_instances()) == 3, 10)
        yield caller, Registry(etcd, keys), agents, counter


def register(registry: Registry, tmp_path: Path, model_id: str, model_type: str = "onnx") -> asyncio.Future:
    # ~16 KiB of weights: an instance's 64 KiB holds three such models.
    path = add_onnx(tmp_path / "store" / model_id / "model.onnx", offset=1.0, weights=4096)
    return registry.register(ModelRecord(model_id, model_type, str(path.parent)))


async def test_loads_on_first_use_and_returns_the_holder(fabric, tmp_path):
    caller, registry, agents, counter = fabric
    await register(registry, tmp_path, "m1")
    holders = await caller.miss.ensure_loaded("m1", timeout=30)
    assert len(holders) == 1
    _, running = agents[holders[0]]
    assert running.manager.loaded_models() == ["m1"]
    assert counter.loaded["m1"] == 1
    # A second call finds it loaded without loading again.
    assert await caller.miss.ensure_loaded("m1", timeout=30) == holders
    assert counter.loaded["m1"] == 1


async def test_concurrent_misses_from_three_processes_load_once(fabric, etcd_server, keys, tmp_path):
    _, registry, agents, counter = fabric
    await register(registry, tmp_path, "hot")
    async with Caller(etcd_server.endpoint, keys) as b, Caller(etcd_server.endpoint, keys) as c:
        callers = [fabric[0], b, c]
        results = await asyncio.gather(*(callers[n % 3].miss.ensure_loaded("hot", timeout=30) for n in range(20)))
    assert counter.loaded["hot"] == 1
    holder = results[0][0]
    assert all(r == [holder] for r in results)
    assert sum("hot" in running.manager.loaded_models() for _, running in agents.values()) == 1


async def test_unknown_model_is_not_registered(fabric):
    caller, *_ = fabric
    with pytest.raises(ModelNotRegistered):
        await caller.miss.ensure_loaded("nope", timeout=10)


@pytest.mark.parametrize("model_type, labels", [("sklearn", "mt:sklearn"),
                                                 ("mt:sklearn|pv:grpc-v2", "mt:sklearn|pv:grpc-v2"),
                                                 ("rt:special|mt:pytorch|pv:grpc-v1", "mt:pytorch|pv:grpc-v1|rt:special")])
async def test_a_type_no_live_instance_has_the_labels_for_fails_at_once(fabric, tmp_path, model_type, labels):
    caller, registry, agents, counter = fabric
    await registry.register(ModelRecord("sk", model_type, str(tmp_path)))
    async with asyncio.timeout(5):  # at once: not a wait for room up to the deadline
        with pytest.raises(NoSupportingRuntime) as raised:
            await caller.miss.ensure_loaded("sk", timeout=30)
    assert isinstance(raised.value, NoCapacity) and not raised.value.retryable
    assert labels in str(raised.value) and "'sk'" in str(raised.value)
    assert status_of(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not counter.loaded and not counter.failed
    record = caller.view.model("sk")
    assert not record.copies and not record.failures  # nothing claimed, nothing blamed


async def test_a_fabric_without_any_instance_is_unavailable_not_out_of_capacity(etcd_server, etcd, keys, tmp_path):
    """No runtime at all (none started, all gone): UNAVAILABLE at once, saying so, not
    RESOURCE_EXHAUSTED about the model's type."""
    async with Caller(etcd_server.endpoint, keys) as caller:
        registry = Registry(etcd, keys)
        await register(registry, tmp_path, "lonely")
        async with asyncio.timeout(5):
            with pytest.raises(NoLiveInstance) as raised:
                await caller.miss.ensure_loaded("lonely", timeout=30)
    assert raised.value.retryable and status_of(raised.value) == grpc.StatusCode.UNAVAILABLE
    assert "'lonely'" in str(raised.value) and "no live runtime instance" in str(raised.value)
    assert not caller.view.model("lonely").copies  # nothing claimed


async def test_a_saturated_model_gets_one_copy_more_up_to_its_limit(fabric, tmp_path, etcd, keys):
    caller, registry, agents, counter = fabric
    await register(registry, tmp_path, "hot")
    first = await caller.miss.ensure_loaded("hot", timeout=30)
    added = await caller.miss.scale_up("hot")
    assert added is not None and added not in first
    await caller.view.wait_for(lambda: len(caller.view.loaded_on("hot")) == 2, 10)
    assert counter.loaded["hot"] == 2
    # With max_copies_per_model 2 in the fabric's dynamic config, a third is not added.
    await etcd.put(keys.config_item("placement"), {"max_copies_per_model": 2})
    await caller.view.wait_for(lambda: caller.view.placement(caller.miss.config.placement).max_copies_per_model == 2, 10)
    assert await caller.miss.scale_up("hot") is None
    assert await caller.miss.scale_up("never-loaded") is None  # no copy: the next call loads one
    assert counter.loaded["hot"] == 2


async def test_a_label_expression_type_loads_only_where_its_labels_are(fabric, tmp_path):
    caller, registry, agents, counter = fabric
    await register(registry, tmp_path, "special", "rt:special|mt:onnx")
    await register(registry, tmp_path, "anywhere", "mt:onnx|pv:grpc-v2")
    assert await caller.miss.ensure_loaded("special", timeout=30) == ["i0"]
    assert agents["i0"][1].manager.loaded_models() == ["special"]
    assert await caller.miss.ensure_loaded("anywhere", timeout=30)
    assert counter.loaded == {"special": 1, "anywhere": 1} and not counter.failed


async def test_corrupt_model_fails_everywhere_once_and_is_not_retried_in_a_loop(fabric, tmp_path):
    caller, registry, agents, counter = fabric
    broken = tmp_path / "store" / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an onnx file")
    await registry.register(ModelRecord("broken", "onnx", str(broken.parent)))
    with pytest.raises(LoadingFailed) as raised:
        await caller.miss.ensure_loaded("broken", timeout=30)
    assert set(raised.value.reasons) == {"i0", "i1", "i2"}
    assert all("INVALID_ARGUMENT" in reason for reason in raised.value.reasons.values())
    assert counter.failed["broken"] == 3
    record = await caller.view.wait_for(lambda: len((caller.view.model("broken") or ModelRecord("", "", "")).failures) == 3
                                        and caller.view.model("broken"), 10)
    assert not record.copies
    # The failures are remembered: a second call fails at once without loading again.
    with pytest.raises(LoadingFailed):
        await caller.miss.ensure_loaded("broken", timeout=30)
    assert counter.failed["broken"] == 3
    # Other models are unaffected.
    await register(registry, tmp_path, "fine")
    assert await caller.miss.ensure_loaded("fine", timeout=30)


async def test_a_claim_by_an_instance_that_left_does_not_block(fabric, etcd, keys, tmp_path):
    caller, registry, agents, counter = fabric
    await register(registry, tmp_path, "orphan")
    await registry.update("orphan", lambda r: replace(r, copies={"ghost": CopyClaim("loading", r.registered_ms or 1)}))
    holders = await caller.miss.ensure_loaded("orphan", timeout=30)
    assert holders and holders[0] != "ghost"
    assert counter.loaded["orphan"] == 1


async def test_loads_evict_least_recently_used_when_instances_are_full(fabric, tmp_path):
    caller, registry, agents, counter = fabric
    # Three instances with room for three models each: twelve models need evictions.
    ids = [f"m{n}" for n in range(12)]
    for model_id in ids:
        await register(registry, tmp_path, model_id)
    for model_id in ids:
        assert await caller.miss.ensure_loaded(model_id, timeout=30)
        for _, running in agents.values():
            assert running.manager.used_bytes <= running.manager.capacity_bytes
    total_loaded = sum(len(running.manager.loaded_models()) for _, running in agents.values())
    assert total_loaded < len(ids), "the models should not all fit: the test needs evictions"
    # The most recent model of all is still loaded somewhere.
    assert caller.view.loaded_on(ids[-1]) or await caller.view.wait_for(lambda: caller.view.loaded_on(ids[-1]), 10)
