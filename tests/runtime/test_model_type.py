"""Which backend a load picks: the model key's model_type, a label expression's `mt:` label, a
plain type; and a real runtime process loading a model whose type is a label expression."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from protos import model_runtime_pb2 as rt
from runtimes.errors import InvalidInput
from runtimes.model_type import ModelType, parse_model_key, resolve_model_type


@pytest.mark.parametrize("model_type, key, expected", [
    ("onnx", "", ModelType("onnx")),
    ("onnx:1", "", ModelType("onnx", "1")),
    ("torchscript", "", ModelType("pytorch")),
    ("mt:onnx", "", ModelType("onnx")),
    ("mt:onnx:1", "", ModelType("onnx", "1")),
    ("mt:onnx|pv:grpc-v2", "", ModelType("onnx")),
    ("pv:grpc-v2|MT:pytorch", "", ModelType("pytorch")),
    ("rt:triton-2.x", "", ModelType("")),  # no format: the files tell
    ("rt:triton-2.x|pv:grpc-v2", "", ModelType("")),
    ("", "", ModelType("")),
    # ModelMesh's modelKey names the format; it wins over the labels.
    ("rt:triton-2.x", '{"model_type": {"name": "onnx", "version": "1"}}', ModelType("onnx", "1")),
    ("mt:pytorch|pv:grpc-v2", '{"model_type": {"name": "onnx"}}', ModelType("onnx")),
    ("mt:onnx", '{"model_type": {"name": ""}}', ModelType("onnx")),
    ("", '{"model_type": "pytorch:2"}', ModelType("pytorch", "2")),
])
def test_the_format_comes_from_the_key_then_the_mt_label_then_the_plain_type(model_type, key, expected):
    assert resolve_model_type(model_type, parse_model_key(key)) == expected


@pytest.mark.parametrize("model_type, key", [("mt:tensorflow|pv:grpc-v2", ""), ("rt:x", '{"model_type": {"name": "pmml"}}')])
def test_an_unsupported_format_is_refused_naming_it(model_type, key):
    with pytest.raises(InvalidInput, match="unsupported model type '(tensorflow|pmml)'"):
        resolve_model_type(model_type, parse_model_key(key))


def test_a_runtime_loads_a_model_whose_type_is_a_label_expression(runtime, model_store):
    reply = runtime.load("add-labelled", model_store["add"], "mt:onnx|pv:grpc-v2")
    assert reply.sizeInBytes > 0
    key = json.dumps({"model_type": {"name": "onnx"}})
    assert runtime.load("add-keyed", model_store["add"], "rt:triton-2.x", key).sizeInBytes > 0
    x = np.ones((1, 4), dtype=np.float32)
    with grpcclient.InferenceServerClient(runtime.address) as client:
        for name in ("add-labelled", "add-keyed"):
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer(name, [tensor]).as_numpy("y"), x + 1)
    with pytest.raises(grpc.RpcError) as refused:
        runtime.spi.predictModelSize(rt.PredictModelSizeRequest(modelId="tf", modelType="mt:tensorflow|pv:grpc-v2",
                                                                modelPath=str(model_store["add"])), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tensorflow" in refused.value.details()
    for name in ("add-labelled", "add-keyed"):
        runtime.unload(name)
