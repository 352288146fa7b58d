"""V2 inference through tritonclient (sync and aio) against a real runtime process."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from tests.support import models

ALL_TYPES = list(models.ONNX_TYPES)


@pytest.fixture(scope="module")
def loaded(runtime, model_store):
    """The runtime with the ONNX models loaded (no torch needed)."""
    for name in ("add", *(f"identity_{t.lower()}" for t in ALL_TYPES)):
        response = runtime.load(name, model_store[name], "onnx")
        assert response.sizeInBytes > 0
    return runtime


@pytest.fixture(scope="module")
def torch_loaded(loaded, torch_model_store):
    """The runtime with the PyTorch models loaded too (skips without torch)."""
    for name, path in torch_model_store.items():
        response = loaded.load(name, path, "pytorch")
        assert response.sizeInBytes > 0
    return loaded


@pytest.fixture
def client(loaded):
    with grpcclient.InferenceServerClient(loaded.address) as client:
        yield client


def _input(name, array, datatype):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_server_metadata_lists_real_extensions(client):
    metadata = client.get_server_metadata()
    assert metadata.name == "meshserve"
    assert "statistics" in metadata.extensions and "model_configuration" in metadata.extensions
    assert client.is_server_live() and client.is_server_ready()


def test_onnx_infer_raw_inputs(client):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("add", [_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2)


def test_requested_output_subset(client):
    x = np.ones((1, 4), dtype=np.float32)
    result = client.infer("add", [_input("x", x, "FP32")], outputs=[grpcclient.InferRequestedOutput("z")])
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2)
    assert result.as_numpy("y") is None


def test_typed_contents_and_parameters(loaded):
    request = pb.ModelInferRequest(model_name="add", id="req-7")
    request.parameters["priority"].int64_param = 3
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = loaded.inference.ModelInfer(request, timeout=10)
    assert response.id == "req-7"
    names = [o.name for o in response.outputs]
    y = np.frombuffer(response.raw_output_contents[names.index("y")], dtype=np.float32)
    assert y.tolist() == [2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_every_datatype_round_trips(client, datatype):
    if datatype == "BYTES":
        array = np.array([[b"a", b"\xc3\xa9t\xc3\xa9", b""], [b"x y", b"12", b"zz"]], dtype=object)
    elif datatype == "BOOL":
        array = np.array([[True, False, True], [False, False, True]])
    elif datatype == "BF16":
        array = np.array([[1.5, -2.0, 0.25], [3.0, 0.0, -0.5]], dtype=np.float32)  # tritonclient sends BF16 from float32
    else:
        dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(datatype.lower())
        array = (np.arange(6).reshape(2, 3) * 3).astype(dtype)
    result = client.infer(f"identity_{datatype.lower()}", [_input("IN", array, datatype)])
    out = result.as_numpy("OUT")
    assert result.get_output("OUT").datatype == datatype
    if datatype == "BF16":
        np.testing.assert_array_equal(out.astype(np.float32), array)
    else:
        np.testing.assert_array_equal(out, array)


def test_torchscript_matches_the_module(client, torch_loaded, torch_model_store):
    import torch

    _, module = models.torchscript_linear(torch_model_store["linear_ts"].parent / "check.pt")
    x = np.random.default_rng(3).random((3, 4), dtype=np.float32)
    result = client.infer("linear_ts", [_input("x", x, "FP32")])
    expected = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-6)


def test_exported_program_matches_the_module(client, torch_loaded, torch_model_store):
    import torch

    _, module = models.exported_mlp(torch_model_store["mlp_pt2"].parent / "check.pt2")
    x = np.random.default_rng(4).random((2, 4), dtype=np.float32)
    result = client.infer("mlp_pt2", [_input(client.get_model_metadata("mlp_pt2").inputs[0].name, x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5)


def test_metadata_from_real_signatures(client):
    onnx_meta = client.get_model_metadata("add")
    assert onnx_meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in onnx_meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [t.name for t in onnx_meta.outputs] == ["y", "z"]


def test_pytorch_metadata_from_real_signatures(client, torch_loaded):
    pt2_meta = client.get_model_metadata("mlp_pt2")
    assert [(t.datatype, list(t.shape)) for t in pt2_meta.inputs] == [("FP32", [2, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in pt2_meta.outputs] == [("OUTPUT__0", "FP32", [2, 3])]
    ts_meta = client.get_model_metadata("linear_ts")
    assert [(t.name, t.datatype) for t in ts_meta.inputs] == [("x", "FP32")]


def test_torchscript_without_schema_names_outputs_by_position(client, torch_loaded):
    meta = client.get_model_metadata("linear_ts_noschema")
    name = meta.inputs[0].name
    result = client.infer("linear_ts_noschema", [_input(name, np.ones((1, 4), np.float32), "FP32")])
    assert result.as_numpy("OUTPUT__0").shape == (1, 2)


def test_model_config_is_enough_for_perf_analyzer(client):
    config = client.get_model_config("add").config
    assert config.name == "add" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, 4])]
    assert [o.name for o in config.output] == ["y", "z"]


def test_model_ready(client):
    assert client.is_model_ready("add")
    assert not client.is_model_ready("never-loaded")


def test_statistics_count_real_requests(client):
    before = client.get_inference_statistics("add").model_stats[0].inference_stats.success.count
    for _ in range(3):
        client.infer("add", [_input("x", np.zeros((1, 4), np.float32), "FP32")])
    stats = client.get_inference_statistics("add").model_stats[0]
    assert stats.inference_stats.success.count == before + 3
    assert stats.inference_stats.compute_infer.ns > 0 and stats.last_inference > 0
    # perf_analyzer refuses statistics whose compute counts differ
    counts = {getattr(stats.inference_stats, n).count for n in ("compute_input", "compute_infer", "compute_output")}
    assert counts == {stats.inference_stats.success.count}


async def test_aio_client(loaded):
    async with aioclient.InferenceServerClient(loaded.address) as client:
        x = np.full((4, 4), 2.0, dtype=np.float32)
        tensor = aioclient.InferInput("x", [4, 4], "FP32")
        tensor.set_data_from_numpy(x)
        results = [await client.infer("add", [tensor]) for _ in range(4)]
        assert all((r.as_numpy("y") == 3.0).all() for r in results)
        assert await client.is_model_ready("add")


def test_metrics_count_inferences(client, loaded):
    client.infer("add", [_input("x", np.zeros((1, 4), np.float32), "FP32")])
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("add", [_input("x", np.zeros((1, 5), np.float32), "FP32")])
    text = urllib.request.urlopen(f"http://127.0.0.1:{loaded.metrics_port}/metrics", timeout=5).read().decode()
    assert re.search(r'^modelmesh_invoke_model_milliseconds_count\{code="OK",method="ModelInfer"\} [1-9]', text, re.M)
    refused = re.search(r'modelmesh_invoke_model_milliseconds_count\{code="INVALID_ARGUMENT",method="ModelInfer"\} (\S+)',
                        text)
    assert refused and float(refused.group(1)) >= 1, "a refused request is counted under its status"
    assert re.search(r"^modelmesh_loadmodel_milliseconds_count [1-9]", text, re.M)
    assert re.search(r"^modelmesh_loaded_model_size_bytes_count [1-9]", text, re.M)
    assert "# TYPE modelmesh_loadmodel_failure counter\nmodelmesh_loadmodel_failure 0" in text  # ModelMesh's bare name
    assert "_created" not in text


def test_runtime_status_reports_capacity_and_injection(loaded):
    from protos import model_runtime_pb2 as rt

    status = loaded.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=5)
    assert status.status == rt.RuntimeStatusResponse.READY
    # What models may use: 512 MiB less what each backend set up after start (its first load) took for good.
    charged = sum(int(n) for n in re.findall(r"\((\d+) bytes\) charged to this runtime's used bytes", loaded.log()))
    assert status.capacityInBytes == (512 << 20) - charged
    assert list(status.methodInfos["/inference.GRPCInferenceService/ModelInfer"].idInjectionPath) == [1]


def test_bf16_values_survive(client):
    # tritonclient serializes BF16 by truncating float32; values exact in bf16 come back exact.
    values = np.array([[1.0, 0.5, -4.0], [2.5, 8.0, -0.125]], dtype=np.float32)
    out = client.infer("identity_bf16", [_input("IN", values, "BF16")]).as_numpy("OUT")
    assert np.asarray(out, dtype=np.float32).tolist() == values.tolist()
