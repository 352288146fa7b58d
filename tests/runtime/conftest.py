"""A real runtime process with real ONNX and PyTorch models, shared by a test module.

The PyTorch models come from their own fixture (`torch_model_store`), so without torch
installed only the tests that use them skip; the ONNX ones still run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import models
from tests.support.runtime_process import start_runtime_process


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> dict[str, Path]:
    """ONNX model folders on disk (and a corrupt one), built once: name -> path. Needs no torch."""
    root = tmp_path_factory.mktemp("model-store")
    store = {"add": models.add_onnx(root / "add" / "1" / "model.onnx").parent.parent}
    for datatype in models.ONNX_TYPES:
        store[f"identity_{datatype.lower()}"] = models.identity_onnx(root / f"identity_{datatype.lower()}" / "model.onnx", datatype)
    corrupt = root / "corrupt" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx protobuf \x00\x01\x02" * 10)
    store["corrupt"] = corrupt.parent
    return store


@pytest.fixture(scope="session")
def torch_model_store(tmp_path_factory) -> dict[str, Path]:
    """PyTorch model folders (TorchScript with and without schema.json, a torch.export
    program), built once: name -> path. Skips the tests that use it when torch is missing."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("torch-model-store")
    ts_path, _ = models.torchscript_linear(root / "linear_ts" / "model.pt")
    (ts_path.parent / "schema.json").write_text(json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }))
    return {
        "linear_ts": ts_path.parent,
        "linear_ts_noschema": models.torchscript_linear(root / "linear_ts_noschema" / "model.pt")[0],
        "mlp_pt2": models.exported_mlp(root / "mlp_pt2" / "model.pt2")[0],
    }


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    process = start_runtime_process(tmp_path_factory.mktemp("runtime"), capacity="512MiB")
    yield process
    assert process.stop() == 0, process.log()
