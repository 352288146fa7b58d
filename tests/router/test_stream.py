"""ModelInfer through the router on its stream to each instance (meshserve.stream.v1), and
ModelStreamInfer through the router, with tritonclient as the client and real runtimes.

Slow calls use `tests.support.gated_estimator` (a model that waits for a file the test
creates) so deadlines, cancellation and a runtime dying with calls in flight need no timing.
"""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.support import gated_estimator, models
from tests.support.runtime_process import start_runtime_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

OFFSETS = {"add": 1.0, "add10": 10.0, "add100": 100.0}
DATATYPES = list(models.ONNX_TYPES)
BIG = 16 << 20  # the router's default max_message_bytes


@pytest.fixture(scope="module")
def stream_store(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream-models")
    store = {name: models.add_onnx(root / name / "model.onnx", offset=offset).parent for name, offset in OFFSETS.items()}
    for datatype in DATATYPES:
        name = f"identity_{datatype.lower()}"
        store[name] = models.identity_onnx(root / name / "model.onnx", datatype).parent
    store["identity_big"] = models.identity_onnx(root / "identity_big" / "model.onnx", "FP32", shape=(None, None)).parent
    return store


@pytest.fixture(scope="module")
def stream_runtime(tmp_path_factory, stream_store):
    """One runtime holding every model of `stream_store` (one instance: every call shares its stream)."""
    runtime = start_runtime_process(tmp_path_factory.mktemp("stream-runtime"), capacity="512MiB")
    for name, path in stream_store.items():
        runtime.load(name, path, "onnx")
    yield runtime
    assert runtime.stop() == 0, runtime.log()


@pytest.fixture
async def routed(fabric, stream_runtime, stream_store, router_factory):
    await fabric.publish("s0", stream_runtime, list(stream_store))
    running = await router_factory(fabric.view, None)
    return running, f"127.0.0.1:{running.port}"


def _streamed(running, runtime) -> int:
    return running.router.streamed_calls().get(runtime.address, 0)


def _add_input(x: np.ndarray, module=grpcclient):
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def _infer_sync(address: str, model: str, x: np.ndarray, **kwargs):
    with grpcclient.InferenceServerClient(address) as client:
        return client.infer(model, _add_input(x), **kwargs)


# -- ModelInfer on the stream ------------------------------------------------------------------
async def test_sync_and_aio_clients_go_through_the_stream(routed, stream_runtime):
    running, address = routed
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = await asyncio.to_thread(_infer_sync, address, "add", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2)
    async with aioclient.InferenceServerClient(address) as client:
        result = await client.infer("add10", _add_input(x, aioclient), request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x + 10)
    assert result.get_response().id == "r-1"
    assert _streamed(running, stream_runtime) == 2


def datatype_sample(datatype: str) -> np.ndarray:
    """A [2, 3] tensor of `datatype` as tritonclient sends it."""
    if datatype == "BYTES":
        return np.array([[b"a", b"\xc3\xa9t\xc3\xa9", b""], [b"x y", b"12", b"zz"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BF16":
        return np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.5]], dtype=np.float32)  # tritonclient sends BF16 from float32
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(datatype.lower())
    return (np.arange(6).reshape(2, 3) * 3).astype(dtype)


async def identity_round_trip(address: str, datatype: str) -> None:
    """`datatype_sample(datatype)` through `identity_<datatype>` comes back as it went."""
    array = datatype_sample(datatype)

    def call():
        tensor = grpcclient.InferInput("IN", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        with grpcclient.InferenceServerClient(address) as client:
            return client.infer(f"identity_{datatype.lower()}", [tensor])

    result = await asyncio.to_thread(call)
    assert result.get_output("OUT").datatype == datatype
    out = result.as_numpy("OUT")
    np.testing.assert_array_equal(out.astype(np.float32) if datatype == "BF16" else out, array)


async def largest_request_round_trip(address: str) -> None:
    """As large a request as the router's 16 MiB limit lets through (4 KiB left for the rest
    of it) comes back from `identity_big` as it went."""
    x = np.random.default_rng(0).random((1, (BIG - 4096) // 4), dtype=np.float32)

    def call():
        tensor = grpcclient.InferInput("IN", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with grpcclient.InferenceServerClient(address) as client:
            return client.infer("identity_big", [tensor], client_timeout=60)

    result = await asyncio.to_thread(call)
    np.testing.assert_array_equal(result.as_numpy("OUT"), x)


@pytest.mark.parametrize("datatype", DATATYPES)
async def test_every_datatype_round_trips_on_the_stream(routed, stream_runtime, datatype):
    running, address = routed
    await identity_round_trip(address, datatype)
    assert _streamed(running, stream_runtime) == 1


async def test_16_mib_messages_pass_both_ways(routed, stream_runtime):
    running, address = routed
    await largest_request_round_trip(address)
    assert _streamed(running, stream_runtime) == 1
    # One over the limit is refused at the router, as without the stream, and the stream goes on.
    too_big = np.zeros((1, BIG // 4), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="larger than max"):
        await asyncio.to_thread(_infer_sync, address, "identity_big", too_big)
    small = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal((await asyncio.to_thread(_infer_sync, address, "add", small)).as_numpy("y"), small + 1)


async def test_a_reply_over_the_routers_limit_fails_alone(routed, stream_runtime):
    """`add` answers y and z, each as large as x: 9 MiB in (under the router's 16 MiB), 18 MiB
    out (over the limit, the runtime's as the router's). That call fails alone, as its unary
    reply would; the calls beside it on the stream do not."""
    running, address = routed
    big = np.ones(((9 << 20) // 16, 4), dtype=np.float32)
    small = np.ones((1, 4), dtype=np.float32)

    def call(x):
        try:
            return _infer_sync(address, "add", x, client_timeout=60).as_numpy("y")
        except InferenceServerException as error:
            return error

    big_result, *small_results = await asyncio.gather(*(asyncio.to_thread(call, x) for x in (big, small, small)))
    assert isinstance(big_result, InferenceServerException)
    assert big_result.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in big_result.message()
    assert [r.tolist() for r in small_results] == [(small + 1).tolist()] * 2
    assert _streamed(running, stream_runtime) == 3
    assert (await asyncio.to_thread(call, small)).tolist() == (small + 1).tolist()


async def concurrent_callers_failures(address: str) -> list[str]:
    """8 callers x 30 calls over three models with their own offsets (a reply handed to the
    wrong caller would show as a wrong value); what went wrong, if anything."""
    names = list(OFFSETS)
    failures: list[str] = []

    async def caller(client, n: int) -> None:
        for i in range(30):
            model = names[(n + i) % len(names)]
            x = np.full((1, 4), n * 1000 + i, dtype=np.float32)
            result = await client.infer(model, _add_input(x, aioclient), request_id=f"{n}-{i}")
            if result.get_response().id != f"{n}-{i}" or not np.array_equal(result.as_numpy("y"), x + OFFSETS[model]):
                failures.append(f"caller {n} call {i} ({model}): {result.as_numpy('y')}")

    async with aioclient.InferenceServerClient(address) as client:
        await asyncio.gather(*(caller(client, n) for n in range(8)))
    return failures


async def test_concurrent_callers_get_their_own_answers(routed, stream_runtime):
    """Many callers on one instance's stream get their own answers."""
    running, address = routed
    assert await concurrent_callers_failures(address) == []
    assert _streamed(running, stream_runtime) == 8 * 30


async def a_wrong_shape_keeps_the_models_status_and_message(address: str) -> None:
    """`add` called with x of shape [1, 3]: the runtime's INVALID_ARGUMENT and message reach the caller."""
    tensor = grpcclient.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))

    def call():
        with grpcclient.InferenceServerClient(address) as client:
            return client.infer("add", [tensor])

    with pytest.raises(InferenceServerException) as raised:
        await asyncio.to_thread(call)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 3]" in raised.value.message()


async def test_model_errors_keep_their_status_and_message(routed, stream_runtime):
    running, address = routed
    await a_wrong_shape_keeps_the_models_status_and_message(address)
    assert _streamed(running, stream_runtime) == 1


# -- slow calls: deadline, cancellation, a runtime dying -------------------------------------------
@pytest.fixture
def gated(tmp_path, own_runtime):
    """(gate file, started dir, model folder factory); the gate opens at teardown at the latest,
    before the test's runtimes stop (a predict still waiting would hold their exit)."""
    gate, started = tmp_path / "gate", tmp_path / "started"

    def model(name: str, offset: float = 0.0, gate_path: Path = gate) -> Path:
        return gated_estimator.gated_model(tmp_path / name, gate_path, started, offset)

    yield gate, started, model
    gate.touch()  # let any predict still waiting end (runtimes stop at teardown)


@pytest.fixture
def own_runtime(tmp_path_factory):
    made = []

    def start(*flags: str):
        runtime = start_runtime_process(tmp_path_factory.mktemp("gated-runtime"), *flags, capacity="256MiB")
        made.append(runtime)
        return runtime

    yield start
    for runtime in made:
        if runtime.process.poll() is None:
            runtime.stop()


def _failed_count(runtime, model: str) -> int:
    with grpcclient.InferenceServerClient(runtime.address) as client:
        return client.get_inference_statistics(model).model_stats[0].inference_stats.fail.count


def _one_row(value: float = 5.0) -> np.ndarray:
    return np.array([[value]], dtype=np.float64)


def _gated_infer(address: str, model: str = "slow", **kwargs) -> np.ndarray:
    tensor = grpcclient.InferInput("input-0", [1, 1], "FP64")
    tensor.set_data_from_numpy(_one_row())
    with grpcclient.InferenceServerClient(address) as client:
        return client.infer(model, [tensor], **kwargs).as_numpy("predict")


async def the_callers_deadline_reaches_the_runtime(fabric, start, gated, own_runtime):
    """A call whose caller's deadline passes while its model runs: DEADLINE_EXCEEDED, and the
    runtime gives it up (counted failed) while the model still waits on its gate.
    `start()` -> (running router, address); returns (running router, runtime)."""
    gate, started, model = gated
    runtime = own_runtime()
    runtime.load("slow", model("slow"), "sklearn")
    await fabric.publish("g0", runtime, ["slow"])
    running, address = await start()
    with pytest.raises(InferenceServerException) as raised:
        await asyncio.to_thread(_gated_infer, address, client_timeout=1.0)
    assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert gated_estimator.started(started) == 1
    await asyncio.to_thread(wait_until, lambda: _failed_count(runtime, "slow") == 1, 10, "the runtime to drop the call")
    assert not gate.exists()
    return running, runtime


async def a_caller_that_goes_away_cancels_the_call_on_the_runtime(fabric, start, gated, own_runtime):
    """As above, with the caller cancelling its call while the model runs."""
    gate, started, model = gated
    runtime = own_runtime()
    runtime.load("slow", model("slow"), "sklearn")
    await fabric.publish("g0", runtime, ["slow"])
    running, address = await start()
    tensor = aioclient.InferInput("input-0", [1, 1], "FP64")
    tensor.set_data_from_numpy(_one_row())
    async with aioclient.InferenceServerClient(address) as client:
        call = asyncio.create_task(client.infer("slow", [tensor], client_timeout=60))
        await asyncio.to_thread(wait_until, lambda: gated_estimator.started(started) == 1, 10, "the model to start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.to_thread(wait_until, lambda: _failed_count(runtime, "slow") == 1, 10, "the runtime to drop the call")
    assert not gate.exists()
    return running, runtime


async def calls_in_flight_on_a_killed_runtime_retry_elsewhere(fabric, start, gated, own_runtime, tmp_path,
                                                               all_in_flight=None):
    """4 calls wait on a runtime that never answers; a second copy appears and the first
    runtime is SIGKILLed: all 4 are answered by the second. `all_in_flight(running)`: true
    once the router has the 4 calls at the first runtime (when it can tell)."""
    gate, started, model = gated
    doomed, survivor = own_runtime(), own_runtime()
    doomed.load("slow", model("doomed", offset=0.0), "sklearn")  # never answers: its gate stays shut
    open_gate = tmp_path / "open"
    open_gate.touch()
    survivor.load("slow", model("survivor", offset=100.0, gate_path=open_gate), "sklearn")
    await fabric.publish("doomed", doomed, ["slow"])
    running, address = await start()
    calls = [asyncio.create_task(asyncio.to_thread(_gated_infer, address, client_timeout=60)) for _ in range(4)]
    # Two predicts run at once on the doomed runtime (its inference threads), the rest queue there.
    await asyncio.to_thread(wait_until, lambda: gated_estimator.started(started) >= 1, 10, "calls to reach the runtime")
    if all_in_flight is not None:
        await asyncio.to_thread(wait_until, lambda: all_in_flight(running), 10, "all 4 in flight")
    await fabric.publish("survivor", survivor, ["slow"])
    doomed.process.kill()
    doomed.process.wait(10)
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert [r.tolist() for r in results] == [[105.0]] * 4
    return running, survivor


def _python_router(fabric, router_factory):
    async def start():
        running = await router_factory(fabric.view, None)
        return running, f"127.0.0.1:{running.port}"

    return start


async def test_the_callers_deadline_reaches_the_runtime(fabric, router_factory, gated, own_runtime):
    running, runtime = await the_callers_deadline_reaches_the_runtime(fabric, _python_router(fabric, router_factory),
                                                                      gated, own_runtime)
    assert _streamed(running, runtime) == 1


async def test_a_caller_that_goes_away_cancels_the_call_on_the_runtime(fabric, router_factory, gated, own_runtime):
    running, runtime = await a_caller_that_goes_away_cancels_the_call_on_the_runtime(
        fabric, _python_router(fabric, router_factory), gated, own_runtime)
    assert _streamed(running, runtime) == 1


async def test_calls_in_flight_on_a_killed_runtime_retry_elsewhere(fabric, router_factory, gated, own_runtime, tmp_path):
    running, survivor = await calls_in_flight_on_a_killed_runtime_retry_elsewhere(
        fabric, _python_router(fabric, router_factory), gated, own_runtime, tmp_path,
        all_in_flight=lambda running: running.router.in_flight().get("doomed") == 4)
    assert _streamed(running, survivor) == 4
    assert running.router.in_flight() == {"doomed": 0, "survivor": 0}


async def test_a_runtime_without_the_stream_gets_unary_calls(fabric, router_factory, own_runtime, stream_store):
    """A runtime started with the stream service off stands in for an older runtime (or a
    foreign one behind `meshserve agent`): it answers the stream UNIMPLEMENTED."""
    runtime = own_runtime("--no-stream-service")
    runtime.load("add", stream_store["add"], "onnx")
    await fabric.publish("old", runtime, ["add"])
    running = await router_factory(fabric.view, None)
    address = f"127.0.0.1:{running.port}"
    x = np.ones((1, 4), dtype=np.float32)
    results = await asyncio.gather(*(asyncio.to_thread(_infer_sync, address, "add", x + i) for i in range(6)))
    assert [r.as_numpy("y").tolist() for r in results] == [(x + i + 1).tolist() for i in range(6)]
    assert _streamed(running, runtime) == 0
    assert (await asyncio.to_thread(_infer_sync, address, "add", x)).as_numpy("y").tolist() == (x + 1).tolist()


async def test_instance_streams_off_sends_every_call_unary(fabric, router_factory, stream_runtime, stream_store):
    await fabric.publish("s0", stream_runtime, list(stream_store))
    running = await router_factory(fabric.view, None, instance_streams=False)
    x = np.ones((1, 4), dtype=np.float32)
    result = await asyncio.to_thread(_infer_sync, f"127.0.0.1:{running.port}", "add", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert running.router.streamed_calls() == {}


# -- ModelStreamInfer through the router ---------------------------------------------------------
async def test_model_stream_infer_with_the_sync_client(routed):
    running, address = routed
    answers: queue.Queue = queue.Queue()

    def run():
        with grpcclient.InferenceServerClient(address) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for i, model in enumerate(["add", "add10", "missing", "add100", "add"]):
                x = np.full((1, 4), i, dtype=np.float32)
                client.async_stream_infer(model, _add_input(x), request_id=f"r{i}")
            got = [answers.get(timeout=30) for _ in range(5)]
            client.stop_stream()
        return got

    got = await asyncio.to_thread(run)
    by_id = {}
    errors = []
    for result, error in got:
        if error is not None:
            errors.append(error)
        else:
            by_id[result.get_response().id] = result.as_numpy("y").tolist()
    # The unknown model fails its own message; the stream goes on to serve the rest.
    assert len(errors) == 1 and "NOT_FOUND" in str(errors[0]) and "missing" in str(errors[0])
    assert by_id == {"r0": [[1.0] * 4], "r1": [[11.0] * 4], "r3": [[103.0] * 4], "r4": [[5.0] * 4]}
    # Answers come back in the order the requests went.
    assert [r.get_response().id if e is None else "error" for r, e in got] == ["r0", "r1", "error", "r3", "r4"]


async def test_model_stream_infer_with_the_aio_client(routed, stream_runtime):
    running, address = routed

    async def requests():
        for i in range(20):
            model = list(OFFSETS)[i % 3]
            x = np.full((1, 4), i, dtype=np.float32)
            yield {"model_name": model, "inputs": _add_input(x, aioclient), "request_id": f"{model}/{i}"}
        bad = aioclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
        yield {"model_name": "add", "inputs": [bad], "request_id": "bad"}

    async with aioclient.InferenceServerClient(address) as client:
        got = [item async for item in client.stream_infer(requests(), stream_timeout=60)]
    assert len(got) == 21
    for result, error in got[:20]:
        assert error is None
        model, i = result.get_response().id.split("/")
        assert result.as_numpy("y").tolist() == [[int(i) + OFFSETS[model]] * 4]
    result, error = got[20]
    assert result is None and "INVALID_ARGUMENT" in str(error) and "shape [1, 3]" in str(error)
    assert _streamed(running, stream_runtime) == 21  # each message went on the instance's stream


async def test_model_stream_infer_of_unparseable_bytes_answers_per_message(routed):
    running, address = routed
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")()
        await call.write(b"\xff\xff")
        reply = await call.read()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    assert reply.startswith(b"\x0a") and b"INVALID_ARGUMENT: malformed request" in reply
    assert await call.code() == grpc.StatusCode.OK


async def test_a_runtime_stopping_with_its_stream_open_sends_calls_elsewhere(fabric, router_factory, own_runtime,
                                                                             stream_store):
    leaving, staying = own_runtime(), own_runtime()
    for runtime in (leaving, staying):
        runtime.load("add", stream_store["add"], "onnx")
    await fabric.publish("leaving", leaving, ["add"])
    await fabric.publish("staying", staying, ["add"])
    running = await router_factory(fabric.view, None)
    address = f"127.0.0.1:{running.port}"
    x = np.ones((1, 4), dtype=np.float32)
    for _ in range(4):  # both streams open
        await asyncio.to_thread(_infer_sync, address, "add", x)
    assert _streamed(running, leaving) > 0 and _streamed(running, staying) > 0
    # SIGTERM: the runtime drains its streams (new calls UNAVAILABLE, so they retry) and exits.
    assert await asyncio.to_thread(leaving.stop) == 0, leaving.log()
    results = [await asyncio.to_thread(_infer_sync, address, "add", x + i) for i in range(6)]
    assert [r.as_numpy("y").tolist() for r in results] == [(x + i + 1).tolist() for i in range(6)]
