"""grpc.health.v1.Health on the runtime's port: SERVING once READY (a real runtime process),
NOT_SERVING once it drains on stop (an in-process runtime, watched over the wire)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtimes.server import start_runtime
from runtimes.settings import RuntimeSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def stub(runtime):
    with grpc.insecure_channel(runtime.address) as channel:
        yield health_pb2_grpc.HealthStub(channel)


@pytest.mark.parametrize("service", ["", "inference.GRPCInferenceService", "mmesh.ModelRuntime"])
def test_a_ready_runtime_answers_serving(stub, service):
    assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING


def test_a_service_it_does_not_serve_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as refused:
        stub.Check(health_pb2.HealthCheckRequest(service="mmesh.ModelMesh"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_draining_runtime_answers_not_serving_then_stops_answering(tmp_path):
    settings = RuntimeSettings(host="127.0.0.1", port=0, metrics_port=0, capacity=64 << 20, models_dir=tmp_path / "cache")
    running = await start_runtime(settings)
    stopping = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="mmesh.ModelRuntime"), timeout=10)
            assert (await watch.read()).status == SERVING
            # A call in flight (the watch) is let finish within the grace; it hears NOT_SERVING.
            stopping = asyncio.create_task(running.stop(grace=1))
            assert (await watch.read()).status == NOT_SERVING
            try:
                status = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
            except grpc.aio.AioRpcError as error:  # a stopping server takes no new calls
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            else:
                assert status == NOT_SERVING
            watch.cancel()
            await stopping
    finally:
        if stopping is None:
            await running.stop(0)
