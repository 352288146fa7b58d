"""Real models built in the test: ONNX graphs with onnx.helper, torch modules saved for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# V2 datatype -> ONNX element type, for identity models of every datatype.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16, "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity_onnx(path: Path, datatype: str, shape=(None, 3)) -> Path:
    """OUT = IN for one V2 datatype."""
    elem = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["IN"], ["OUT"])], "identity",
        [helper.make_tensor_value_info("IN", elem, list(shape))],
        [helper.make_tensor_value_info("OUT", elem, list(shape))],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def add_onnx(path: Path, width: int = 4, offset: float = 1.0, weights: int = 0) -> Path:
    """y = x + offset (FP32 [-1, width]), and a second output z = x * 2.

    `weights` adds an unused-looking but real initializer of that many floats,
    to give the model a size on disk.
    """
    nodes = [
        helper.make_node("Add", ["x", "offset"], ["y"]),
        helper.make_node("Mul", ["x", "two"], ["z"]),
    ]
    initializers = [
        numpy_helper.from_array(np.full((width,), offset, dtype=np.float32), "offset"),
        numpy_helper.from_array(np.full((width,), 2.0, dtype=np.float32), "two"),
    ]
    if weights:
        initializers.append(numpy_helper.from_array(np.random.default_rng(0).random(weights, dtype=np.float32), "ballast"))
        nodes.append(helper.make_node("ReduceSum", ["ballast"], ["ballast_sum"], keepdims=0))
    graph = helper.make_graph(
        nodes, "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, width])],
        initializer=initializers,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def dense_onnx(path: Path, inputs: int, outputs: int, seed: int = 0) -> Path:
    """y = x @ W (FP32 [-1, inputs] -> [-1, outputs]): a session holds all of W, inputs x outputs
    floats (add_onnx's ballast is folded away by ONNX Runtime, so it holds none of it)."""
    weights = np.random.default_rng(seed).random((inputs, outputs), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, outputs])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def mlp_onnx(path: Path, widths: tuple[int, ...], seed: int = 0) -> Path:
    """An FP32 MLP x [-1, widths[0]] -> y [-1, widths[-1]]: MatMul + bias per layer, Relu between
    layers (e.g. (784, 128, 10), MNIST-sized; (1024,) * 5, four 1024-wide layers)."""
    rng = np.random.default_rng(seed)
    nodes, initializers, current = [], [], "x"
    for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        weights = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        initializers += [numpy_helper.from_array(weights, f"W{layer}"),
                         numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{layer}")]
        last = layer == len(widths) - 2
        nodes += [helper.make_node("MatMul", [current, f"W{layer}"], [f"m{layer}"]),
                  helper.make_node("Add", [f"m{layer}", f"b{layer}"], ["y" if last else f"a{layer}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [f"h{layer}"]))
            current = f"h{layer}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, widths[-1]])],
        initializer=initializers,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def lookup_onnx(path: Path, table: list[int]) -> Path:
    """OUT = table[IDX] (INT64 [-1, -1] -> INT64 [-1, -1], ONNX Gather): an integer model whose
    index out of the table's range the model itself rejects."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "IDX"], ["OUT"], axis=0)], "lookup",
        [helper.make_tensor_value_info("IDX", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("OUT", TensorProto.INT64, [None, None])],
        initializer=[numpy_helper.from_array(np.asarray(table, dtype=np.int64), "table")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def torchscript_linear(path: Path, in_features: int = 4, out_features: int = 2) -> tuple[Path, object]:
    """A TorchScript Linear(in, out) with fixed weights; returns the path and the module."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(in_features, out_features).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))
    return path, module


def exported_mlp(path: Path, in_features: int = 4, out_features: int = 3) -> tuple[Path, object]:
    """A torch.export program of a small MLP (batch of 2); returns the path and the module."""
    import torch

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(in_features, 8), torch.nn.ReLU(), torch.nn.Linear(8, out_features)).eval()
    program = torch.export.export(module, (torch.zeros(2, in_features),))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path, module
