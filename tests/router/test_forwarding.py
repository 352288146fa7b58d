"""V2 gRPC through the router to real runtime processes, with tritonclient as the client."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from mesh.domain.errors import NoLiveInstance
from protos import grpc_service_pb2 as pb
from tests.router.conftest import StubLoader

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _x(rows: int = 2) -> np.ndarray:
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)


def _inputs(x: np.ndarray, module=grpcclient):
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def _infer_sync(address: str, model: str, x: np.ndarray, **kwargs):
    with grpcclient.InferenceServerClient(address) as client:
        return client.infer(model, _inputs(x), **kwargs)


@pytest.fixture
async def routed(fabric, runtimes, router_factory, model_store):
    """Both runtimes published as holding `add`; a stub loader for misses onto runtime 0."""
    await fabric.publish("i0", runtimes[0], ["add", "identity_bytes"])
    await fabric.publish("i1", runtimes[1], ["add", "identity_bytes"])
    loader = StubLoader(fabric, {"add": model_store["add"], "add10": model_store["add10"]}, runtimes[0], "i0",
                        held=["add", "identity_bytes"])
    registry = CollectorRegistry()
    running = await router_factory(fabric.view, loader, registry=registry)
    return running, loader, registry


def _address(running) -> str:
    return f"127.0.0.1:{running.port}"


async def test_infer_sync_client(routed):
    running, _, _ = routed
    x = _x()
    result = await asyncio.to_thread(_infer_sync, _address(running), "add", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2)


async def test_messages_over_grpcs_default_4_mib_pass_both_ways(routed):
    running, _, _ = routed
    x = _x(rows=400_000)  # 6.4 MB in, 12.8 MB out (y and z): over the 4 MiB default, under 16 MiB
    result = await asyncio.to_thread(_infer_sync, _address(running), "add", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2)


async def test_an_oversized_request_is_refused_at_the_router_naming_the_limit(fabric, runtimes, router_factory, model_store):
    """Over max_message_bytes: RESOURCE_EXHAUSTED naming the limit and its setting, before any
    forwarding (the loader never hears of the model). Over twice the limit grpc refuses it
    itself, with its own words; docs/operations.md says so."""
    loader = StubLoader(fabric, {"add": model_store["add"]}, runtimes[0], "i0")
    running = await router_factory(fabric.view, loader, max_message_bytes=1 << 20)
    for rows, words in ((70_000, "larger than max (1048576 bytes), the router's max_message_bytes"),
                        (200_000, "Received message larger than max")):
        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(_infer_sync, _address(running), "add", _x(rows))
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert words in caught.value.message()
    assert loader.calls == []


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
async def test_a_reply_over_the_routers_limit_names_it(fabric, runtimes, router_factory, streams):
    """`add` answers twice its input: 0.75 MiB in passes a 1 MiB router, 1.5 MiB out does not."""
    await fabric.publish("i0", runtimes[0], ["add"])
    running = await router_factory(fabric.view, None, max_message_bytes=1 << 20, instance_streams=streams)
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_sync, _address(running), "add", _x((3 << 20) // 64))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "reply of model 'add'" in caught.value.message()
    assert "larger than max (1048576 bytes), the router's max_message_bytes" in caught.value.message()


async def test_infer_aio_client_concurrent(routed):
    running, loader, _ = routed
    async with aioclient.InferenceServerClient(_address(running)) as client:
        xs = [_x(rows) for rows in range(1, 17)]
        results = await asyncio.gather(*(client.infer("add", _inputs(x, aioclient)) for x in xs))
    for x, result in zip(xs, results):
        np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert loader.calls == []  # all hits


async def test_bytes_tensors_and_request_id_pass_through(routed):
    running, _, _ = routed
    data = np.array([[b"a", b"\xc3\xa9t\xc3\xa9", b""]], dtype=object)
    tensor = aioclient.InferInput("IN", [1, 3], "BYTES")
    tensor.set_data_from_numpy(data)
    async with aioclient.InferenceServerClient(_address(running)) as client:
        result = await client.infer("identity_bytes", [tensor], request_id="req-42")
    assert result.get_response().id == "req-42"
    assert result.as_numpy("OUT").tolist() == data.tolist()


async def test_metadata_config_ready_and_server_calls(routed):
    running, _, _ = routed
    async with aioclient.InferenceServerClient(_address(running)) as client:
        assert await client.is_server_live() and await client.is_server_ready()
        server = await client.get_server_metadata()
        assert server.name == "meshserve" and "model_configuration" in server.extensions
        metadata = await client.get_model_metadata("add")
        assert metadata.name == "add" and [i.name for i in metadata.inputs] == ["x"]
        config = await client.get_model_config("add")
        assert config.config.name == "add"
        assert await client.is_model_ready("add")
        stats = await client.get_inference_statistics("add")
        assert stats.model_stats[0].name == "add"


async def test_header_routing_names_the_model(routed):
    """`mm-model-id` wins over the name in the message; the instance sees the real id."""
    running, _, _ = routed
    x = _x()
    result = await asyncio.to_thread(_infer_sync, _address(running), "whatever-the-client-says", x,
                                     headers={"mm-model-id": "add"})
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert result.get_response().model_name == "add"


async def test_vmodel_by_name_and_by_header(routed, fabric):
    running, _, _ = routed
    await fabric.set_vmodel("my-predictor", "add")
    x = _x()
    by_name = await asyncio.to_thread(_infer_sync, _address(running), "my-predictor", x)
    np.testing.assert_array_equal(by_name.as_numpy("y"), x + 1)
    by_header = await asyncio.to_thread(_infer_sync, _address(running), "", x, headers={"mm-vmodel-id": "my-predictor"})
    np.testing.assert_array_equal(by_header.as_numpy("y"), x + 1)


async def test_unknown_vmodel_header_is_not_found(routed):
    running, _, _ = routed
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_sync, _address(running), "add", _x(), headers={"mm-vmodel-id": "nope"})
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "vmodel 'nope'" in caught.value.message()


async def test_both_headers_are_invalid(routed):
    running, _, _ = routed
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_sync, _address(running), "add", _x(),
                                headers={"mm-vmodel-id": "a", "mm-model-id": "add"})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


async def test_unknown_model_is_not_found_with_a_message(routed):
    running, loader, _ = routed
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_sync, _address(running), "no-such-model", _x())
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in caught.value.message() and "not registered" in caught.value.message()
    assert loader.calls == ["no-such-model"]


class NoInstances:
    """A loader standing in for the cache miss of a fabric where no runtime is running."""

    async def ensure_loaded(self, model_id: str, timeout: float) -> list[str]:
        raise NoLiveInstance(model_id)


async def test_no_instance_at_all_is_unavailable_saying_so(fabric, router_factory):
    running = await router_factory(fabric.view, NoInstances())
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_sync, _address(running), "add", _x())
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "no live runtime instance" in caught.value.message() and "'add'" in caught.value.message()


async def test_model_ready_of_an_unregistered_model_is_false_not_an_error(routed):
    """As Triton and the runtime answer: tritonclient's is_model_ready returns False instead of raising."""
    running, loader, _ = routed
    async with aioclient.InferenceServerClient(_address(running)) as client:
        assert await client.is_model_ready("no-such-model") is False
        assert await client.is_model_ready("add") is True
        # An unknown vmodel named by header is not ready either; other calls still say NOT_FOUND.
        assert await client.is_model_ready("add", headers={"mm-vmodel-id": "no-such-vmodel"}) is False
        with pytest.raises(InferenceServerException) as caught:
            await client.get_model_metadata("no-such-model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


async def test_raw_and_typed_contents_together_are_refused(routed, runtimes):
    """Triton refuses a request that gives an input both ways; so does the runtime, and the router passes that on."""
    running, _, _ = routed
    request = pb.ModelInferRequest(model_name="add")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.raw_input_contents.append(np.ones(4, dtype=np.float32).tobytes())
    for address in (runtimes[0].address, _address(running)):
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    request.SerializeToString(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x'" in caught.value.details() and "raw_input_contents" in caught.value.details()


async def test_model_errors_pass_through_unchanged(routed, runtimes):
    """A wrong shape is the model's business: the runtime's status and message, verbatim."""
    running, _, _ = routed
    bad = np.ones((1, 3), dtype=np.float32)

    def direct():
        with pytest.raises(InferenceServerException) as caught:
            _infer_sync(runtimes[0].address, "add", bad)
        return caught.value

    def routed_call():
        with pytest.raises(InferenceServerException) as caught:
            _infer_sync(_address(running), "add", bad)
        return caught.value

    expected, got = await asyncio.to_thread(direct), await asyncio.to_thread(routed_call)
    assert expected.status() == "StatusCode.INVALID_ARGUMENT"
    assert (got.status(), got.message()) == (expected.status(), expected.message())


async def test_malformed_request_bytes(routed):
    running, _, _ = routed
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\x0a\x7fshort", timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.ModelInferRequest(id="no name").SerializeToString(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no model name" in caught.value.details()


class EchoInstance:
    """A real gRPC server standing in for an instance: ModelInfer echoes the caller's
    metadata back (as initial and trailing metadata) and the model name it was sent;
    `x-fail-with: CODE` makes it fail with that status and a trailer. `credentials` keeps
    every `authorization` value it was sent (the router must send none)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple]] = []
        self.credentials: list[str] = []
        self.server = grpc.aio.server()

        async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith(("x-", "mm-")))
            self.credentials += [v for k, v in context.invocation_metadata() if k == "authorization"]
            request = pb.ModelInferRequest.FromString(body)
            self.seen.append((request.model_name, metadata))
            fail = dict(metadata).get("x-fail-with")
            if fail:
                await context.abort(grpc.StatusCode[fail], f"echo says {fail}", (("x-why", "asked to"),))
            await context.send_initial_metadata((("x-initial", "hello"),))
            context.set_trailing_metadata(tuple((f"{k}-echo" if not k.endswith("-bin") else f"{k[:-4]}-echo-bin", v)
                                                for k, v in metadata))
            return pb.ModelInferResponse(model_name=request.model_name, id=request.id).SerializeToString()

        handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")


@pytest.fixture
async def echo(fabric):
    instance = EchoInstance()
    await instance.server.start()
    await fabric.publish("echo", type("Addr", (), {"address": f"127.0.0.1:{instance.port}"})(), ["echo-model"])
    yield instance
    await instance.server.stop(0)


async def test_metadata_passes_both_ways(routed, echo):
    running, _, _ = routed
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            pb.ModelInferRequest(model_name="echo-model", id="r1").SerializeToString(),
            metadata=(("x-trace-id", "abc"), ("authorization", "Bearer the-callers-secret"),
                      ("x-blob-bin", b"\x00\x01")), timeout=5)
        response = pb.ModelInferResponse.FromString(await call)
        initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
    assert (response.model_name, response.id) == ("echo-model", "r1")
    assert echo.seen == [("echo-model", (("x-trace-id", "abc"), ("x-blob-bin", b"\x00\x01")))]
    assert echo.credentials == []  # the caller's credential is the router's, not the instance's
    assert initial["x-initial"] == "hello"
    assert trailing["x-trace-id-echo"] == "abc" and trailing["x-blob-echo-bin"] == b"\x00\x01"


async def test_header_routing_injects_the_model_id(routed, echo, fabric):
    running, _, _ = routed
    await fabric.set_vmodel("echo-alias", "echo-model")
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        await call(pb.ModelInferRequest(model_name="client-name").SerializeToString(),
                   metadata=(("mm-vmodel-id", "echo-alias"),), timeout=5)
        await call(pb.ModelInferRequest(model_name="echo-alias").SerializeToString(), timeout=5)
    assert echo.seen == [("echo-model", (("mm-model-id", "echo-model"),)), ("echo-model", ())]


async def test_model_error_trailers_pass_through(routed, echo):
    running, _, _ = routed
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.ModelInferRequest(model_name="echo-model").SerializeToString(),
                       metadata=(("x-fail-with", "FAILED_PRECONDITION"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "echo says FAILED_PRECONDITION"
    assert dict(caught.value.trailing_metadata())["x-why"] == "asked to"


async def test_a_models_own_resource_exhausted_is_not_backpressure(fabric, echo, router_factory):
    """RESOURCE_EXHAUSTED without the runtime's busy marker is the model's answer: passed back
    as it is, not retried, and no saturation is reported."""
    reported = []

    class Scaler:
        async def scale_up(self, model_id):
            reported.append(model_id)

    registry = CollectorRegistry()
    running = await router_factory(fabric.view, None, registry=registry, scaler=Scaler())
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                pb.ModelInferRequest(model_name="echo-model").SerializeToString(),
                metadata=(("x-fail-with", "RESOURCE_EXHAUSTED"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "echo says RESOURCE_EXHAUSTED"
    assert len(echo.seen) == 1 and reported == []
    assert not registry.get_sample_value("meshserve_router_retries_total", {"reason": "busy"})


async def test_not_found_from_the_only_copy_waits_for_the_fabric_until_the_deadline(fabric, echo, router_factory):
    """NOT_FOUND from an instance means its copy is gone: never sent there again in this call; the error
    naming the last failure: with no other copy it waits for the fabric to change, up to the deadline."""
    running = await router_factory(fabric.view, None, default_deadline_s=1.0, max_tries=2)
    async with grpc.aio.insecure_channel(_address(running)) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.ModelInferRequest(model_name="echo-model").SerializeToString(),
                       metadata=(("x-fail-with", "NOT_FOUND"),))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "echo-model" in caught.value.details() and "echo says NOT_FOUND" in caught.value.details()
    assert len(echo.seen) == 1  # excluded for the rest of the call; waited for the fabric to change


async def test_miss_loads_through_the_loader_then_routes(routed, fabric):
    running, loader, registry = routed
    x = _x()
    assert fabric.view.loaded_on("add10") == []
    result = await asyncio.to_thread(_infer_sync, _address(running), "add10", x)
    np.testing.assert_array_equal(result.as_numpy("y"), x + 10)
    assert loader.calls == ["add10"]
    assert fabric.view.loaded_on("add10") == ["i0"]
    again = await asyncio.to_thread(_infer_sync, _address(running), "add10", x)
    np.testing.assert_array_equal(again.as_numpy("y"), x + 10)
    assert loader.calls == ["add10"]  # the second call was a hit
    # (the miss histogram keeps only waits over 10 ms, as ModelMesh: tests/router/test_metrics.py)


async def test_metrics_count_calls(routed):
    running, _, registry = routed
    await asyncio.to_thread(_infer_sync, _address(running), "add", _x())
    with pytest.raises(InferenceServerException):
        await asyncio.to_thread(_infer_sync, _address(running), "no-such-model", _x())
    calls = "modelmesh_api_request_milliseconds_count"
    assert registry.get_sample_value(calls, {"method": "ModelInfer", "code": "OK"}) == 1
    assert registry.get_sample_value(calls, {"method": "ModelInfer", "code": "NOT_FOUND"}) == 1
    sizes = {"method": "ModelInfer", "code": "OK"}
    assert registry.get_sample_value("modelmesh_request_size_bytes_sum", sizes) > 0
    assert registry.get_sample_value("modelmesh_response_size_bytes_sum", sizes) > 0
    assert registry.get_sample_value("modelmesh_response_size_bytes_count",
                                     {"method": "ModelInfer", "code": "NOT_FOUND"}) == 0  # no response to measure
    assert registry.get_sample_value("meshserve_router_in_flight", {"instance": "i0"}) == 0
