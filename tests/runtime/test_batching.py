"""Dynamic batching with real ONNX Runtime models: in a model manager of this process, through
a real gRPC server in this process (tritonclient calling), and through a real runtime
process (tritonclient's unary calls and the router's stream frames).

Where a batch must be held in flight (a deadline passing in the queue, an unload waiting),
`HeldModel` stands in: the real ONNX model behind a gate the test opens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import meshserve_stream_pb2 as spb
from runtimes.backends import BackendRegistry, Device, LoadedModel
from runtimes.backends.onnx_backend import OnnxBackend
from runtimes.batching_policy import BatchingPolicy, batching_policy
from runtimes.dataplane import InferenceService
from runtimes.errors import Busy, DeadlineExceeded, InvalidInput, InvalidModel
from runtimes.grpc_servicers import InferenceServicer
from runtimes.model_manager import ManagerConfig, ModelManager, State
from tests.runtime.test_model_manager import LocalFiles
from tests.runtime.test_stream_service import CALLS
from tests.support import models
from tests.support.waiting import async_wait_until


def _key(**batching) -> str:
    return json.dumps({"batching": batching})


@pytest.fixture
async def manager():
    manager = ModelManager(ManagerConfig(capacity_bytes=1 << 30, max_concurrency=1, max_queue=4),
                           BackendRegistry.default(), LocalFiles())
    yield manager
    await manager.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching-models")
    return {
        "mlp": models.mlp_onnx(root / "mlp" / "model.onnx", (8, 16, 3)).parent,
        "lookup": models.lookup_onnx(root / "lookup" / "model.onnx", [10, 20, 30, 40]).parent,
        "identity": models.identity_onnx(root / "identity" / "model.onnx", "INT32", shape=(None, None)).parent,
        "fixed": models.identity_onnx(root / "fixed" / "model.onnx", "INT32", shape=(2, 3)).parent,
        "add": models.add_onnx(root / "add" / "model.onnx").parent,
    }


async def test_batched_outputs_equal_the_same_requests_run_alone(manager, store):
    rows = (1, 2, 3, 2)  # 8 rows: the batch is due as soon as all have arrived
    await manager.load("mlp", "onnx", str(store["mlp"]), _key(max_batch_size=8, max_queue_delay_us=10_000_000))
    await manager.load("lookup", "onnx", str(store["lookup"]), _key(max_batch_size=8, max_queue_delay_us=10_000_000))
    rng = np.random.default_rng(3)
    floats = [rng.standard_normal((n, 8)).astype(np.float32) for n in rows]
    indexes = [rng.integers(0, 4, (n, 5)) for n in rows]
    batched_floats = await asyncio.gather(*(manager.run("mlp", {"x": x}, []) for x in floats))
    batched_ints = await asyncio.gather(*(manager.run("lookup", {"IDX": i}, []) for i in indexes))
    for name in ("mlp", "lookup"):
        stats = manager.get(name).stats
        assert (stats.inference_count, stats.execution_count, list(stats.batches)) == (4, 1, [8])
    alone = manager.get("mlp").model, manager.get("lookup").model  # the same sessions, one request a call
    for x, result in zip(floats, batched_floats):
        np.testing.assert_allclose(result["y"], alone[0].infer({"x": x}, [])["y"], rtol=1e-5, atol=1e-6)
    for i, result in zip(indexes, batched_ints):
        assert result["OUT"].tobytes() == alone[1].infer({"IDX": i}, [])["OUT"].tobytes()  # bitwise
        assert result["OUT"].shape == i.shape


async def test_requests_of_other_shapes_or_outputs_batch_apart(manager, store):
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=8, max_queue_delay_us=0))
    requests = [np.full((1, 3), 1, np.int32), np.full((2, 3), 2, np.int32), np.full((1, 5), 3, np.int32),
                np.full((9, 3), 4, np.int32)]  # over max_batch_size: alone
    results = await asyncio.gather(*(manager.run("identity", {"IN": x}, []) for x in requests))
    assert [r["OUT"].tolist() for r in results] == [x.tolist() for x in requests]
    stats = manager.get("identity").stats
    assert (stats.execution_count, sorted(stats.batches)) == (3, [1, 3, 9])  # rows: [1,3]+[2,3]; [1,5]; [9,3]

    await manager.load("add", "onnx", str(store["add"]), _key(max_batch_size=8, max_queue_delay_us=0))
    x = np.ones((1, 4), np.float32)
    y_only, both = await asyncio.gather(manager.run("add", {"x": x}, ["y"]), manager.run("add", {"x": x}, []))
    assert sorted(y_only) == ["y"] and sorted(both) == ["y", "z"]
    assert manager.get("add").stats.execution_count == 2


async def test_an_error_in_one_request_leaves_its_batch_mates_their_answers(manager, store):
    await manager.load("lookup", "onnx", str(store["lookup"]), _key(max_batch_size=4, max_queue_delay_us=10_000_000))
    requests = [[[0, 1]], [[3, 99]], [[2, 2]], [[1, 0]]]  # 99: out of the table's range
    results = await asyncio.gather(*(manager.run("lookup", {"IDX": np.asarray(r, np.int64)}, []) for r in requests),
                                   return_exceptions=True)
    assert results[0]["OUT"].tolist() == [[10, 20]]
    assert isinstance(results[1], InvalidInput) and "out of data bounds" in str(results[1])
    assert results[2]["OUT"].tolist() == [[30, 30]] and results[3]["OUT"].tolist() == [[20, 10]]
    stats = manager.get("lookup").stats
    assert (stats.inference_count, stats.fail.count) == (3, 1)
    assert stats.execution_count == 5  # the batch, then each request alone


class HeldModel(LoadedModel):
    """A real ONNX model whose calls wait for `gate`; records the rows of each call."""

    def __init__(self, inner: LoadedModel, gate: threading.Event) -> None:
        self._inner, self._gate = inner, gate
        self.platform, self.inputs, self.outputs = inner.platform, inner.inputs, inner.outputs
        self.calls: list[int] = []
        self.threads: list[str] = []
        self.running = 0
        self.unloaded = False

    def infer(self, inputs, output_names):
        self.running += 1
        try:
            assert self._gate.wait(10), "the test never opened the gate"
            self.calls.append(next(iter(inputs.values())).shape[0])
            self.threads.append(threading.current_thread().name)
            return self._inner.infer(inputs, output_names)
        finally:
            self.running -= 1

    def size_bytes(self) -> int:
        return self._inner.size_bytes()

    def unload(self) -> None:
        self.unloaded = True
        self._inner.unload()


class HeldOnnxBackend(OnnxBackend):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.models: list[HeldModel] = []

    def load(self, model_file: Path, device: Device) -> HeldModel:
        self.models.append(HeldModel(super().load(model_file, device), self.gate))
        return self.models[-1]


def _held_manager(max_queue: int, **config) -> tuple[ModelManager, HeldOnnxBackend]:
    backend = HeldOnnxBackend()
    config = ManagerConfig(capacity_bytes=1 << 30, max_queue=max_queue, **{"max_concurrency": 1, **config})
    return ModelManager(config, BackendRegistry([backend]), LocalFiles()), backend


@pytest.fixture
async def held():
    manager, backend = _held_manager(max_queue=2)
    yield manager, backend
    backend.gate.set()
    await manager.close()


async def _one_batch_in_flight(manager, backend, store) -> tuple[HeldModel, asyncio.Task]:
    """The identity model loaded batched (4 rows, no delay) and one request of ones whose batch is held in flight."""
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=4, max_queue_delay_us=0))
    model = backend.models[0]
    call = asyncio.create_task(manager.run("identity", {"IN": np.ones((1, 3), np.int32)}, []))
    await async_wait_until(_async(lambda: model.running), 10, "the first batch to be in flight")
    return model, call


async def test_a_request_whose_deadline_passes_in_the_queue_is_not_run(held, store):
    manager, backend = held
    model, first = await _one_batch_in_flight(manager, backend, store)
    deadline = time.perf_counter() + 0.05
    late = asyncio.create_task(manager.run("identity", {"IN": np.full((2, 3), 7, np.int32)}, [], deadline))
    timely = asyncio.create_task(manager.run("identity", {"IN": np.full((1, 3), 8, np.int32)}, []))
    await async_wait_until(_async(lambda: time.perf_counter() > deadline), 10, "the queued request's deadline")
    backend.gate.set()
    assert (await first)["OUT"].tolist() == [[1, 1, 1]]
    assert (await timely)["OUT"].tolist() == [[8, 8, 8]]
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await late
    assert model.calls == [1, 1]  # the late request's two rows never ran


async def test_the_queue_is_bounded_with_batching(held, store):
    manager, backend = held
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=4, max_queue_delay_us=0))
    running = [asyncio.create_task(manager.run("identity", {"IN": np.ones((1, 3), np.int32)}, [])) for _ in range(3)]
    await async_wait_until(_async(lambda: backend.models[0].running), 10, "a batch to be in flight")
    with pytest.raises(Busy, match="3 requests in flight or queued"):  # max_concurrency 1 + max_queue 2
        await manager.run("identity", {"IN": np.ones((1, 3), np.int32)}, [])
    backend.gate.set()
    assert [result["OUT"].tolist() for result in await asyncio.gather(*running)] == [[[1, 1, 1]]] * 3


@pytest.mark.parametrize("at_once", [1, 2])
async def test_batches_at_once_are_bounded_by_max_batches_at_once(store, at_once):
    manager, backend = _held_manager(max_queue=8, max_concurrency=4, infer_threads=4, max_batches_at_once=at_once)
    try:
        await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=8, max_queue_delay_us=0))
        model = backend.models[0]
        first = asyncio.create_task(manager.run("identity", {"IN": np.full((1, 3), 0, np.int32)}, []))
        await async_wait_until(_async(lambda: model.running == 1), 10, "the first batch to be in flight")
        rest = [asyncio.create_task(manager.run("identity", {"IN": np.full((1, 3), n, np.int32)}, []))
                for n in (1, 2, 3)]
        if at_once == 2:  # a second batch starts beside the first: the delay is 0
            await async_wait_until(_async(lambda: model.running == 2), 10, "a second batch in flight")
        else:  # nothing else may start: the three wait for the first batch, and then run as one
            await async_wait_until(_async(lambda: manager.entries()["identity"].in_flight == 4), 10, "all queued")
            assert model.running == 1
        backend.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [r["OUT"].tolist() for r in results] == [[[n] * 3] for n in range(4)]
        if at_once == 1:
            assert model.calls == [1, 3]
        else:
            assert 1 in model.calls and sum(model.calls) == 4  # the two held batches pass the gate in either order
    finally:
        backend.gate.set()
        await manager.close()


async def test_unload_waits_for_a_batch_in_flight(held, store):
    manager, backend = held
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=4, max_queue_delay_us=0))
    model = backend.models[0]
    batch = [asyncio.create_task(manager.run("identity", {"IN": np.full((1, 3), n, np.int32)}, [])) for n in range(2)]
    await async_wait_until(_async(lambda: model.running), 10, "the batch to be in flight")
    unload = asyncio.create_task(manager.unload("identity"))
    await async_wait_until(_async(lambda: manager.entries()["identity"].state is State.UNLOADING), 10, "UNLOADING")
    assert not unload.done() and not model.unloaded
    backend.gate.set()
    assert [(await task)["OUT"].tolist() for task in batch] == [[[0, 0, 0]], [[1, 1, 1]]]
    await unload
    assert model.unloaded and "identity" not in manager.entries()


async def test_batches_of_a_model_proven_fast_run_on_the_event_loop(store):
    manager, backend = _held_manager(max_queue=8, inline_after=0)  # proven fast from the start
    backend.gate.set()
    try:
        await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=8, max_queue_delay_us=0))
        results = await asyncio.gather(*(manager.run("identity", {"IN": np.full((1, 3), n, np.int32)}, [])
                                         for n in range(3)))
        assert [r["OUT"].tolist() for r in results] == [[[n] * 3] for n in range(3)]
        assert backend.models[0].calls == [3] and backend.models[0].threads == [threading.current_thread().name]
    finally:
        await manager.close()


async def test_unload_waits_for_a_batch_whose_callers_went_away(held, store):
    manager, backend = held
    model, call = await _one_batch_in_flight(manager, backend, store)
    call.cancel()  # its caller goes: the model has nothing in flight, but the batch still runs
    unload = asyncio.create_task(manager.unload("identity"))
    await async_wait_until(_async(lambda: manager.entries()["identity"].in_flight == 0
                                  and manager.entries()["identity"].state is State.UNLOADING), 10, "UNLOADING, idle")
    assert not unload.done() and not model.unloaded
    backend.gate.set()
    await unload
    assert model.unloaded and model.calls == [1]


async def test_unload_waits_for_an_unbatched_run_whose_caller_went_away(held, store):
    """Without batching too: a cancelled caller leaves its worker thread running the model,
    and the model is released only once that run is over."""
    manager, backend = held
    await manager.load("identity", "onnx", str(store["identity"]), "")
    model = backend.models[0]
    call = asyncio.create_task(manager.run("identity", {"IN": np.ones((1, 3), np.int32)}, []))
    await async_wait_until(_async(lambda: model.running), 10, "the run to be in its worker thread")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    unload = asyncio.create_task(manager.unload("identity"))
    await async_wait_until(_async(lambda: manager.entries()["identity"].state is State.UNLOADING), 10, "UNLOADING")
    assert not unload.done() and not model.unloaded and manager.entries()["identity"].in_flight == 1
    backend.gate.set()
    await unload
    assert model.unloaded and model.calls == [1]


def _async(condition):
    async def check():
        return condition()
    return check


# -- which models batch, and how ---------------------------------------------------------------
def _loaded(path: Path) -> LoadedModel:
    return OnnxBackend().load(next(path.glob("*.onnx")), Device())


def test_the_model_key_overrides_the_runtime_default(store):
    model = _loaded(store["mlp"])
    default = BatchingPolicy(16, max_queue_delay_us=50)
    assert batching_policy(model, {}, None) is None  # off unless asked
    assert batching_policy(model, {}, default) == default
    assert batching_policy(model, {"batching": False}, default) is None
    assert batching_policy(model, json.loads(_key(preferred_batch_sizes=[4, 8])), default) == \
        BatchingPolicy(16, (4, 8), 50)


def test_a_model_without_a_batch_dimension_is_not_batched(store):
    fixed = _loaded(store["fixed"])
    assert batching_policy(fixed, {}, BatchingPolicy(16)) is None  # the runtime's default passes it by
    with pytest.raises(InvalidModel, match=r"'IN' has a fixed first dimension \(shape \[2, 3\]\)"):
        batching_policy(fixed, json.loads(_key(max_batch_size=8)), None)


@pytest.mark.parametrize("batching, message", [
    ("on", "must be false or an object"),
    ({"max_batch_size": -1}, "integers >= 0"),
    ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "from 1 to max_batch_size"),
    ({"max_batch": 4}, r"unknown fields \['max_batch'\]"),
])
def test_a_bad_batching_key_is_refused_by_name(store, batching, message):
    with pytest.raises(InvalidInput, match=message):
        batching_policy(_loaded(store["mlp"]), {"batching": batching}, None)


async def test_a_load_with_a_bad_batching_key_fails_and_frees_its_room(manager, store):
    with pytest.raises(InvalidModel, match="fixed first dimension"):
        await manager.load("fixed", "onnx", str(store["fixed"]), _key(max_batch_size=8))
    assert manager.used_bytes == 0 and "fixed" not in manager.entries()


def test_config_pbtxt_dynamic_batching_is_applied_within_its_max_batch_size(tmp_path):
    folder = tmp_path / "mlp"
    models.mlp_onnx(folder / "1" / "model.onnx", (8, 16, 3))
    (folder / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 16\n'
                                         'dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 300 }\n')
    backend, model_file = BackendRegistry.default().select("", folder)
    model = backend.load(model_file, Device())
    assert batching_policy(model, {}, None) == BatchingPolicy(16, (4, 8), 300)
    assert batching_policy(model, json.loads(_key(max_batch_size=64)), None) == BatchingPolicy(16, (4, 8), 300)
    (folder / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    backend, model_file = BackendRegistry.default().select("", folder)
    with pytest.raises(InvalidModel, match="max_batch_size is 0"):
        batching_policy(backend.load(model_file, Device()), json.loads(_key(max_batch_size=8)), None)


# -- through gRPC: a real server in this process over the held model, tritonclient calling ----------
@pytest.fixture
async def held_server():
    manager, backend = _held_manager(max_queue=8)
    ready = asyncio.Event()
    ready.set()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(InferenceService(manager, "test"), manager, None, ready), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aioclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        yield manager, backend, client
    backend.gate.set()
    await server.stop(None)
    await manager.close()


def _tensor(x: np.ndarray) -> aioclient.InferInput:
    tensor = aioclient.InferInput("IN", list(x.shape), "INT32")
    tensor.set_data_from_numpy(x)
    return tensor


async def test_unary_calls_that_queue_behind_a_batch_run_as_one(held_server, store):
    manager, backend, client = held_server
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=8, max_queue_delay_us=0))
    model = backend.models[0]
    def call(n: int) -> asyncio.Task:
        return asyncio.create_task(client.infer("identity", [_tensor(np.full((1, 3), n, np.int32))]))

    # The first alone, then the rest: sent together, all four could reach the server in one read.
    calls = [call(0)]
    await async_wait_until(_async(lambda: model.running), 10, "the first call's batch in flight")
    calls += [call(n) for n in range(1, 4)]
    await async_wait_until(_async(lambda: manager.get("identity").in_flight == 4), 10, "three calls queued behind it")
    backend.gate.set()
    results = [(await call).as_numpy("OUT").tolist() for call in calls]
    assert sorted(results) == [[[n] * 3] for n in range(4)]
    assert model.calls == [1, 3]


async def test_a_unary_call_whose_deadline_passes_in_the_queue_is_not_run(held_server, store):
    manager, backend, client = held_server
    await manager.load("identity", "onnx", str(store["identity"]), _key(max_batch_size=8, max_queue_delay_us=0))
    model = backend.models[0]
    first = asyncio.create_task(client.infer("identity", [_tensor(np.ones((1, 3), np.int32))]))
    await async_wait_until(_async(lambda: model.running), 10, "the first call to be in flight")
    with pytest.raises(InferenceServerException, match="Deadline"):
        await client.infer("identity", [_tensor(np.ones((2, 3), np.int32))], client_timeout=0.2)
    await async_wait_until(_async(lambda: manager.get("identity").in_flight == 1), 10, "the late call to be dropped")
    backend.gate.set()
    assert (await first).as_numpy("OUT").tolist() == [[1, 1, 1]]
    assert model.calls == [1]


# -- through a real runtime process ----------------------------------------------------------------
@pytest.fixture(scope="module")
def batching_runtime(runtime, store):
    runtime.load("mlp-batched", store["mlp"], "onnx", _key(max_batch_size=4, max_queue_delay_us=2000))
    runtime.load("lookup-batched", store["lookup"], "onnx", _key(max_batch_size=4, max_queue_delay_us=2000))
    return runtime


async def test_unary_calls_through_the_runtime_answer_as_alone_and_report_their_batches(batching_runtime, store):
    rows = [np.full((1, 8), n, np.float32) for n in range(16)]
    async with aioclient.InferenceServerClient(batching_runtime.address) as client:
        async def call(x):
            tensor = aioclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return (await client.infer("mlp-batched", [tensor])).as_numpy("y")
        batched = await asyncio.gather(*(call(x) for x in rows))
        stats = {name: (await client.get_inference_statistics(name)).model_stats[0]
                 for name in ("mlp-batched", "lookup-batched")}
        config = (await client.get_model_config("mlp-batched")).config
    alone = _loaded(store["mlp"])  # the same file in a session of this process
    for x, y in zip(rows, batched):
        np.testing.assert_allclose(y, alone.infer({"x": x}, [])["y"], rtol=1e-5, atol=1e-6)
    mlp = stats["mlp-batched"]
    assert mlp.inference_count == 16 and 1 <= mlp.execution_count <= 16
    assert sum(b.batch_size * b.compute_infer.count for b in mlp.batch_stats) == 16
    assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (4, 2000)
    assert list(config.input[0].dims) == [8]  # Triton's dims: the batch dimension left out
    text = urllib.request.urlopen(f"http://127.0.0.1:{batching_runtime.metrics_port}/metrics", timeout=10).read()
    observed = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
                if line.startswith(("meshserve_batch_size_count", "meshserve_batch_size_sum"))}
    assert observed["meshserve_batch_size_count"] == sum(b.compute_infer.count for s in stats.values()
                                                         for b in s.batch_stats)
    assert observed["meshserve_batch_size_sum"] == sum(b.batch_size * b.compute_infer.count for s in stats.values()
                                                       for b in s.batch_stats)


async def test_streamed_calls_batch_and_fail_alone(batching_runtime):
    # The frames of one CallBatch all join the queue before its first batch forms.
    def frame(call_id: int, indexes: list[int]) -> spb.CallFrame:
        request = pb.ModelInferRequest(model_name="lookup-batched")
        request.inputs.add(name="IDX", datatype="INT64", shape=[1, len(indexes)])
        request.raw_input_contents.append(np.asarray(indexes, np.int64).tobytes())
        return spb.CallFrame(id=call_id, body=request.SerializeToString(), timeout_us=30_000_000)

    batch = spb.CallBatch(calls=[frame(1, [0, 1]), frame(2, [9, 9]), frame(3, [3, 2]), frame(4, [1, 1])])
    async with grpc.aio.insecure_channel(batching_runtime.address) as channel:
        call = channel.stream_stream(CALLS, request_serializer=spb.CallBatch.SerializeToString,
                                     response_deserializer=spb.ReplyBatch.FromString)(timeout=30)
        await call.write(batch)
        replies = {}
        while len(replies) < 4:
            replies.update({reply.id: reply for reply in (await call.read()).replies})
        await call.done_writing()
        async with aioclient.InferenceServerClient(batching_runtime.address) as client:
            stats = (await client.get_inference_statistics("lookup-batched")).model_stats[0]

    def out(reply) -> list[int]:
        response = pb.ModelInferResponse.FromString(reply.body)
        return np.frombuffer(response.raw_output_contents[0], np.int64).tolist()

    assert (replies[1].code, out(replies[1])) == (0, [10, 20])
    assert replies[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "out of data bounds" in replies[2].message
    assert (out(replies[3]), out(replies[4])) == ([40, 30], [20, 20])
    assert (stats.inference_count, stats.execution_count) == (3, 5)  # one batch, then each alone
