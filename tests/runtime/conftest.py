"""A real runtime process with real ONNX and PyTorch models, shared by a test module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import models
from tests.support.runtime_process import start_runtime_process


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> dict[str, Path]:
    """Model folders on disk, built once: name -> path."""
    root = tmp_path_factory.mktemp("model-store")
    store = {"add": models.add_onnx(root / "add" / "1" / "model.onnx").parent.parent}
    for datatype in models.ONNX_TYPES:
        store[f"identity_{datatype.lower()}"] = models.identity_onnx(root / f"identity_{datatype.lower()}" / "model.onnx", datatype)
    ts_path, _ = models.torchscript_linear(root / "linear_ts" / "model.pt")
    (ts_path.parent / "schema.json").write_text(json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }))
    store["linear_ts"] = ts_path.parent
    store["linear_ts_noschema"] = models.torchscript_linear(root / "linear_ts_noschema" / "model.pt")[0]
    store["mlp_pt2"] = models.exported_mlp(root / "mlp_pt2" / "model.pt2")[0]
    corrupt = root / "corrupt" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx protobuf \x00\x01\x02" * 10)
    store["corrupt"] = corrupt.parent
    return store


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    process = start_runtime_process(tmp_path_factory.mktemp("runtime"), capacity="512MiB")
    yield process
    assert process.stop() == 0, process.log()
