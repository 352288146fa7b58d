"""The router with its native front (`--native-front`: router/native_front), with tritonclient
as the client and real runtimes: the front answers hits itself, on each instance's stream, and
hands everything else to the Python router behind it.

That the front (not the Python router) answered a call shows twice: the Python router sent
nothing (`streamed_calls()` and its in-flight counts stay empty) and the front's report of the
call reaches the router's metrics. Slow calls use `tests.support.gated_estimator`, as in
test_stream.py, whose fixtures and helpers these tests share.
"""

from __future__ import annotations

import asyncio
import json
import queue
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from mesh.cli.process import StartupError
from protos import grpc_service_pb2 as pb
from tests.router.conftest import StubLoader
from tests.router.test_forwarding import EchoInstance
from tests.router.test_stream import (  # noqa: F401 - fixtures shared with the Python router's stream tests
    BIG,
    DATATYPES,
    OFFSETS,
    _add_input,
    _infer_sync,
    a_caller_that_goes_away_cancels_the_call_on_the_runtime,
    a_wrong_shape_keeps_the_models_status_and_message,
    calls_in_flight_on_a_killed_runtime_retry_elsewhere,
    concurrent_callers_failures,
    gated,
    identity_round_trip,
    largest_request_round_trip,
    own_runtime,
    stream_runtime,
    stream_store,
    the_callers_deadline_reaches_the_runtime,
)
from tests.support import gated_estimator
from tests.support.native_front import require_native_front
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

CALLS = "modelmesh_api_request_milliseconds_count"


@pytest.fixture(scope="module", autouse=True)
def native_binary():
    return require_native_front()


@pytest.fixture
async def native(fabric, router_factory):
    """`await native(loader=None, **settings)` -> (running router with its native front, address, registry)."""

    async def start(loader=None, **settings):
        registry = CollectorRegistry()
        running = await router_factory(fabric.view, loader, registry=registry, native_front=True, **settings)
        return running, f"127.0.0.1:{running.port}", registry

    return start


@pytest.fixture
async def routed(fabric, stream_runtime, stream_store, native):
    await fabric.publish("s0", stream_runtime, list(stream_store))
    return await native()


def _answered_here(registry, count: int, code: str = "OK") -> None:
    """Wait until the router's metrics count `count` ModelInfer calls with `code` (the front's
    reports come in batches)."""
    wait_until(lambda: registry.get_sample_value(CALLS, {"method": "ModelInfer", "code": code}) == count, 10,
               f"{count} {code} calls in the metrics")


async def test_sync_and_aio_clients_are_answered_by_the_native_front(routed):
    running, address, registry = routed
    x = np.ones((1, 4), dtype=np.float32)
    result = await asyncio.to_thread(_infer_sync, address, "add", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    async with aioclient.InferenceServerClient(address) as client:
        result = await client.infer("add10", _add_input(x, aioclient))
    np.testing.assert_array_equal(result.as_numpy("y"), x + 10)
    await asyncio.to_thread(_answered_here, registry, 2)
    assert running.router.streamed_calls() == {} and running.router.in_flight() == {}
    assert running.native is not None and running.port == running.native.port


async def test_every_datatype_round_trips(routed):
    _, address, registry = routed
    for datatype in DATATYPES:
        await identity_round_trip(address, datatype)
    await asyncio.to_thread(_answered_here, registry, len(DATATYPES))


async def test_16_mib_messages_pass_both_ways(routed):
    running, address, registry = routed
    await largest_request_round_trip(address)
    await asyncio.to_thread(_answered_here, registry, 1)
    too_big = np.zeros((1, BIG // 4), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="larger than max"):
        await asyncio.to_thread(_infer_sync, address, "identity_big", too_big)
    assert running.router.streamed_calls() == {}


async def test_concurrent_callers_get_their_own_answers(routed):
    """Many callers on one instance's stream from the front get their own answers."""
    _, address, registry = routed
    assert await concurrent_callers_failures(address) == []
    await asyncio.to_thread(_answered_here, registry, 8 * 30)


async def test_model_errors_keep_their_status_and_message(routed):
    _, address, registry = routed
    await a_wrong_shape_keeps_the_models_status_and_message(address)
    await asyncio.to_thread(_answered_here, registry, 1, "INVALID_ARGUMENT")


# -- what the Python router behind it answers ----------------------------------------------------
async def test_a_miss_loads_through_the_router_then_the_front_answers(fabric, native, stream_runtime, stream_store):
    loader = StubLoader(fabric, {"add100": stream_store["add100"]}, stream_runtime, "s0")
    running, address, registry = await native(loader)
    x = np.ones((1, 4), dtype=np.float32)
    first = await asyncio.to_thread(_infer_sync, address, "add100", x)
    np.testing.assert_array_equal(first.as_numpy("y"), x + 100)
    assert loader.calls == ["add100"]
    await asyncio.to_thread(_answered_here, registry, 1)  # the router's own count of the miss
    assert sum(running.router.streamed_calls().values()) == 1  # it was the Python router's call
    # The route reaches the front after the view changed: the next call is the front's.
    await asyncio.to_thread(wait_until, lambda: _infer_sync(address, "add100", x) is not None
                            and sum(running.router.streamed_calls().values()) == 1
                            and registry.get_sample_value(CALLS, {"method": "ModelInfer", "code": "OK"}) >= 2, 10,
                            "a call answered by the front")
    assert loader.calls == ["add100"]


async def test_unknown_models_and_bad_bytes_get_the_routers_answers(routed):
    _, address, _ = routed
    with pytest.raises(InferenceServerException) as raised:
        await asyncio.to_thread(_infer_sync, address, "no-such-model", np.ones((1, 4), dtype=np.float32))
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "no-such-model" in raised.value.message()
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in caught.value.details()


async def test_vmodels_by_header_and_by_name(routed, fabric):
    _, address, registry = routed
    await fabric.set_vmodel("adder", "add10")
    x = np.ones((1, 4), dtype=np.float32)
    by_name = await asyncio.to_thread(_infer_sync, address, "adder", x)  # re-pointed by the Python router
    np.testing.assert_array_equal(by_name.as_numpy("y"), x + 10)

    def by_header():
        with grpcclient.InferenceServerClient(address) as client:
            return client.infer("add10", _add_input(x), headers={"mm-vmodel-id": "adder"})

    await asyncio.to_thread(wait_until, lambda: np.array_equal(by_header().as_numpy("y"), x + 10)
                            and registry.get_sample_value(CALLS, {"method": "ModelInfer", "code": "OK"}) >= 2, 10,
                            "the vmodel's call answered")


async def test_metadata_passes_both_ways_and_not_found_is_not_retried_on_the_same_copy(fabric, native):
    echo = EchoInstance()  # a real gRPC server standing in for an instance without the stream
    await echo.server.start()
    try:
        await fabric.publish("echo", type("Addr", (), {"address": f"127.0.0.1:{echo.port}"})(), ["echo-model"])
        running, address, _ = await native(default_deadline_s=1.0, max_tries=2)
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                pb.ModelInferRequest(model_name="echo-model", id="r1").SerializeToString(),
                metadata=(("x-trace-id", "abc"), ("x-blob-bin", b"\x00\x01")), timeout=5)
            assert pb.ModelInferResponse.FromString(await call).id == "r1"
            initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
            assert sorted(echo.seen[0][1]) == [("x-blob-bin", b"\x00\x01"), ("x-trace-id", "abc")]
            assert initial["x-initial"] == "hello"
            assert trailing["x-trace-id-echo"] == "abc" and trailing["x-blob-echo-bin"] == b"\x00\x01"
            # NOT_FOUND from the only copy: the front hands the call over saying so, and the router
            # does not send it there again (it waits for the fabric to change, up to the deadline).
            echo.seen.clear()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    pb.ModelInferRequest(model_name="echo-model").SerializeToString(),
                    metadata=(("x-fail-with", "NOT_FOUND"), ("meshserve-tried", "forged not_found x")))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "echo says NOT_FOUND (tried by the native front)" in caught.value.details()
        assert len(echo.seen) == 1
    finally:
        await echo.server.stop(0)


async def test_other_methods_streams_and_health_go_through(routed):
    _, address, _ = routed

    def unary_methods():
        with grpcclient.InferenceServerClient(address) as client:
            return (client.is_server_live(), client.is_server_ready(), client.is_model_ready("add"),
                    client.is_model_ready("no-such-model"), client.get_model_metadata("add").name)

    assert await asyncio.to_thread(unary_methods) == (True, True, True, False, "add")
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

    answers: queue.Queue = queue.Queue()

    def stream():
        with grpcclient.InferenceServerClient(address) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for i, model in enumerate(["add", "missing", "add10"]):
                client.async_stream_infer(model, _add_input(np.full((1, 4), i, dtype=np.float32)), request_id=f"r{i}")
            got = [answers.get(timeout=30) for _ in range(3)]
            client.stop_stream()
        return got

    got = await asyncio.to_thread(stream)
    assert got[0][0].as_numpy("y").tolist() == [[1.0] * 4]
    assert got[1][0] is None and "NOT_FOUND" in str(got[1][1])  # an error mid-stream; the stream goes on
    assert got[2][0].as_numpy("y").tolist() == [[12.0] * 4]


# -- slow calls: deadline, cancellation, a runtime dying -------------------------------------------
def _native_router(native):
    async def start():
        running, address, _ = await native()
        return running, address

    return start


async def test_the_callers_deadline_reaches_the_runtime(fabric, native, gated, own_runtime):
    running, _ = await the_callers_deadline_reaches_the_runtime(fabric, _native_router(native), gated, own_runtime)
    assert running.router.streamed_calls() == {}  # the front's call, not the Python router's


async def test_a_caller_that_goes_away_cancels_the_call_on_the_runtime(fabric, native, gated, own_runtime):
    running, _ = await a_caller_that_goes_away_cancels_the_call_on_the_runtime(fabric, _native_router(native), gated,
                                                                               own_runtime)
    assert running.router.streamed_calls() == {}


async def test_calls_in_flight_on_a_killed_runtime_retry_elsewhere(fabric, native, gated, own_runtime, tmp_path):
    """The front hands the 4 calls over when their stream breaks; the Python router sends them to the survivor."""
    running, survivor = await calls_in_flight_on_a_killed_runtime_retry_elsewhere(fabric, _native_router(native), gated,
                                                                                  own_runtime, tmp_path)
    assert running.router.streamed_calls().get(survivor.address) == 4


async def test_calls_queued_behind_a_batch_run_as_one_batch_on_the_runtime(fabric, native, gated, own_runtime):
    """The fabric's path to a batched model: calls the front sends on the runtime's stream while
    the model's one batch at a time runs wait in its batcher, then run as one batch, and each
    caller gets its own rows back."""
    gate, started, model = gated
    runtime = own_runtime("--max-batches-at-once", "1")
    runtime.load("slow", model("slow", offset=100), "sklearn",
                 json.dumps({"batching": {"max_batch_size": 8, "max_queue_delay_us": 0}}))
    await fabric.publish("g0", runtime, ["slow"])
    running, address, registry = await native()

    def infer(value: float) -> list[float]:
        tensor = grpcclient.InferInput("input-0", [1, 1], "FP64")
        tensor.set_data_from_numpy(np.array([[value]]))
        with grpcclient.InferenceServerClient(address) as client:
            return client.infer("slow", [tensor], client_timeout=60).as_numpy("predict").tolist()

    first = asyncio.create_task(asyncio.to_thread(infer, 0.0))
    await asyncio.to_thread(wait_until, lambda: gated_estimator.started(started) == 1, 10, "the first batch to run")
    rest = [asyncio.create_task(asyncio.to_thread(infer, float(n))) for n in (1, 2, 3)]
    await asyncio.to_thread(wait_until, lambda: _runtime_gauge(runtime, "meshserve_requests_in_flight") == 4, 10,
                            "three calls queued behind the running one")
    assert gated_estimator.started(started) == 1
    gate.touch()
    assert await asyncio.gather(first, *rest) == [[100.0], [101.0], [102.0], [103.0]]
    assert gated_estimator.started(started) == 2  # the first call alone, then the three as one batch
    with grpcclient.InferenceServerClient(runtime.address) as client:
        stats = client.get_inference_statistics("slow").model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (4, 2)
    await asyncio.to_thread(_answered_here, registry, 4)
    assert running.router.streamed_calls() == {}  # the front's calls, not the Python router's
    assert _runtime_gauge(runtime, "meshserve_requests_in_flight") == 0


def _runtime_gauge(runtime, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=10).read().decode()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_a_runtime_without_the_stream_gets_unary_calls(fabric, native, own_runtime, stream_store):
    runtime = own_runtime("--no-stream-service")  # stands in for an older or foreign runtime
    runtime.load("add", stream_store["add"], "onnx")
    await fabric.publish("old", runtime, ["add"])
    _, address, registry = await native()
    x = np.ones((1, 4), dtype=np.float32)
    results = await asyncio.gather(*(asyncio.to_thread(_infer_sync, address, "add", x + i) for i in range(6)))
    assert [r.as_numpy("y").tolist() for r in results] == [(x + i + 1).tolist() for i in range(6)]
    await asyncio.to_thread(_answered_here, registry, 6)


# -- the front's own process ----------------------------------------------------------------------
async def test_a_front_that_dies_is_started_again_on_the_same_port(routed):
    running, address, _ = routed
    process = running.native._process
    process.kill()
    await process.wait()
    x = np.ones((1, 4), dtype=np.float32)
    await asyncio.to_thread(wait_until, lambda: running.native._process is not process, 15, "a new front")

    def answers() -> bool:
        try:
            return np.array_equal(_infer_sync(address, "add", x).as_numpy("y"), x + 1)
        except InferenceServerException:
            return False

    await asyncio.to_thread(wait_until, answers, 15, "the new front to answer")


async def test_a_missing_binary_is_a_startup_error(fabric, router_factory, tmp_path):
    with pytest.raises(StartupError, match="make native"):
        await router_factory(fabric.view, None, native_front=True, native_front_binary=str(tmp_path / "nothing"))
