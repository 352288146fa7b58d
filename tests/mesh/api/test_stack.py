"""One management stack, one set of fabric timings: a router and a controller of the same
fabric answer alike for a model whose load claim outlived a non-default loading timeout.

Real processes (`meshserve controller`, `meshserve router`) on a real etcd. The test holds
the fabric's leadership itself, so the controller never leads and never cleans the stale
claim up: both endpoints must judge the claim by the configured timeout, not by a default.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.domain.records import CopyClaim, ModelRecord, to_document
from mesh.etcd.client import EtcdClient
from mesh.etcd.election import Election
from mesh.etcd.session import LeaseSession
from protos import mesh_admin_pb2 as admin
from protos import mesh_admin_pb2_grpc as admin_grpc
from protos import model_mesh_pb2 as mm
from tests.support.fabric import Fabric
from tests.support.waiting import wait_until

S = mm.ModelStatusInfo
LOADING_TIMEOUT_MS = 3_000
CLAIM_AGE_MS = 20_000  # older than the configured timeout, far younger than the 90 s default


@pytest.fixture
def fabric(etcd_server, tmp_path):
    fabric = Fabric(tmp_path, etcd=etcd_server)
    yield fabric
    fabric.close()


async def test_router_and_controller_agree_on_a_claim_older_than_the_configured_timeout(fabric):
    client = EtcdClient([fabric.etcd.endpoint])
    try:
        async with LeaseSession(client, 30, name="test-leader") as session:
            async with Election(session, fabric.keys.leader, {"id": "the-test"}, name="test") as election:
                await election.campaign()  # the controller process stays a candidate
                since = int(time.time() * 1000) - CLAIM_AGE_MS
                record = ModelRecord("stale", "onnx", "/models/stale", copies={"gone": CopyClaim("loading", since)},
                                     registered_ms=since)
                await client.put(fabric.keys.model("stale"), to_document(record))

                timeout_flag = ("--loading-timeout-ms", str(LOADING_TIMEOUT_MS))
                endpoints = await asyncio.to_thread(
                    lambda: [fabric.add_controller(*timeout_flag), fabric.add_router(*timeout_flag)])

                def statuses() -> list[int]:
                    return [e.mesh.getModelStatus(mm.GetStatusRequest(modelId="stale"), timeout=5).status
                            for e in endpoints]

                def listed() -> list[int]:
                    return [next(m.state for m in admin_grpc.MeshAdminStub(e.channel).listModels(
                        admin.ListModelsRequest(), timeout=5).models if m.id == "stale") for e in endpoints]

                # Each view reads the record once it has synced; then both must say the same.
                await asyncio.to_thread(wait_until, lambda: S.NOT_FOUND not in statuses(), 30, "both views to sync")
                assert statuses() == [S.NOT_LOADED, S.NOT_LOADED]
                assert listed() == [S.NOT_LOADED, S.NOT_LOADED]
                assert (await client.get(fabric.keys.model("stale"))).value["copies"], \
                    "the claim was cleaned up: the controller led, and the test proves nothing"
    finally:
        await client.close()
