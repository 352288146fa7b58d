"""The example models `meshserve up` registers: built here, on this machine, nothing fetched.

- `iris` (ONNX): a multinomial logistic regression over the four iris measurements
  (sepal length, sepal width, petal length, petal width, in cm) to the three species
  (setosa, versicolor, virginica). It is trained at build time with plain numpy gradient
  descent on a GENERATED STAND-IN for Fisher's 150-sample iris table: 50 samples per
  species drawn (fixed seed) from normal distributions with the published per-species
  means and standard deviations of the real data. So it answers like an iris classifier
  (setosa vs. the others perfectly, versicolor/virginica mostly) without shipping the
  table. Input `features` FP32 [-1, 4]; outputs `probabilities` FP32 [-1, 3] (a softmax,
  rows sum to 1) and `label` INT64 [-1] (the argmax).
- `mnist-mlp` (PyTorch TorchScript + `schema.json`): a 784 -> 128 -> 10 MLP with
  fixed-seed (torch.manual_seed(0)) weights, UNTRAINED: its answers are deterministic but
  meaningless; it is there to show a PyTorch model with an MNIST-sized input. Input
  `input` FP32 [-1, 784]; output `logits` FP32 [-1, 10]. Built only when torch is installed.
- `add` (ONNX): y = x + 1 over FP32 [-1, 4], the smallest thing to call.

Building needs the `onnx` package (a main dependency) and, for `mnist-mlp`, torch (the
`torch` extra). `python -m mesh.cli.examples DIR` builds every example it can into
`DIR/<name>/` and writes `DIR/examples.json` ([{name, type, path}], plus `skipped`
with reasons); `meshserve up` runs it as a child process so the up process itself never
imports torch.

Imports: numpy, onnx and torch only; no gRPC, no etcd.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["EXAMPLES", "Example", "IRIS_CLASSES", "build_all", "iris_dataset", "iris_parameters", "main"]

MANIFEST = "examples.json"
IRIS_CLASSES = ("setosa", "versicolor", "virginica")

# Per-species means and standard deviations of Fisher's iris data (sepal length, sepal
# width, petal length, petal width; cm): the published summary statistics.
_IRIS_MEANS = np.array([[5.006, 3.428, 1.462, 0.246],
                        [5.936, 2.770, 4.260, 1.326],
                        [6.588, 2.974, 5.552, 2.026]])
_IRIS_STDS = np.array([[0.352, 0.379, 0.174, 0.105],
                       [0.516, 0.314, 0.470, 0.198],
                       [0.636, 0.322, 0.552, 0.275]])
_IRIS_SEED = 1936  # the year Fisher published the data
_MLP_SEED = 0


@dataclass(frozen=True)
class Example:
    """One built example: its model id, model type and the folder to register."""

    name: str
    type: str
    path: str


def iris_dataset() -> tuple[np.ndarray, np.ndarray]:
    """The generated stand-in for the iris table: (150x4 float32 features, 150 int64 labels)."""
    rng = np.random.default_rng(_IRIS_SEED)
    features = np.concatenate([rng.normal(_IRIS_MEANS[c], _IRIS_STDS[c], size=(50, 4)) for c in range(3)])
    features = np.round(np.clip(features, 0.1, None), 1)  # the real table has one decimal, all positive
    labels = np.repeat(np.arange(3, dtype=np.int64), 50)
    return features.astype(np.float32), labels


def iris_parameters(steps: int = 2000, learning_rate: float = 0.5) -> dict[str, np.ndarray]:
    """Train the iris classifier: standardize, then full-batch gradient descent on softmax
    cross-entropy with a little L2. Deterministic (fixed data, zero start, fixed steps).
    Returns mean, std (4,), weights (4, 3) and bias (3,), all float32."""
    features, labels = iris_dataset()
    x = features.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    onehot = np.eye(3)[labels]
    weights, bias = np.zeros((4, 3)), np.zeros(3)
    for _ in range(steps):
        logits = z @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) / len(z)
        weights -= learning_rate * (z.T @ grad + 1e-3 * weights)
        bias -= learning_rate * grad.sum(axis=0)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32),
            "weights": weights.astype(np.float32), "bias": bias.astype(np.float32)}


def _save_onnx(model, path: Path) -> None:
    import onnx

    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_iris(folder: Path) -> Example:
    from onnx import TensorProto, helper, numpy_helper

    params = iris_parameters()
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["standardized"]),
        helper.make_node("MatMul", ["standardized", "weights"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "iris",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
        initializer=[numpy_helper.from_array(value, name) for name, value in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="meshserve-examples")
    model.doc_string = ("Iris species (0 setosa, 1 versicolor, 2 virginica) from sepal/petal length and width in cm; "
                        "logistic regression trained on a generated stand-in of the iris table (see mesh/cli/examples.py).")
    _save_onnx(model, folder / "model.onnx")
    return Example("iris", "onnx", str(folder))


def build_add(folder: Path) -> Example:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=[numpy_helper.from_array(np.ones(4, dtype=np.float32), "one")],
    )
    _save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                 producer_name="meshserve-examples"), folder / "model.onnx")
    return Example("add", "onnx", str(folder))


def mnist_mlp_module():
    """The untrained 784 -> 128 -> 10 MLP, fixed-seed weights (needs torch)."""
    import torch

    torch.manual_seed(_MLP_SEED)
    return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()


def build_mnist_mlp(folder: Path) -> Example:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(mnist_mlp_module()).save(str(folder / "model.pt"))
    schema = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
              "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
    (folder / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return Example("mnist-mlp", "pytorch", str(folder))


EXAMPLES = {"iris": build_iris, "mnist-mlp": build_mnist_mlp, "add": build_add}


def build_all(root: Path, names: list[str] | None = None) -> tuple[list[Example], dict[str, str]]:
    """Build the examples into `root/<name>/` (replacing what is there); returns the built
    ones and {name: why not} for those skipped because a package is missing."""
    built, skipped = [], {}
    for name in names or list(EXAMPLES):
        try:
            built.append(EXAMPLES[name](root / name))
        except ImportError as error:
            skipped[name] = f"needs the '{error.name}' package"
    return built, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.cli.examples", description="Build meshserve's example models.")
    parser.add_argument("root", type=Path, help="folder to build into (one sub-folder per model)")
    parser.add_argument("--only", action="append", choices=list(EXAMPLES), help="build only this one (repeatable)")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    built, skipped = build_all(args.root, args.only)
    manifest = {"examples": [asdict(e) for e in built], "skipped": skipped}
    (args.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for example in built:
        print(f"built {example.name} ({example.type}) in {example.path}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
