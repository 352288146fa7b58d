"""The dashboard's HTTP side (JSON, server-sent events, page and files) on a router in-process.

Real etcd, real runtime processes holding the models, the router's real REST app; the
instance records are published by the test as agents publish them (`Fabric.publish`), and
`StubLoader` stands in for the placement layer's cache miss (see `tests/router/conftest.py`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient

from mesh.api.mesh_admin import MeshAdminServicer
from mesh.domain.records import ModelRecord, to_document
from mesh.state.fabric_view import FabricView
from router.dashboard.service import Dashboard
from router.dashboard.web import CONTENT_SECURITY_POLICY
from router.traffic import TrafficCounters
from tests.router.conftest import StubLoader
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def _register(fabric, model_id: str, path: str = "/models/x") -> None:
    record = ModelRecord(model_id, "onnx", path, registered_ms=int(time.time() * 1000))
    await fabric.client.put(fabric.keys.model(model_id), to_document(record))
    await fabric.view.wait_for(lambda: fabric.view.model(model_id) is not None, 10)


@pytest.fixture
async def served(fabric, runtimes, router_factory, model_store):
    """i0 holds `add` and `identity_bytes` (both registered); `add10` is registered and loads on a miss."""
    for model_id in ("add", "identity_bytes", "add10"):
        await _register(fabric, model_id, str(model_store[model_id]))
    await fabric.publish("i0", runtimes[0], ["add", "identity_bytes"])
    loader = StubLoader(fabric, {"add10": model_store["add10"]}, runtimes[0], "i0", held=["add", "identity_bytes"])
    running = await router_factory(fabric.view, loader, dashboard_sample_s=0.2)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.rest_port}") as session:
        yield running, session


async def _snapshot(session: aiohttp.ClientSession) -> dict:
    async with session.get("/dashboard/api/snapshot") as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        return await response.json()


class EventStream:
    """Reads `event: snapshot` documents off an open server-sent events response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict | None:
        """The next snapshot document; None when the stream ended."""
        event, data = None, []
        while True:
            line = await self.response.content.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and event == "snapshot":
                return json.loads("\n".join(data))
            elif not line:
                event, data = None, []

    async def until_end(self, timeout: float) -> None:
        """Reads on until the server closes the stream."""
        async with asyncio.timeout(timeout):
            while await self.next() is not None:
                pass

    async def until(self, predicate, timeout: float) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                document = await self.next()
                assert document is not None, "the stream ended"
                if predicate(document):
                    return document


async def test_the_json_holds_the_admin_apis_own_figures(served, fabric):
    _, session = served
    document = await _snapshot(session)
    status, models = MeshAdminServicer(fabric.view).status_and_models()
    assert [i["id"] for i in document["instances"]] == [i.id for i in status.instances] == ["i0"]
    [i0] = document["instances"]
    assert (i0["used_bytes"], i0["capacity_bytes"], i0["models_total"]) == \
        (status.instances[0].used_bytes, status.instances[0].capacity_bytes, status.instances[0].models_total)
    assert i0["capacity_bytes"] == 256 << 20 and i0["models_total"] == 2
    assert sorted(m["id"] for m in i0["models"]) == ["add", "identity_bytes"]
    fleet = document["fleet"]
    assert (fleet["models_registered"], fleet["models_loaded"], fleet["models_loading"], fleet["models_failed"]) == \
        (status.models_registered, status.models_loaded, status.models_loading, status.models_failed) == (3, 2, 0, 0)
    assert fleet["capacity_bytes"] == status.capacity_bytes and fleet["copies"] == 2
    by_id = {m["id"]: m for m in document["models"]}
    assert [m.id for m in models.models] == sorted(by_id) == ["add", "add10", "identity_bytes"]
    assert by_id["add"]["state"] == "LOADED" and by_id["add"]["copies"] == [{"instance_id": "i0", "state": "LOADED"}]
    assert by_id["add10"]["state"] == "NOT_LOADED" and by_id["add10"]["copies"] == []
    assert document["in_sync"] is True and document["history"]["sample_s"] == 0.2


async def test_events_push_a_model_registered_after_connecting(served, fabric):
    _, session = served
    async with session.get("/dashboard/api/events") as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        stream = EventStream(response)
        first = await stream.next()
        assert first is not None and "late" not in {m["id"] for m in first["models"]}
        await _register(fabric, "late")
        pushed = await stream.until(lambda d: "late" in {m["id"] for m in d["models"]}, 10)
        assert pushed["version"] > first["version"] and pushed["fleet"]["models_registered"] == 4


async def test_history_counts_this_routers_calls_misses_and_loads(served):
    running, session = served
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    async with aioclient.InferenceServerClient(f"127.0.0.1:{running.port}") as client:
        for model_id in ("add", "add", "add10", "add"):
            tensor = aioclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            await client.infer(model_id, [tensor])

    async def counted():
        samples = (await _snapshot(session))["history"]["samples"]
        totals = {k: sum(s[k] for s in samples) for k in ("requests", "cache_misses", "loads")}
        return totals if totals["requests"] >= 4 and totals["loads"] >= 1 else None

    totals = await async_wait_until(counted, 20, "the samples to count the calls")
    assert totals == {"requests": 4, "cache_misses": 1, "loads": 1}
    samples = (await _snapshot(session))["history"]["samples"]
    missed = [s for s in samples if s["cache_misses"]]
    assert len(missed) == 1 and missed[0]["miss_delay_ms"] > 0
    assert all(s["capacity_bytes"] == 256 << 20 for s in samples)


async def test_the_page_and_its_files_come_from_the_package_with_a_strict_policy(served):
    _, session = served
    async with session.get("/dashboard") as response:
        page = await response.text()
        assert response.status == 200 and response.content_type == "text/html"
        policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    # Everything the page loads is on this origin, under /dashboard/static/; nothing inline.
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references and all(r.startswith("/dashboard/") for r in references), references
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    for path, kind in (("/dashboard/static/dashboard.js", "text/javascript"), ("/dashboard/static/dashboard.css", "text/css")):
        async with session.get(path) as response:
            assert response.status == 200 and response.content_type == kind and len(await response.read()) > 1000
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    async with session.get("/dashboard/static/dashboard.js") as response:
        script = await response.text()
    assert "innerHTML" not in script and "http://" not in script.replace("http://www.w3.org/2000/svg", "")
    for path in ("/dashboard/static/index.html", "/dashboard/static/..%2Fweb.py", "/dashboard/static/nope.js"):
        async with session.get(path) as response:
            assert response.status == 404, path


async def test_stopping_the_router_ends_open_streams(served):
    running, session = served
    async with session.get("/dashboard/api/events") as response:
        stream = EventStream(response)
        assert await stream.next() is not None
        await running.stop(0)
        assert await stream.until_end(10) is None


async def test_before_the_first_read_of_etcd_both_endpoints_answer_503(etcd, keys, router_factory):
    view = FabricView(etcd, keys)  # never started: it has not read the fabric
    try:
        running = await router_factory(view, None)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{running.rest_port}") as session:
            for path in ("/dashboard/api/snapshot", "/dashboard/api/events"):
                async with session.get(path) as response:
                    assert response.status == 503, path
                    assert "not read the fabric" in (await response.json())["error"]
            async with session.get("/dashboard") as response:
                assert response.status == 200  # the page itself retries until the router is ready
    finally:
        await view.close()


async def test_changes_during_the_pause_between_pushes_become_one_push(fabric):
    paused, release = asyncio.Event(), asyncio.Event()

    async def held_pause(seconds: float) -> None:
        paused.set()
        await release.wait()
        release.clear()

    dashboard = Dashboard(fabric.view, MeshAdminServicer(fabric.view), TrafficCounters(), sample_s=600, pause=held_pause)
    await dashboard.start()
    try:
        version, _ = dashboard.current()
        waiting = asyncio.ensure_future(dashboard.next_document(version, 30))
        await asyncio.sleep(0)  # let the waiter register, so the pusher builds for it
        await _register(fabric, "first")
        version, _ = await waiting  # the first push after a change (the view's own wake-ups may come first)
        await asyncio.wait_for(paused.wait(), 10)  # then the pusher pauses
        waiting = asyncio.ensure_future(dashboard.next_document(version, 30))
        for model_id in ("second", "third", "fourth"):
            await _register(fabric, model_id)
        assert not waiting.done()  # nothing is pushed during the pause
        release.set()
        newer, body = await waiting
        assert newer == version + 1  # one push for the three changes
        assert {m["id"] for m in json.loads(body)["models"]} == {"first", "second", "third", "fourth"}
    finally:
        release.set()
        await dashboard.close()
