"""LifecycleMetrics on a holder's lifecycle: what loads, failed loads and unloads report.

The holder is a small subclass of `ModelLifecycle` (a stand-in for the runtime's manager and
the agent's remote holder): it sizes, brings in and lets go of nothing real, and fails when told.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from protos.metrics_exposition import render
from runtimes.errors import LoadFailed
from runtimes.lifecycle import ModelLifecycle
from runtimes.metrics import LifecycleMetrics
from tests.support.waiting import async_wait_until


class ManualClock:
    """The lifecycle's clock, moved only by the test (so no figure depends on real time)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Holder(ModelLifecycle):
    def __init__(self) -> None:
        self.clock = ManualClock()
        super().__init__(capacity_bytes=10 << 20, clock=self.clock)
        self.fail_load: set[str] = set()
        self.fail_release: set[str] = set()
        self.slot = asyncio.Semaphore(1)

    async def _predict(self, model_id, model_type, model_path, model_key) -> int:
        return 1 << 20

    async def _bring_in(self, model_id, model_type, model_path, model_key):
        if model_id in self.fail_load:
            raise LoadFailed(f"cannot load {model_id}", retryable=False)
        return object(), 3 << 20

    def _load_slot(self):
        return self.slot

    async def _discard(self, model_id, handle) -> None:
        pass

    async def _release(self, model_id, handle) -> None:
        if model_id in self.fail_release:
            raise RuntimeError(f"{model_id} would not go")


@pytest.fixture
def observed():
    registry = CollectorRegistry()
    holder, metrics = Holder(), LifecycleMetrics(registry)
    holder.add_observer(metrics)
    holder.add_probe(metrics)
    return holder, registry


async def _reserved(holder: Holder, model_id: str) -> bool:
    return model_id in holder.entries()


def value(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def test_a_load_reports_its_sizing_queueing_time_and_size(observed):
    holder, registry = observed
    assert await holder.load("a", "onnx", "/models/a") == 3 << 20
    for name in ("modelmesh_model_sizing_milliseconds_count", "modelmesh_loading_queue_delay_milliseconds_count",
                 "modelmesh_loadmodel_milliseconds_count", "modelmesh_loaded_model_size_bytes_count"):
        assert value(registry, name) == 1, name
    assert value(registry, "modelmesh_loaded_model_size_bytes_sum") == 3 << 20
    assert value(registry, "modelmesh_loadmodel_failure") == 0


async def test_a_load_waiting_for_the_loading_slot_counts_that_wait_as_queueing(observed):
    holder, registry = observed
    await holder.slot.acquire()
    load = asyncio.create_task(holder.load("a", "onnx", "/models/a"))
    await async_wait_until(lambda: _reserved(holder, "a"), 5, "the load to reserve its room")
    holder.clock.now += 0.25  # the load stays parked on the slot the test holds while this time passes
    assert not load.done()
    holder.slot.release()
    await load
    assert value(registry, "modelmesh_loading_queue_delay_milliseconds_sum") == pytest.approx(250)


async def test_a_failed_load_counts_a_failure_and_no_load_time(observed):
    holder, registry = observed
    holder.fail_load.add("bad")
    with pytest.raises(LoadFailed):
        await holder.load("bad", "onnx", "/models/bad")
    assert value(registry, "modelmesh_loadmodel_failure") == 1
    assert value(registry, "modelmesh_loadmodel_milliseconds_count") == 0
    assert "modelmesh_loadmodel_failure 1.0" in render(registry).decode()


async def test_unloads_are_timed_and_a_failed_one_counts_under_both_unload_failures(observed):
    holder, registry = observed
    await holder.load("a", "onnx", "/models/a")
    await holder.load("stuck", "onnx", "/models/stuck")
    await holder.unload("a")
    assert value(registry, "modelmesh_unloadmodel_milliseconds_count") == 1
    holder.fail_release.add("stuck")
    with pytest.raises(RuntimeError, match="would not go"):
        await holder.unload("stuck")
    assert value(registry, "modelmesh_unloadmodel_failure") == 1
    assert value(registry, "modelmesh_unloadmodel_attempt_failure") == 1
    assert value(registry, "modelmesh_unloadmodel_milliseconds_count") == 1
