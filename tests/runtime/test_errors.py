"""Bad input gets the right status code and a message that says what was wrong; the process lives on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_runtime_pb2 as rt


@pytest.fixture(scope="module")
def served(runtime, model_store):
    runtime.load("add", model_store["add"], "onnx")
    return runtime


def _infer(runtime, request):
    with pytest.raises(grpc.RpcError) as caught:
        runtime.inference.ModelInfer(request, timeout=10)
    return caught.value.code(), caught.value.details()


def _request(shape=(1, 4), datatype="FP32", raw=None, name="x", model="add"):
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw if raw is not None else np.zeros(shape, np.float32).tobytes())
    return request


def test_unknown_model_is_not_found(served):
    code, details = _infer(served, _request(model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details


def test_wrong_shape_names_input_and_expected_shape(served):
    code, details = _infer(served, _request(shape=(1, 5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in details and "[-1, 4]" in details


def test_wrong_datatype(served):
    code, details = _infer(served, _request(datatype="INT32", raw=np.zeros((1, 4), np.int32).tobytes()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected FP32" in details


def test_raw_size_mismatch(served):
    code, details = _infer(served, _request(raw=b"\0" * 15))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "15 bytes, expected 16" in details


def test_unknown_input_name(served):
    code, details = _infer(served, _request(name="q"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no input 'q'" in details


def test_raw_count_mismatch(served):
    request = _request()
    request.raw_input_contents.append(b"")
    code, details = _infer(served, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 raw_input_contents for 1 inputs" in details


def test_fp16_without_raw_is_refused(served):
    request = pb.ModelInferRequest(model_name="add")
    request.inputs.add(name="x", datatype="FP16", shape=[1, 4])
    code, details = _infer(served, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in details


def test_unknown_output(served):
    request = _request()
    request.outputs.add(name="w")
    code, details = _infer(served, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no output 'w'" in details


def test_corrupt_model_file_is_invalid_argument_with_reason(served, model_store):
    with pytest.raises(grpc.RpcError) as caught:
        served.load("corrupt", model_store["corrupt"], "onnx")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ONNX Runtime cannot load model.onnx" in caught.value.details()
    assert not served.inference.ModelReady(pb.ModelReadyRequest(name="corrupt"), timeout=5).ready


def test_missing_path_and_unsupported_type(served, tmp_path):
    with pytest.raises(grpc.RpcError) as caught:
        served.load("ghost", tmp_path / "no-such-dir", "onnx")
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert "no-such-dir" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        served.load("tf", tmp_path, "tensorflow")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unsupported model type 'tensorflow'" in caught.value.details()


def test_bad_model_key_json(served, model_store):
    with pytest.raises(grpc.RpcError) as caught:
        served.load("k", model_store["add"], "", key="{not json")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "modelKey is not valid JSON" in caught.value.details()


def test_model_size_of_unknown_model(served):
    with pytest.raises(grpc.RpcError) as caught:
        served.spi.modelSize(rt.ModelSizeRequest(modelId="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_process_survives_all_of_it(served):
    assert served.process.poll() is None
    response = served.inference.ModelInfer(_request(), timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.0] * 4


def test_capacity_is_refused_with_resource_exhausted(tmp_path, model_store):
    from tests.support import models
    from tests.support.runtime_process import start_runtime_process

    half = [models.add_onnx(tmp_path / f"half{n}" / "model.onnx", weights=250_000) for n in range(2)]  # ~1 MB each
    big = models.add_onnx(tmp_path / "big" / "model.onnx", weights=600_000)  # ~2.4 MB on disk
    small_runtime = start_runtime_process(tmp_path / "rt", capacity="2MiB")
    try:
        small_runtime.load("half0", half[0].parent, "onnx")
        with pytest.raises(grpc.RpcError) as full:  # fits the runtime, not what is free now
            small_runtime.load("half1", half[1].parent, "onnx")
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'half1'" in full.value.details() and "free" in full.value.details()
        with pytest.raises(grpc.RpcError) as never:  # bigger than the whole runtime: no eviction can help
            small_runtime.load("big", big.parent, "onnx")
        assert never.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'big'" in never.value.details() and "whole capacity" in never.value.details()
        small_runtime.unload("half0")
        assert small_runtime.load("add", model_store["add"], "onnx").sizeInBytes > 0
    finally:
        assert small_runtime.stop() == 0
