"""The controller against a real etcd and real gRPC instances (`FakeInstance`), and two
`meshserve controller` processes electing one leader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.domain.timings import FabricTimings
from mesh.control.controller import Controller, ControllerConfig, ControllerMetrics
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import PLACEMENT_CONFIG, FabricView
from mesh.etcd.keys import Keys
from mesh.domain.placement import PlacementConfig
from mesh.domain.records import CopyClaim, HeldCopy, LoadFailure, ModelRecord, VModelRecord, to_document
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.state.vmodels import VModelChange, VModels
from tests.support.fabric import REPO
from tests.support.fake_instance import MODEL_SIZE, FakeInstance, now_ms
from tests.support.ports import free_port
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

HOUR_MS = 3_600_000


@dataclass
class Fabric:
    client: EtcdClient
    keys: Keys
    view: FabricView
    registry: Registry
    vmodels: VModels
    controller: Controller
    metrics: CollectorRegistry
    instances: list[FakeInstance]

    async def instance(self, instance_id: str, **kw) -> FakeInstance:
        inst = await FakeInstance(self.client, self.keys, instance_id, **kw).start()
        self.instances.append(inst)
        await self.view.wait_for(lambda: self.view.instance(instance_id), 10)
        return inst

    async def model(self, model_id: str, **kw) -> ModelRecord:
        record = ModelRecord(model_id, "onnx", f"s3://b/{model_id}", registered_ms=1, size_estimate_bytes=MODEL_SIZE, **kw)
        await self.client.put(self.keys.model(model_id), to_document(record))
        await self.view.wait_for(lambda: self.view.model(model_id) == record, 10)
        return record

    async def hold(self, inst: FakeInstance, model_id: str, last_used_ms: int | None = None) -> None:
        """Make the instance publish a loaded copy (as if it had loaded it earlier)."""
        inst.held[model_id] = HeldCopy(MODEL_SIZE, now_ms() if last_used_ms is None else last_used_ms)
        await inst.publish()
        await self.view.wait_for(lambda: model_id in self.view.instance(inst.id).copies, 10)

    async def round(self):
        report = await self.controller.run_once()
        assert not report.skipped
        await self.controller.idle(20)
        return report

    def metric(self, name: str) -> float | None:
        return self.metrics.get_sample_value(name)


async def _fabric(client: EtcdClient, keys: Keys, vmodels: VModels | None = None) -> AsyncIterator[Fabric]:
    view = FabricView(client, keys)
    await view.start()
    await view.wait_ready(10)
    await view.wait_in_sync(10)  # rounds are skipped until the watches run
    runtimes = RuntimeClients()
    registry = Registry(client, keys)
    vmodels = vmodels or VModels(client, keys, registry)
    cache_miss = CacheMiss(client, keys, view, runtimes, MissConfig(timings=FabricTimings(failure_expiry_ms=60_000)))
    metrics = CollectorRegistry()
    controller = Controller(client, keys, view, cache_miss, runtimes, registry, vmodels,
                            ControllerConfig(load_timeout_s=10, placement=PlacementConfig()),
                            metrics=ControllerMetrics(metrics))
    fabric = Fabric(client, keys, view, registry, vmodels, controller, metrics, [])
    try:
        yield fabric
    finally:
        await controller.close()
        await cache_miss.close()
        for inst in fabric.instances:
            await inst.close()
        await runtimes.close()
        await view.close()


@pytest.fixture
async def fabric(etcd, keys) -> AsyncIterator[Fabric]:
    async for made in _fabric(etcd, keys):
        yield made


async def test_copies_on_a_dead_instance_are_rehomed_and_claims_dropped(fabric):
    i1, i2 = await fabric.instance("i1"), await fabric.instance("i2")
    await fabric.model("hot", last_used_ms=now_ms(), copies={"i1": CopyClaim("loaded", now_ms())})
    await fabric.model("cold", last_used_ms=now_ms() - 5 * HOUR_MS, copies={"i1": CopyClaim("loaded", 1)})
    await fabric.hold(i1, "hot")
    await fabric.hold(i1, "cold", last_used_ms=now_ms() - 5 * HOUR_MS)
    await i1.close()  # lease revoked: the record goes, as after a crash and the lease TTL
    await fabric.view.wait_for(lambda: fabric.view.instance("i1") is None, 10)

    report = await fabric.round()
    assert report.claims_dropped == 2 and report.rehomes_started == 1
    assert fabric.view.loaded_on("hot") == ["i2"] and i2.loads == ["hot"]
    assert "i1" not in fabric.view.model("hot").copies and fabric.view.model("cold").copies == {}
    assert fabric.view.loaded_on("cold") == []  # not used recently: loads on demand
    assert fabric.metric("meshserve_controller_copies_rehomed_total") == 1
    again = await fabric.round()
    assert again.rehomes_started == 0 and i2.loads == ["hot"]  # one-shot


async def test_expired_failures_and_stale_loading_claims_are_removed(fabric):
    await fabric.instance("i1")
    now = now_ms()
    await fabric.model("m", failures={"i1": LoadFailure("old", now - 10_000, now - 1),
                                      "i2": LoadFailure("fresh", now, now + 60_000)},
                       copies={"i1": CopyClaim("loading", now - 200_000)})
    report = await fabric.round()
    assert (report.failures_expired, report.claims_dropped) == (1, 1)
    record = fabric.view.model("m")
    assert set(record.failures) == {"i2"} and record.copies == {}
    assert fabric.metric("modelmesh_models_with_failure_total") == 1
    assert fabric.metric("modelmesh_models_managed_total") == 1
    # The fleet gauges are the term's: once it closes, this replica stops exporting them
    # (the next leader does), so one process in the fleet publishes them.
    await fabric.controller.close()
    assert fabric.metric("modelmesh_models_managed_total") is None
    assert "modelmesh_models_managed_total" not in generate_latest(fabric.metrics).decode()


async def test_hot_model_gets_another_copy(fabric):
    i1, i2 = await fabric.instance("i1"), await fabric.instance("i2")
    await fabric.model("m", last_used_ms=now_ms(), copies={"i1": CopyClaim("loaded", now_ms())})
    i1.rates["m"] = 10_000.0  # requests/minute: five times the per-copy threshold
    await fabric.hold(i1, "m")
    report = await fabric.round()
    assert report.adds_started == 1
    assert sorted(fabric.view.loaded_on("m")) == ["i1", "i2"] and i2.loads == ["m"]
    assert fabric.metric("meshserve_controller_copies_added_total") == 1
    assert fabric.metric("modelmesh_models_loaded_total") == 1


async def test_a_stored_scale_up_threshold_applies_on_the_next_round(fabric):
    i1, _, _ = [await fabric.instance(i) for i in ("i1", "i2", "i3")]
    await fabric.model("m", last_used_ms=now_ms(), copies={"i1": CopyClaim("loaded", now_ms())})
    i1.rates["m"] = 1_000.0  # requests/minute: under the default 2,000 per copy
    await fabric.hold(i1, "m")
    # 300 per copy: the model wants ceil(1000 / 300) = 4 copies, as many as 3 instances allow.
    await fabric.client.put(fabric.keys.config_item(PLACEMENT_CONFIG), {"scale_up_rate_per_copy": 300})
    await fabric.view.wait_for(lambda: fabric.view.placement(PlacementConfig()).scale_up_rate_per_copy == 300, 10)
    # One piece of work per model at a time: a copy per round. Under the default threshold the
    # model would stop at two (the second copy for regular use).
    assert (await fabric.round()).adds_started == 1
    assert (await fabric.round()).adds_started == 1
    assert sorted(fabric.view.loaded_on("m")) == ["i1", "i2", "i3"]


async def test_cold_copy_removed_when_space_is_short(fabric):
    old = now_ms() - 5 * HOUR_MS
    i1 = await fabric.instance("i1", capacity=MODEL_SIZE)
    i2 = await fabric.instance("i2", capacity=MODEL_SIZE)
    await fabric.model("m", last_used_ms=old)
    await fabric.hold(i1, "m", last_used_ms=old)
    await fabric.hold(i2, "m", last_used_ms=old)
    report = await fabric.round()
    assert report.removes_started == 1  # one is enough to leave 10% free
    assert len(fabric.view.copies_of("m")) == 1 and i1.unloads + i2.unloads == ["m"]
    assert fabric.metric("meshserve_controller_copies_removed_total") == 1


async def test_copies_of_unregistered_models_are_unloaded_after_two_rounds(fabric):
    i1 = await fabric.instance("i1")
    await fabric.hold(i1, "gone")
    first = await fabric.round()
    assert first.orphans_unloaded == 0 and i1.unloads == []  # might be a registration the view has not seen
    second = await fabric.round()
    assert second.orphans_unloaded == 1 and i1.unloads == ["gone"]
    assert fabric.view.copies_of("gone") == {}


async def test_vmodel_transition_loads_the_target_then_switches(fabric):
    i1 = await fabric.instance("i1")
    await fabric.model("m1")
    await fabric.model("m2")
    await fabric.vmodels.set(VModelChange("v", "m1"))
    await fabric.vmodels.set(VModelChange("v", "m2"))
    await fabric.view.wait_for(lambda: fabric.view.vmodel("v") and fabric.view.vmodel("v").transitioning, 10)
    await fabric.round()  # starts the target's load; m1 keeps serving meanwhile
    assert i1.loads == ["m2"]
    await fabric.view.wait_for(lambda: fabric.view.loaded_on("m2"), 10)
    report = await fabric.round()
    assert report.transitions_completed == 1
    record, _ = await fabric.vmodels.get("v")
    assert (record.active_model_id, record.target_model_id) == ("m2", "m2")
    assert (await fabric.registry.get("m1"))[0].vmodel_refs == ()


async def test_vmodel_target_that_fails_marks_transition_failed(fabric):
    await fabric.instance("i1", fail={"m2": "corrupt file"})
    await fabric.model("m1")
    await fabric.model("m2")
    await fabric.vmodels.set(VModelChange("v", "m1"))
    await fabric.vmodels.set(VModelChange("v", "m2"))
    await fabric.view.wait_for(lambda: fabric.view.vmodel("v") and fabric.view.vmodel("v").transitioning, 10)
    await fabric.round()  # the load fails and is recorded
    await fabric.view.wait_for(lambda: fabric.view.model("m2").failures, 10)
    report = await fabric.round()
    assert report.transitions_failed == 1
    record, _ = await fabric.vmodels.get("v")
    assert record.active_model_id == "m1" and "corrupt file" in record.failure


class _BrokenVModels(VModels):
    async def complete_transition(self, vmodel_id, target_model_id):
        if vmodel_id == "broken":
            raise RuntimeError("injected failure")
        return await super().complete_transition(vmodel_id, target_model_id)


async def test_one_failing_item_does_not_stop_the_round(etcd, keys):
    async for fabric in _fabric(etcd, keys, _BrokenVModels(etcd, keys)):
        i1 = await fabric.instance("i1")
        for m in ("a1", "a2", "b1", "b2"):
            await fabric.model(m)
        await fabric.hold(i1, "a2")
        await fabric.hold(i1, "b2")
        await fabric.hold(i1, "orphan")
        for v, (active, target) in {"broken": ("a1", "a2"), "fine": ("b1", "b2")}.items():
            await fabric.vmodels.set(VModelChange(v, active))
            await fabric.vmodels.set(VModelChange(v, target))
        # Both transitions in the view (not only both vmodels: the watch may still hold the first write).
        await fabric.view.wait_for(lambda: all((r := fabric.view.vmodel(v)) is not None and r.target_model_id == t
                                               for v, t in (("broken", "a2"), ("fine", "b2"))), 10)
        first = await fabric.round()
        assert first.errors == 1 and first.transitions_completed == 1
        second = await fabric.round()
        assert second.orphans_unloaded == 1  # later steps ran despite the failure
        assert (await fabric.vmodels.get("fine"))[0].active_model_id == "b2"
        assert fabric.metric("meshserve_controller_errors_total") == 2


async def test_vmodel_refs_are_repaired(fabric):
    await fabric.model("m", vmodel_refs=("ghost",))
    record = VModelRecord("v", "m", "m")
    await fabric.client.put(fabric.keys.vmodel("v"), to_document(record))
    await fabric.view.wait_for(lambda: fabric.view.vmodel("v"), 10)
    first = await fabric.round()  # one sighting may be a setVModel in progress: nothing changes yet
    assert first.refs_fixed == 0 and (await fabric.registry.get("m"))[0].vmodel_refs == ("ghost",)
    second = await fabric.round()
    assert second.refs_fixed == 2 and (await fabric.registry.get("m"))[0].vmodel_refs == ("v",)


# -- processes ---------------------------------------------------------------------------------------


def _start_controller(etcd_endpoint: str, keys: Keys, log_dir: Path, name: str, port: int | None = None,
                      *extra: str) -> tuple[subprocess.Popen, Path]:
    log_path = log_dir / f"controller-{name}.log"
    command = [sys.executable, "-m", "mesh.cli", "controller", "--etcd", etcd_endpoint, "--fabric", keys.fabric,
               "--host", "127.0.0.1", "--port", str(port or free_port()), "--metrics-port", "0",
               "--lease-ttl-s", "2", "--replica-id", name, *extra]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO)
    return process, log_path


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


async def test_two_controller_processes_elect_one_leader_and_fail_over(etcd_server, etcd, keys, tmp_path):
    procs = {name: _start_controller(etcd_server.endpoint, keys, tmp_path, name)[0] for name in ("a", "b")}
    try:
        async def leader():
            kv = await etcd.get(keys.leader)
            return kv.value["id"] if kv is not None else None

        first = await async_wait_until(leader, 30, "a controller to lead")
        assert first in procs
        other = "b" if first == "a" else "a"
        assert await leader() == first and procs[other].poll() is None  # one leader, the other waits
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        await async_wait_until(lambda: _is(leader, other), 15, f"controller {other} to lead after {first} died")
        # SIGTERM: the leader resigns (the key goes at once) and exits cleanly.
        procs[other].send_signal(signal.SIGTERM)
        assert await _wait_exit(procs[other]) == 0
        assert await etcd.get(keys.leader) is None
    finally:
        for process in procs.values():
            _stop(process)


async def test_a_controller_answers_serving_once_it_serves_the_management_api(etcd_server, keys, tmp_path):
    port = free_port()
    process, log_path = _start_controller(etcd_server.endpoint, keys, tmp_path, "h", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(service: str = "") -> int:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

            serving = health_pb2.HealthCheckResponse.SERVING
            await async_wait_until(lambda: _is(status, serving), 30, "the controller to answer SERVING")
            for service in ("mmesh.ModelMesh", "meshserve.admin.MeshAdmin"):
                assert await status(service) == serving, service
        process.send_signal(signal.SIGTERM)
        assert await _wait_exit(process) == 0, log_path.read_text()
    finally:
        _stop(process)


async def _is(read, expected) -> bool:
    return await read() == expected


async def _wait_exit(process: subprocess.Popen, timeout: float = 20) -> int:
    import asyncio

    return await asyncio.to_thread(process.wait, timeout)


def test_port_taken_exits_non_zero_with_a_message(etcd_server, keys, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process, log_path = _start_controller(etcd_server.endpoint, keys, tmp_path, "p", taken.getsockname()[1])
        try:
            assert process.wait(30) == 1
        finally:
            _stop(process)
    assert "meshserve controller: cannot start: cannot listen on 127.0.0.1" in log_path.read_text()


def test_unreachable_etcd_is_reported_and_retried(keys, tmp_path):
    process, log_path = _start_controller(f"127.0.0.1:{free_port()}", keys, tmp_path, "u")
    try:
        wait_until(lambda: "etcd unreachable" in log_path.read_text(), 30, "the unreachable-etcd line")
        assert process.poll() is None  # still retrying
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        _stop(process)
