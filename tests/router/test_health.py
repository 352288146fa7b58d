"""grpc.health.v1.Health on the router's gRPC port: NOT_SERVING until its fabric view has read
etcd, then SERVING (for the whole server, inference and, when served, the management API)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.api.stack import build_management
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.timings import FabricTimings
from mesh.state.fabric_view import FabricView
from router.server import start_router
from router.settings import RouterSettings
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_the_router_serves_once_its_view_is_ready(etcd, keys, router_factory):
    view = FabricView(etcd, keys)  # not started: the router has not read the fabric yet
    try:
        running = await router_factory(view, None)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _status(stub) == NOT_SERVING
            assert await _status(stub, "inference.GRPCInferenceService") == NOT_SERVING
            await view.start()
            await async_wait_until(lambda: _is_serving(stub), 10, "the router to answer SERVING")
            assert await _status(stub, "inference.GRPCInferenceService") == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # no management API on this one
                await _status(stub, "mmesh.ModelMesh")
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await view.close()


async def _is_serving(stub: health_pb2_grpc.HealthStub) -> bool:
    return await _status(stub) == SERVING


async def test_the_management_api_it_serves_is_reported_too(fabric):
    settings = RouterSettings(host="127.0.0.1", port=0, rest_port=0, metrics_port=0)
    async with RuntimeClients() as runtimes, \
            build_management(fabric.client, fabric.keys, fabric.view, runtimes, FabricTimings()) as management:
        running = await start_router(settings, fabric.view, management.cache_miss, management=management)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await async_wait_until(lambda: _is_serving(stub), 10, "the router to answer SERVING")
                for service in ("inference.GRPCInferenceService", "mmesh.ModelMesh", "meshserve.admin.MeshAdmin"):
                    assert await _status(stub, service) == SERVING, service
        finally:
            await running.stop(0)
