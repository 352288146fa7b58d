"""The admin API (meshserve.admin.MeshAdmin): the pure summaries, then the servicer on a
real gRPC server over a real FabricView on a real etcd, with records written by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mesh.api.mesh_admin import MeshAdminServicer, summarize_fabric, summarize_models
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.domain.records import CopyClaim, HeldCopy, InstanceRecord, LoadFailure, ModelRecord, VModelRecord, to_document
from protos import mesh_admin_pb2 as admin
from protos import mesh_admin_pb2_grpc as admin_grpc
from protos import model_mesh_pb2 as mm

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

S = mm.ModelStatusInfo
NOW = 1_000_000_000  # ms; the clock every test passes in
MiB = 1 << 20


def fabric_records():
    """Two instances (one draining), four models in each state, one vmodel."""
    a = InstanceRecord("a", "10.0.0.1:8085", 100 * MiB, used_bytes=30 * MiB, loading_bytes=10 * MiB, zone="z1",
                       request_rate_per_min=12.0, copies={
                           "hot": HeldCopy(20 * MiB, NOW - 2_000, rate_per_min=12.0),
                           "cold": HeldCopy(10 * MiB, NOW - 60_000),
                           "new": HeldCopy(10 * MiB, NOW, loading=True),
                       })
    b = InstanceRecord("b", "10.0.0.2:8085", 50 * MiB, used_bytes=20 * MiB, shutting_down=True, copies={
        "hot": HeldCopy(20 * MiB, NOW - 900_000, rate_per_min=3.0),  # older, but b is draining
    })
    models = {
        "hot": ModelRecord("hot", "onnx", "s3://b/hot", last_used_ms=NOW - 5_000,
                           copies={"a": CopyClaim("loaded", NOW - 10_000), "b": CopyClaim("loaded", NOW - 10_000)}),
        "cold": ModelRecord("cold", "onnx", "s3://b/cold", size_estimate_bytes=MiB),
        "new": ModelRecord("new", "pytorch", "/models/new", copies={"a": CopyClaim("loading", NOW - 1_000)}),
        "bad": ModelRecord("bad", "onnx", "file:///nowhere", failures={
            "a": LoadFailure("no such file: /nowhere", NOW - 3_000, NOW + 60_000),
            "b": LoadFailure("older failure", NOW - 9_000, NOW + 60_000),
        }),
        "idle": ModelRecord("idle", "onnx", "s3://b/idle", size_estimate_bytes=7, failures={
            "a": LoadFailure("expired", NOW - 900_000, NOW - 1),
        }),
    }
    vmodels = {"v": VModelRecord("v", "hot", "new")}
    return models, {"a": a, "b": b}, vmodels


def test_summarize_models_states_copies_failures_and_vmodels():
    models, instances, vmodels = fabric_records()
    summaries = {m.id: m for m in summarize_models(models, instances, vmodels, NOW)}
    assert list(summaries) == ["bad", "cold", "hot", "idle", "new"]  # sorted by id
    hot = summaries["hot"]
    assert (hot.type, hot.path, hot.state) == ("onnx", "s3://b/hot", S.LOADED)
    assert [(c.instance_id, c.status) for c in hot.copies] == [("a", S.LOADED), ("b", S.LOADED)]
    assert hot.size_bytes == 20 * MiB and hot.request_rate_per_min == 15.0
    assert hot.last_used_ms == NOW - 2_000 and list(hot.vmodels) == ["v"]
    assert summaries["cold"].state == S.LOADED and summaries["cold"].size_bytes == 10 * MiB  # held, not estimated
    new = summaries["new"]
    assert new.state == S.LOADING and [(c.instance_id, c.status) for c in new.copies] == [("a", S.LOADING)]
    assert list(new.vmodels) == ["v"]
    bad = summaries["bad"]
    assert bad.state == S.LOADING_FAILED and not bad.copies
    assert bad.last_failure == "a: no such file: /nowhere"  # the newest live failure
    idle = summaries["idle"]
    assert (idle.state, idle.last_failure, idle.size_bytes, idle.last_used_ms) == (S.NOT_LOADED, "", 7, 0)


def test_summarize_fabric_instances_lru_ages_and_counts():
    models, instances, vmodels = fabric_records()
    status = summarize_fabric(models, instances, vmodels, NOW)
    a, b = status.instances
    assert (a.id, a.address, a.zone, a.capacity_bytes, a.used_bytes, a.loading_bytes) == (
        "a", "10.0.0.1:8085", "z1", 100 * MiB, 30 * MiB, 10 * MiB)
    assert (a.models_total, a.loads_in_progress, a.request_rate_per_min, a.shutting_down) == (3, 1, 12.0, False)
    assert a.lru_age_seconds == 60.0  # its oldest loaded copy; the loading one does not count
    assert b.shutting_down and b.lru_age_seconds == 900.0
    # Global LRU: the oldest loaded copy on an instance that stays (b is draining).
    assert status.global_lru_age_seconds == 60.0
    assert (status.models_registered, status.models_loaded, status.models_loading, status.models_failed) == (5, 2, 1, 1)
    assert status.vmodels == 1
    assert (status.capacity_bytes, status.used_bytes, status.time_ms, status.in_sync) == (150 * MiB, 50 * MiB, NOW, True)


def test_summaries_of_an_empty_fabric_and_a_clock_behind():
    empty = summarize_fabric({}, {}, {}, NOW, in_sync=False)
    assert (empty.global_lru_age_seconds, empty.models_registered, len(empty.instances), empty.in_sync) == (0, 0, 0, False)
    # An instance whose clock is ahead of ours: ages are 0, never negative.
    ahead = InstanceRecord("x", "h:1", MiB, copies={"m": HeldCopy(1, NOW + 5_000)})
    status = summarize_fabric({}, {"x": ahead}, {}, NOW)
    assert status.instances[0].lru_age_seconds == 0 and status.global_lru_age_seconds == 0
    # A copy of a model the registry does not know (unregistered, not yet unloaded) is no model.
    assert summarize_models({}, {"x": ahead}, {}, NOW) == []


# -- the servicer over a real view -------------------------------------------------------------


class Served:
    def __init__(self, view: FabricView, stub: admin_grpc.MeshAdminStub, client: EtcdClient, keys: Keys) -> None:
        self.view, self.stub, self.client, self.keys = view, stub, client, keys

    async def write(self, models, instances, vmodels) -> None:
        for model_id, record in models.items():
            await self.client.put(self.keys.model(model_id), to_document(record))
        for instance_id, record in instances.items():
            await self.client.put(self.keys.instance(instance_id), to_document(record))
        for vmodel_id, record in vmodels.items():
            await self.client.put(self.keys.vmodel(vmodel_id), to_document(record))
        await self.view.wait_for(lambda: (len(self.view.model_ids()) == len(models)
                                          and len(self.view.all_instances()) == len(instances)
                                          and len(self.view.vmodel_ids()) == len(vmodels)), 10)


async def _serve(view: FabricView, client: EtcdClient, keys: Keys) -> AsyncIterator[Served]:
    server = grpc.aio.server()
    admin_grpc.add_MeshAdminServicer_to_server(MeshAdminServicer(view, clock=lambda: NOW), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(view, admin_grpc.MeshAdminStub(channel), client, keys)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def served(etcd, keys) -> AsyncIterator[Served]:
    async with FabricView(etcd, keys) as view:
        await view.wait_in_sync(10)  # watching, not only read once
        async for made in _serve(view, etcd, keys):
            yield made


async def test_servicer_answers_from_the_watched_view(served):
    empty = await served.stub.fabricStatus(admin.FabricStatusRequest())
    assert (empty.models_registered, len(empty.instances), empty.in_sync) == (0, 0, True)
    models, instances, vmodels = fabric_records()
    await served.write(models, instances, vmodels)
    listed = await served.stub.listModels(admin.ListModelsRequest())
    assert listed.in_sync
    assert list(listed.models) == summarize_models(models, instances, vmodels, NOW)
    status = await served.stub.fabricStatus(admin.FabricStatusRequest())
    assert status == summarize_fabric(models, instances, vmodels, NOW)
    # The plain calls (the router's dashboard reads these) are the same replies, and the
    # pair from one view state agrees with each of them.
    servicer = MeshAdminServicer(served.view, clock=lambda: NOW)
    assert servicer.fabric_status() == status and servicer.list_models() == listed
    assert servicer.status_and_models() == (status, listed)
    # A change in etcd shows in the next answer (the view follows its watch).
    await served.client.delete(served.keys.model("bad"))
    await served.view.wait_for(lambda: served.view.model("bad") is None, 10)
    status = await served.stub.fabricStatus(admin.FabricStatusRequest())
    assert (status.models_registered, status.models_failed) == (4, 0)


async def test_a_view_that_never_read_etcd_answers_unavailable(etcd, keys):
    view = FabricView(etcd, keys)  # not started: it has not read the fabric
    async for served in _serve(view, etcd, keys):
        for call in (served.stub.listModels(admin.ListModelsRequest()),
                     served.stub.fabricStatus(admin.FabricStatusRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not read the fabric from etcd yet" in caught.value.details()
