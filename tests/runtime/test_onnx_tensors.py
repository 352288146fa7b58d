"""The ONNX backend's size of a model: its constant tensors' bytes, read from the file's wire
format; checked against numpy's own byte counts of the arrays the test puts in."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtimes.backends import Device
from runtimes.backends import onnx_tensors
from runtimes.backends.onnx_backend import OnnxBackend
from runtimes.backends.onnx_tensors import NotOnnx, constant_tensor_bytes, model_tensor_bytes

ARRAYS = {
    "f32": np.arange(15, dtype=np.float32).reshape(3, 5),
    "i64": np.arange(7, dtype=np.int64),
    "f16": np.ones((2, 2), np.float16),
    "flag": np.zeros(10, np.bool_),
    "scalar": np.array(2.5, np.float64),
}


def _model(initializers, nodes=(), inputs=None, outputs=None, sparse=()) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])]
    nodes = list(nodes) or [helper.make_node("Add", ["x", "f32row"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                              sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _initializers() -> list:
    row = numpy_helper.from_array(np.ones(5, np.float32), "f32row")
    return [row, *(numpy_helper.from_array(a, name) for name, a in ARRAYS.items())]


def _expected() -> int:
    return 5 * 4 + sum(a.nbytes for a in ARRAYS.values())


def test_initializers_of_every_width_count_their_dense_bytes(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_model(_initializers()), str(path))
    assert constant_tensor_bytes(path) == _expected() == 20 + 60 + 56 + 8 + 10 + 8


def test_external_data_counts_although_the_model_file_is_tiny(tmp_path):
    path = tmp_path / "model.onnx"
    big = np.random.default_rng(0).random((256, 1024), dtype=np.float32)  # 1 MiB
    model = _model([numpy_helper.from_array(np.ones(5, np.float32), "f32row"), numpy_helper.from_array(big, "w")])
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    assert path.stat().st_size < 4096 and (tmp_path / "weights.bin").stat().st_size >= big.nbytes
    assert constant_tensor_bytes(path) == 20 + big.nbytes


def test_constant_nodes_subgraphs_and_sparse_initializers_count(tmp_path):
    constant = np.arange(6, dtype=np.int32)
    in_branch = np.ones((3, 5), np.float64)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["branch_out"])], "then",
        [], [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [None, 5])],
        initializer=[numpy_helper.from_array(in_branch, "unused")])
    sparse_values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sparse")
    sparse_indices = numpy_helper.from_array(np.array([1, 7], np.int64), "sparse_indices")
    sparse = helper.make_sparse_tensor(sparse_values, sparse_indices, [10])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(constant, "c")),
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cond")),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    model = _model([], nodes=nodes, sparse=[sparse])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    # the If holds the same subgraph twice (then and else): it counts twice, as ORT builds both
    assert constant_tensor_bytes(path) == constant.nbytes + 1 + 2 * in_branch.nbytes + 8 + 16


def test_string_tensors_count_their_characters_and_each_string_object():
    strings = helper.make_tensor("names", TensorProto.STRING, [3], [b"a", b"bcd", b""])
    model = _model([strings], nodes=[helper.make_node("Identity", ["x"], ["y"])])
    assert model_tensor_bytes(model.SerializeToString()) == 4 + 3 * onnx_tensors._STRING_OVERHEAD


def test_field_numbers_are_onnx_protos():
    numbers = {
        (onnx.ModelProto, "graph"): onnx_tensors._MODEL_GRAPH,
        (onnx.GraphProto, "node"): onnx_tensors._GRAPH_NODE,
        (onnx.GraphProto, "initializer"): onnx_tensors._GRAPH_INITIALIZER,
        (onnx.GraphProto, "sparse_initializer"): onnx_tensors._GRAPH_SPARSE_INITIALIZER,
        (onnx.NodeProto, "attribute"): onnx_tensors._NODE_ATTRIBUTE,
        (onnx.AttributeProto, "t"): onnx_tensors._ATTRIBUTE_T,
        (onnx.AttributeProto, "g"): onnx_tensors._ATTRIBUTE_G,
        (onnx.AttributeProto, "tensors"): onnx_tensors._ATTRIBUTE_TENSORS,
        (onnx.AttributeProto, "graphs"): onnx_tensors._ATTRIBUTE_GRAPHS,
        (onnx.AttributeProto, "sparse_tensor"): onnx_tensors._ATTRIBUTE_SPARSE_TENSOR,
        (onnx.AttributeProto, "sparse_tensors"): onnx_tensors._ATTRIBUTE_SPARSE_TENSORS,
        (onnx.TensorProto, "dims"): onnx_tensors._TENSOR_DIMS,
        (onnx.TensorProto, "data_type"): onnx_tensors._TENSOR_DATA_TYPE,
        (onnx.TensorProto, "string_data"): onnx_tensors._TENSOR_STRING_DATA,
        (onnx.SparseTensorProto, "values"): onnx_tensors._SPARSE_VALUES,
        (onnx.SparseTensorProto, "indices"): onnx_tensors._SPARSE_INDICES,
    }
    assert {key: key[0].DESCRIPTOR.fields_by_name[key[1]].number for key in numbers} == numbers
    assert onnx_tensors._STRING == TensorProto.STRING


def test_element_widths_are_onnx_types():
    for data_type, bits in onnx_tensors._BITS.items():
        dtype = helper.tensor_dtype_to_np_dtype(data_type)
        name = TensorProto.DataType.Name(data_type)
        expected = 4 if name.endswith(("INT4", "FLOAT4E2M1")) else dtype.itemsize * 8
        assert bits == expected, name


@pytest.mark.parametrize("data", [b"\x0a\xff\x01", b"\x3a\x05ab", b"\x0f"])
def test_a_truncated_or_foreign_message_is_refused(data):
    with pytest.raises(NotOnnx):
        model_tensor_bytes(data)


def test_an_empty_file_holds_nothing(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert constant_tensor_bytes(tmp_path / "empty.onnx") == 0


def test_the_onnx_backend_reports_the_tensor_bytes_as_the_models_size(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_model(_initializers()), str(path))
    model = OnnxBackend().load(path, Device())
    assert model.size_bytes() == _expected()
    assert model.infer({"x": np.zeros((1, 5), np.float32)}, ["y"])["y"].tolist() == [[1.0] * 5]


def test_the_onnx_probe_loads_and_answers(tmp_path):
    backend = OnnxBackend()
    probe = backend.write_probe(tmp_path)
    model = backend.load(probe.model_file, Device())
    assert model.infer(probe.inputs, [])["y"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert model.size_bytes() == 16
