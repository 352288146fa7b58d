"""How ModelInfer ends a call that fails: the error's status, and the outcome in the metrics.

A real grpc.aio server on loopback runs the real servicer over a stand-in service that
fails the way we choose (a bug cannot be provoked in a healthy runtime from outside).
"""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import pytest
from prometheus_client import CollectorRegistry

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from runtimes.errors import InvalidInput
from runtimes.grpc_servicers import InferenceServicer
from runtimes.metrics import RuntimeMetrics


class FailingService:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def infer(self, request):
        raise self.error


async def _call_failing(error: Exception) -> tuple[grpc.aio.AioRpcError, CollectorRegistry]:
    registry = CollectorRegistry()
    ready = asyncio.Event()
    ready.set()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(FailingService(error), manager=None, metrics=RuntimeMetrics(registry), ready=ready), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(model_name="m"), timeout=10)
    finally:
        await server.stop(None)
    return raised.value, registry


def _counted(registry: CollectorRegistry, code: str) -> float | None:
    return registry.get_sample_value("modelmesh_invoke_model_milliseconds_count", {"method": "ModelInfer", "code": code})


async def test_our_error_gets_its_status_and_is_counted_under_it():
    error, registry = await _call_failing(InvalidInput("input 'x': shape [2], expected [3]"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'x': shape [2], expected [3]"
    assert _counted(registry, "INVALID_ARGUMENT") == 1 and _counted(registry, "OK") is None


async def test_a_bug_is_internal_with_an_id_that_the_log_shows(caplog):
    with caplog.at_level(logging.ERROR, logger="runtimes.grpc_servicers"):
        error, registry = await _call_failing(ZeroDivisionError("division by zero"))
    assert error.code() is grpc.StatusCode.INTERNAL
    match = re.fullmatch(r"internal error \(id ([0-9a-f]{12})\); see the runtime's log", error.details())
    assert match, error.details()
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError
    assert _counted(registry, "INTERNAL") == 1
