"""V2 REST through the router (aiohttp client) to real runtime processes."""

from __future__ import annotations

import json
import struct

import aiohttp
import ml_dtypes
import numpy as np
import pytest

from router.rest_codec import BadTensor, request_from_json
from tests.router.conftest import StubLoader

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture
async def rest(fabric, runtimes, router_factory, model_store):
    await fabric.publish("i0", runtimes[0], ["add", "identity_bytes"])
    loader = StubLoader(fabric, {"add": model_store["add"]}, runtimes[0], "i0", held=["add", "identity_bytes"])
    running = await router_factory(fabric.view, loader)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.rest_port}") as session:
        yield session


def _body(data, shape=(2, 4), datatype="FP32", **extra):
    return {"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype, "data": data}], **extra}


async def test_health_and_server_metadata(rest):
    async with rest.get("/v2/health/live") as response:
        assert response.status == 200 and (await response.json()) == {"live": True}
    async with rest.get("/v2/health/ready") as response:
        assert response.status == 200 and (await response.json()) == {"ready": True}
    async with rest.get("/v2") as response:
        assert (await response.json())["name"] == "meshserve"


async def test_model_metadata_and_ready(rest):
    async with rest.get("/v2/models/add") as response:
        body = await response.json()
    assert response.status == 200 and body["name"] == "add"
    assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    async with rest.get("/v2/models/add/ready") as response:
        assert response.status == 200 and (await response.json())["ready"] is True


async def test_infer_json(rest):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    async with rest.post("/v2/models/add/infer", json=_body(x.tolist(), id="r-9")) as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["model_name"] == "add" and body["id"] == "r-9"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["y"]["shape"] == [2, 4] and outputs["y"]["datatype"] == "FP32"
    assert outputs["y"]["data"] == (x + 1).ravel().tolist()
    assert outputs["z"]["data"] == (x * 2).ravel().tolist()


async def test_infer_flat_data_and_requested_binary_output(rest):
    x = np.arange(4, dtype=np.float32)
    request = _body(x.tolist(), shape=(1, 4), outputs=[{"name": "z", "parameters": {"binary_data": True}}])
    async with rest.post("/v2/models/add/infer", json=request) as response:
        raw = await response.read()
        header_length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(raw[:header_length])
    [z] = header["outputs"]
    assert z["name"] == "z" and z["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(raw[header_length:], dtype=np.float32).tolist() == (x * 2).tolist()


async def test_binary_input(rest):
    x = np.arange(4, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    async with rest.post("/v2/models/add/infer", data=header + x.tobytes(),
                         headers={"Inference-Header-Content-Length": str(len(header))}) as response:
        body = await response.json()
    assert response.status == 200, body
    assert {o["name"]: o["data"] for o in body["outputs"]}["y"] == (x + 1).tolist()


async def test_bytes_tensor(rest):
    request = {"inputs": [{"name": "IN", "shape": [1, 3], "datatype": "BYTES", "data": [["a", "été", ""]]}]}
    async with rest.post("/v2/models/identity_bytes/infer", json=request) as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["outputs"][0]["data"] == ["a", "été", ""]


@pytest.mark.parametrize("payload, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"inputs": []}).encode(), "non-empty"),
    (json.dumps(_body([1.0, 2.0], shape=(2, 4))).encode(), "holds 8 elements but data has 2"),
    (json.dumps(_body([[1, 2, 3, 4]], shape=(1, 4), datatype="FP33")).encode(), "unknown datatype"),
    (json.dumps(_body(["a", 1, 2, 3], shape=(1, 4))).encode(), "numbers"),
])
async def test_malformed_requests_are_400_with_a_message(rest, payload, fragment):
    async with rest.post("/v2/models/add/infer", data=payload, headers={"Content-Type": "application/json"}) as response:
        body = await response.json()
    assert response.status == 400 and fragment in body["error"]


async def test_model_errors_keep_their_message(rest):
    async with rest.post("/v2/models/add/infer", json=_body([[1.0, 2.0, 3.0]], shape=(1, 3))) as response:
        body = await response.json()
    assert response.status == 400 and body["error"]


async def test_unknown_model_is_404(rest):
    async with rest.post("/v2/models/nope/infer", json=_body([[1.0] * 4], shape=(1, 4))) as response:
        body = await response.json()
    assert response.status == 404 and "nope" in body["error"]
    async with rest.get("/v2/models/nope") as response:
        assert response.status == 404


async def test_bodies_over_the_limit_are_413_and_replies_429_naming_it(fabric, runtimes, router_factory):
    """One limit, the router's max_message_bytes: a body over it is 413; a reply over it (the V2
    reply of `add` is twice its input) is RESOURCE_EXHAUSTED's 429; both name the setting."""
    await fabric.publish("i0", runtimes[0], ["add"])
    running = await router_factory(fabric.view, None, max_message_bytes=64 << 10)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.rest_port}") as session:
        big = json.dumps(_body([[1.0] * 4] * 20_000, shape=(20_000, 4))).encode()
        async with session.post("/v2/models/add/infer", data=big, headers={"Content-Type": "application/json"}) as response:
            body = await response.json()
        assert response.status == 413 and "max_message_bytes" in body["error"] and "65536" in body["error"]
        x = np.zeros((3_000, 4), dtype=np.float32)  # 48 KB in: under the limit; 96 KB out: over it
        header = json.dumps({"inputs": [{"name": "x", "shape": [3_000, 4], "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        async with session.post("/v2/models/add/infer", data=header + x.tobytes(),
                                headers={"Inference-Header-Content-Length": str(len(header))}) as response:
            body = await response.json()
        assert response.status == 429 and "reply of model 'add'" in body["error"]
        assert "max_message_bytes" in body["error"]


@pytest.mark.parametrize("datatype, data, expected", [
    ("UINT8", [1, 255], np.array([1, 255], dtype=np.uint8).tobytes()),
    ("INT64", [-1, 2], np.array([-1, 2], dtype=np.int64).tobytes()),
    ("BOOL", [True, False], b"\x01\x00"),
    ("FP16", [0.5, -2], np.array([0.5, -2], dtype=np.float16).tobytes()),
    ("BF16", [1.5, -2], np.array([1.5, -2], dtype=ml_dtypes.bfloat16).tobytes()),
    ("BYTES", ["ab", ""], struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)),
])
def test_codec_datatypes(datatype, data, expected):
    decoded = request_from_json("m", json.dumps(_body(data, shape=(2,), datatype=datatype)).encode())
    assert decoded.request.raw_input_contents[0] == expected


@pytest.mark.parametrize("datatype, data", [("UINT8", [1, 256]), ("UINT8", [-1, 0]), ("INT32", [1.5, 2]),
                                            ("BOOL", [1, 0])])
def test_codec_rejects_values_that_do_not_fit(datatype, data):
    with pytest.raises(BadTensor):
        request_from_json("m", json.dumps(_body(data, shape=(2,), datatype=datatype)).encode())


async def test_rest_calls_count_in_the_metrics_and_the_dashboard_as_the_v2_calls_they_became(
        fabric, runtimes, router_factory, model_store):
    from prometheus_client import CollectorRegistry

    await fabric.publish("i0", runtimes[0], ["add"])
    loader = StubLoader(fabric, {"add": model_store["add"]}, runtimes[0], "i0", held=["add"])
    registry = CollectorRegistry()
    running = await router_factory(fabric.view, loader, registry=registry)
    calls = "modelmesh_api_request_milliseconds_count"
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.rest_port}") as session:
        async with session.post("/v2/models/add/infer", json=_body([0.0] * 8)) as response:
            assert response.status == 200
        async with session.post("/v1/models/add:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]}) as response:
            assert response.status == 200, await response.text()
        async with session.post("/v2/models/nope/infer", json=_body([0.0] * 8)) as response:
            assert response.status == 404
    # V2 infer, V1 predict (its metadata once, then infer), and the unknown model's call.
    assert registry.get_sample_value(calls, {"method": "ModelInfer", "code": "OK"}) == 2
    assert registry.get_sample_value(calls, {"method": "ModelMetadata", "code": "OK"}) == 1
    assert registry.get_sample_value(calls, {"method": "ModelInfer", "code": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("modelmesh_request_size_bytes_count", {"method": "ModelInfer", "code": "OK"}) == 2
    totals = running.traffic.totals()  # what the dashboard's request-rate series reads
    assert (totals.requests, totals.errors) == (4, 1)


@pytest.mark.parametrize("value", ["²", "-1", "1e3", "99999"])
async def test_a_header_length_that_is_not_a_length_is_400(rest, value):
    """'²' passes str.isdigit() but not int(): it was a 500."""
    async with rest.post("/v2/models/add/infer", data=b"{}", headers={"Inference-Header-Content-Length": value}) as response:
        body = await response.json()
    assert response.status == 400 and "does not fit" in body["error"]
