"""Backpressure through the router: a copy whose runtime refuses a call as busy (its queue is
full) sends the call to another copy, and the model is reported saturated; a model error
that is also RESOURCE_EXHAUSTED is not retried. Real runtime processes with
`--max-concurrency 1 --max-queue 0`, so one call held in a gated model (`tests.support.
gated_estimator`) makes the copy busy, with no timing involved; tritonclient is the client.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from protos.limits import BUSY_TRAILER
from tests.support import gated_estimator
from tests.support.runtime_process import start_runtime_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture(scope="module")
def strict_runtimes(tmp_path_factory):
    """Two runtimes that run one request per model and queue none."""
    made = [start_runtime_process(tmp_path_factory.mktemp("strict"), "--max-concurrency", "1", "--max-queue", "0",
                                  capacity="256MiB") for _ in range(2)]
    yield made
    for runtime in made:
        assert runtime.stop() == 0, runtime.log()


class RecordingScaler:
    """Stands in for the cache miss's scale_up (`mesh.control.cache_miss`, tested with a real
    fabric in tests/mesh/control): records which models were reported saturated."""

    def __init__(self) -> None:
        self.saturated: list[str] = []

    async def scale_up(self, model_id: str) -> str | None:
        self.saturated.append(model_id)
        return None


def _call(address: str, model: str, **kwargs) -> float:
    tensor = grpcclient.InferInput("input-0", [1, 1], "FP64")
    tensor.set_data_from_numpy(np.array([[5.0]]))
    with grpcclient.InferenceServerClient(address) as client:
        return float(client.infer(model, [tensor], client_timeout=30, **kwargs).as_numpy("predict")[0])


def _busy_retries(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("meshserve_router_retries_total", {"reason": "busy"}) or 0.0


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
async def test_a_busy_copy_sends_the_call_to_another_and_reports_saturation(
        fabric, strict_runtimes, router_factory, tmp_path, streams):
    a, b = strict_runtimes
    model = f"slow-{'stream' if streams else 'unary'}"
    started = tmp_path / "started"
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    a.load(model, gated_estimator.gated_model(tmp_path / "a", gate_a, started, offset=0.0), "sklearn")
    b.load(model, gated_estimator.gated_model(tmp_path / "b", gate_b, started, offset=100.0), "sklearn")
    await fabric.publish("busy-a", a, [model])
    await fabric.publish("busy-b", b, [model])
    scaler, registry = RecordingScaler(), CollectorRegistry()
    running = await router_factory(fabric.view, None, registry=registry, scaler=scaler, instance_streams=streams,
                                   saturation_report_s=600)
    address = f"127.0.0.1:{running.port}"
    # One call straight to each runtime holds its only slot (the router does not know of them).
    held = [asyncio.create_task(asyncio.to_thread(_call, runtime.address, model)) for runtime in (a, b)]
    try:
        await asyncio.to_thread(wait_until, lambda: gated_estimator.started(started) == 2, 20, "both copies busy")
        # Every copy busy: the caller gets the runtime's backpressure answer, naming the limit, at once.
        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(_call, address, model)
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "max_concurrency 1 + max_queue 0" in caught.value.message()
        assert _busy_retries(registry) == 1  # the first busy copy sent it to the second
        assert scaler.saturated == [model]
        # Copy b frees up; a stays busy: whichever a call tries first, b answers it.
        gate_b.touch()
        assert await held[1] == 105.0
        results = [await asyncio.to_thread(_call, address, model) for _ in range(2)]
        assert results == [105.0, 105.0]
        assert _busy_retries(registry) > 1  # copies take turns: at least one of them tried a first, then b
        assert scaler.saturated == [model]  # reported once per saturation_report_s
    finally:
        gate_a.touch()
        gate_b.touch()
        await asyncio.gather(*held, return_exceptions=True)
    assert await held[0] == 5.0


async def test_the_busy_answer_is_marked_for_the_router(strict_runtimes, tmp_path):
    """The runtime's own answer: RESOURCE_EXHAUSTED with the BUSY_TRAILER naming the limit hit."""
    runtime = strict_runtimes[0]
    started, gate = tmp_path / "started", tmp_path / "gate"
    runtime.load("marked", gated_estimator.gated_model(tmp_path / "m", gate, started), "sklearn")
    held = asyncio.create_task(asyncio.to_thread(_call, runtime.address, "marked"))
    try:
        await asyncio.to_thread(wait_until, lambda: gated_estimator.started(started) == 1, 20, "the copy busy")
        request = pb.ModelInferRequest(model_name="marked")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 1])
        tensor.contents.fp64_contents.append(1.0)
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    request.SerializeToString(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(caught.value.trailing_metadata())[BUSY_TRAILER] == "model"
    finally:
        gate.touch()
    assert await held == 5.0
