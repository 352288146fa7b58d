"""Triton model folders (config.pbtxt and version folders) with real ONNX and TorchScript models:
which version is served, config.pbtxt checked against the model, max_batch_size, and what a
later batcher reads (dynamic_batching). Loads go through a real runtime process where the
status code or the client's view matters, through the BackendRegistry where only the config does."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtimes.backends import BackendRegistry, Device
from runtimes.errors import InvalidModel
from tests.support import models

ADD_CONFIG = """
    name: "add"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "z" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def layout(root: Path, name: str, config: str | None, versions=(1,), offset_of=float) -> Path:
    """A model folder: `config` as config.pbtxt (None: none), an add model per version (y = x + version)."""
    folder = root / name
    for version in versions:
        models.add_onnx(folder / str(version) / "model.onnx", offset=offset_of(version))
    if config is not None:
        (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    return folder


@pytest.fixture(scope="module")
def registry():
    return BackendRegistry.default()


def load(registry: BackendRegistry, folder: Path, model_type: str = "", key: dict | None = None):
    backend, model_file = registry.select(model_type, folder, key or {})
    return backend.load(model_file, Device()), model_file


def _x(rows=2):
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)


# -- versions ---------------------------------------------------------------------------


def test_the_highest_version_is_served(runtime, tmp_path):
    folder = layout(tmp_path, "add", ADD_CONFIG, versions=(1, 2, 10))
    runtime.load("tri-latest", folder, "onnx")
    with grpcclient.InferenceServerClient(runtime.address) as client:
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(_x())
        np.testing.assert_array_equal(client.infer("tri-latest", [tensor]).as_numpy("y"), _x() + 10)
    runtime.unload("tri-latest")


def test_the_model_key_names_the_version(runtime, tmp_path):
    folder = layout(tmp_path, "add", ADD_CONFIG, versions=(1, 2, 3))
    runtime.load("tri-v2", folder, "triton", key=json.dumps({"version": "2"}))
    with grpcclient.InferenceServerClient(runtime.address) as client:
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(_x())
        np.testing.assert_array_equal(client.infer("tri-v2", [tensor]).as_numpy("y"), _x() + 2)
        assert client.get_model_metadata("tri-v2").versions == ["2"]
    runtime.unload("tri-v2")
    with pytest.raises(grpc.RpcError) as refused:
        runtime.load("tri-v7", folder, "triton", key=json.dumps({"version": "7"}))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version '7' is not in add (versions: [1, 2, 3])" in refused.value.details()


def test_a_specific_version_policy_is_honoured(registry, tmp_path):
    config = ADD_CONFIG + "version_policy: { specific: { versions: [ 1, 2 ] } }\n"
    folder = layout(tmp_path, "add", config, versions=(1, 2, 3))
    model, model_file = load(registry, folder)
    assert model_file.parent.name == "2" and model.triton_config.version == "2"
    with pytest.raises(InvalidModel, match="version 3 is not among the versions"):
        load(registry, folder, key={"version": "3"})


def test_version_folders_without_config_serve_the_highest_too(registry, tmp_path):
    folder = layout(tmp_path, "add", None, versions=(1, 2))
    model, model_file = load(registry, folder, "onnx")
    assert model_file.parent.name == "2"
    np.testing.assert_array_equal(model.infer({"x": _x()}, ["y"])["y"], _x() + 2)
    assert [s.shape for s in model.inputs] == [(-1, 4)]  # the model's own signature
    assert model.triton_config is None  # no config.pbtxt: nothing to keep


def test_a_repository_of_one_model_is_read_as_that_model(registry, tmp_path):
    """KServe's Triton storage URIs name the repository: <repository>/<model>/config.pbtxt."""
    layout(tmp_path / "repository", "add", ADD_CONFIG, versions=(1, 3))
    model, model_file = load(registry, tmp_path / "repository", "triton")
    assert model_file.parent.name == "3" and model.triton_config.name == "add"


def test_a_config_without_version_folders_fails(registry, tmp_path):
    folder = tmp_path / "flat"
    models.add_onnx(folder / "model.onnx")
    (folder / "config.pbtxt").write_text(textwrap.dedent(ADD_CONFIG))
    with pytest.raises(InvalidModel, match="no version folder"):
        load(registry, folder)


# -- the config applied --------------------------------------------------------------------


def test_max_batch_size_puts_a_variable_batch_dimension_first(runtime, tmp_path):
    folder = layout(tmp_path, "add", ADD_CONFIG)
    runtime.load("tri-batch", folder, "triton")
    with grpcclient.InferenceServerClient(runtime.address) as client:
        metadata = client.get_model_metadata("tri-batch")
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]
        assert metadata.platform == "onnxruntime_onnx"
        tensor = grpcclient.InferInput("x", [9, 4], "FP32")
        tensor.set_data_from_numpy(_x(9))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("tri-batch", [tensor])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "batch of 9 is over config.pbtxt's max_batch_size 8" in refused.value.message()
        tensor = grpcclient.InferInput("x", [8, 4], "FP32")
        tensor.set_data_from_numpy(_x(8))
        np.testing.assert_array_equal(client.infer("tri-batch", [tensor]).as_numpy("z"), _x(8) * 2)
        config = client.get_model_config("tri-batch").config  # as Triton answers it: dims without the batch
        assert config.max_batch_size == 8 and [list(t.dims) for t in config.input] == [[4]]
        assert not config.HasField("dynamic_batching")
    runtime.unload("tri-batch")


def test_model_config_passes_dynamic_batching_on(runtime, tmp_path):
    config = ADD_CONFIG + "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100 }\n"
    runtime.load("tri-dyn", layout(tmp_path, "add", config), "triton")
    with grpcclient.InferenceServerClient(runtime.address) as client:
        batching = client.get_model_config("tri-dyn").config.dynamic_batching
        assert list(batching.preferred_batch_size) == [2, 4] and batching.max_queue_delay_microseconds == 100
    runtime.unload("tri-dyn")


def test_max_batch_size_zero_means_full_shapes(registry, tmp_path):
    config = """
        platform: "onnxruntime_onnx"
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 4 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
    """
    model, _ = load(registry, layout(tmp_path, "add", config))
    assert model.inputs[0].shape == (3, 4)  # the config fixes what the model leaves open
    assert [s.name for s in model.outputs] == ["y"]  # only the outputs the config lists
    assert list(model.infer({"x": _x(3)}, [])) == ["y"]


def test_dynamic_batching_is_kept_for_a_batcher(registry, tmp_path):
    config = ADD_CONFIG + """
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 500 }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
        optimization { graph { level: 1 } }
    """  # fields for how Triton runs the model: parsed (or, optimization, skipped) and not used
    model, _ = load(registry, layout(tmp_path, "add", config))
    batching = model.triton_config.dynamic_batching
    assert batching.preferred_batch_sizes == (4, 8) and batching.max_queue_delay_us == 500
    assert model.triton_config.max_batch_size == 8 and model.triton_config.name == "add"


def test_without_dynamic_batching_there_is_none(registry, tmp_path):
    model, _ = load(registry, layout(tmp_path, "add", ADD_CONFIG))
    assert model.triton_config.dynamic_batching is None


@pytest.mark.parametrize("change, reason", [
    (('name: "x"', 'name: "input"'), "config.pbtxt input 'input' is not an input of the model (its inputs: ['x'])"),
    (("TYPE_FP32 dims: [ 4 ] } ]\n    output", "TYPE_FP64 dims: [ 4 ] } ]\n    output"),
     "config.pbtxt says input 'x' is FP64, the model's is FP32"),
    (('"x" data_type: TYPE_FP32 dims: [ 4 ]', '"x" data_type: TYPE_FP32 dims: [ 5 ]'),
     "config.pbtxt gives input 'x' shape [-1, 5] (max_batch_size 8: a batch dimension first), the model's is [-1, 4]"),
    (("max_batch_size: 8", "max_batch_size: 0"), "config.pbtxt gives input 'x' shape [4], the model's is [-1, 4]"),
    (('name: "z"', 'name: "w"'), "config.pbtxt output 'w' is not an output of the model"),
    (('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"'), "config.pbtxt names platform 'tensorflow_savedmodel'"),
    (('platform: "onnxruntime_onnx"', 'platform: "onnxruntime_onnx" backend: "pytorch"'), "disagree"),
    (("max_batch_size: 8", "max_batch_size: 8 sequence_batching { }"), "asks for sequence_batching"),
    (('dims: [ 4 ] } ]\n    output', 'dims: [ 4 ] reshape: { shape: [ 5 ] } } ]\n    output'),
     "config.pbtxt gives input 'x' shape [-1, 5] (max_batch_size 8: a batch dimension first), the model's is [-1, 4]"),
    (("max_batch_size: 8", "max_batch_size: eight"), "config.pbtxt is not a valid Triton model configuration"),
])
def test_a_config_that_contradicts_the_model_fails_the_load_naming_it(runtime, tmp_path, change, reason):
    assert change[0] in ADD_CONFIG
    folder = layout(tmp_path, "add", ADD_CONFIG.replace(*change))
    with pytest.raises(grpc.RpcError) as refused:
        runtime.load("tri-bad", folder, "")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details()


def test_reshape_gives_clients_the_dims_and_the_model_its_shape(runtime, tmp_path):
    """Triton's densenet example: clients send [3, 224, 224], the model takes [1, 3, 224, 224]."""
    folder = tmp_path / "identity"
    models.identity_onnx(folder / "1" / "model.onnx", "FP32", shape=(1, 2, 3))
    (folder / "config.pbtxt").write_text(textwrap.dedent("""
        platform: "onnxruntime_onnx"
        max_batch_size: 0
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape: { shape: [ 1, 2, 3 ] } } ]
        output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 1, 2, 3 ] } } ]
    """))
    runtime.load("tri-reshape", folder, "triton")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with grpcclient.InferenceServerClient(runtime.address) as client:
        assert [list(t.shape) for t in client.get_model_metadata("tri-reshape").inputs] == [[2, 3]]
        tensor = grpcclient.InferInput("IN", [2, 3], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("tri-reshape", [tensor]).as_numpy("OUT")
        np.testing.assert_array_equal(result, x.reshape(6))
    runtime.unload("tri-reshape")


def test_reshape_keeps_the_batch_dimension(registry, tmp_path):
    folder = layout(tmp_path, "add", ADD_CONFIG.replace('dims: [ 4 ] } ]\n    output', 'dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n    output'))
    model, _ = load(registry, folder)
    assert model.inputs[0].shape == (-1, 2, 2)
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(model.infer({"x": x}, ["y"])["y"], x.reshape(3, 4) + 1)


def test_a_fixed_batch_dimension_contradicts_max_batch_size(registry, tmp_path):
    folder = tmp_path / "fixed"
    models.identity_onnx(folder / "1" / "model.onnx", "FP32", shape=(2, 3))
    (folder / "config.pbtxt").write_text('platform: "onnxruntime_onnx" max_batch_size: 4')
    with pytest.raises(InvalidModel, match=r"max_batch_size 4 needs a variable first dimension, but the model's "
                                           r"input 'IN' has shape \[2, 3\]"):
        load(registry, folder)


def test_the_asked_type_must_match_the_config(registry, tmp_path):
    with pytest.raises(InvalidModel, match="model type 'pytorch' was asked for, but config.pbtxt's platform/backend is onnx's"):
        load(registry, layout(tmp_path, "add", ADD_CONFIG), "pytorch")


def test_the_triton_type_needs_a_triton_folder(runtime, model_store):
    with pytest.raises(grpc.RpcError) as refused:
        runtime.load("tri-flat", model_store["identity_fp32"], "triton")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs a Triton model folder" in refused.value.details()


def test_default_model_filename_picks_the_file(registry, tmp_path):
    folder = layout(tmp_path, "add", ADD_CONFIG + 'default_model_filename: "other.onnx"\n')
    models.add_onnx(folder / "1" / "other.onnx", offset=100.0)
    model, model_file = load(registry, folder)
    assert model_file.name == "other.onnx"
    np.testing.assert_array_equal(model.infer({"x": _x()}, ["y"])["y"], _x() + 100)


# -- PyTorch in a Triton folder ---------------------------------------------------------------


def test_torchscript_takes_names_and_datatypes_from_the_config(runtime, tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "linear"
    _, module = models.torchscript_linear(folder / "1" / "model.pt")
    (folder / "config.pbtxt").write_text(textwrap.dedent("""
        backend: "pytorch"
        max_batch_size: 16
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """))
    runtime.load("tri-torch", folder, "triton")
    x = np.random.default_rng(5).random((3, 4), dtype=np.float32)
    with grpcclient.InferenceServerClient(runtime.address) as client:
        metadata = client.get_model_metadata("tri-torch")
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT__0", "FP32", [-1, 4])]
        tensor = grpcclient.InferInput("INPUT__0", [3, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("tri-torch", [tensor]).as_numpy("OUTPUT__0")
        np.testing.assert_allclose(result, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
        wrong = grpcclient.InferInput("INPUT__0", [3, 4], "FP64")
        wrong.set_data_from_numpy(x.astype(np.float64))
        with pytest.raises(InferenceServerException, match="datatype FP64, expected FP32"):
            client.infer("tri-torch", [wrong])
    runtime.unload("tri-torch")


def test_torchscript_with_more_config_inputs_than_arguments_fails(registry, tmp_path):
    pytest.importorskip("torch")
    folder = tmp_path / "linear"
    models.torchscript_linear(folder / "1" / "model.pt")
    (folder / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch" input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, 4 ] },'
        ' { name: "INPUT__1" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]')
    with pytest.raises(InvalidModel, match=r"config.pbtxt declares 2 inputs, the model has 1"):
        load(registry, folder)
