"""Hundreds of models in one process, and memory that comes back after load/unload cycles."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from protos import grpc_service_pb2 as pb
from tests.support import models
from tests.support.runtime_process import start_runtime_process


@pytest.fixture(scope="module")
def many_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    return [models.add_onnx(root / f"m{i:03d}" / "model.onnx", offset=float(i)).parent for i in range(200)]


def test_200_models_loaded_and_each_answers(tmp_path, many_store):
    runtime = start_runtime_process(tmp_path, capacity="1GiB")
    try:
        for i, path in enumerate(many_store):
            runtime.load(f"m{i:03d}", path, "onnx")
        index = runtime.inference.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert len(index.models) == 200
        with grpcclient.InferenceServerClient(runtime.address) as client:
            x = np.zeros((1, 4), np.float32)
            for i in range(200):
                tensor = grpcclient.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(x)
                assert client.infer(f"m{i:03d}", [tensor]).as_numpy("y")[0, 0] == float(i)
    finally:
        assert runtime.stop() == 0


def test_500_load_unload_cycles_return_memory(tmp_path, many_store):
    runtime = start_runtime_process(tmp_path, capacity="1GiB")
    try:
        for i in range(20):  # warm up allocator pools and ORT's one-time state
            runtime.load("warm", many_store[i % 5], "onnx")
            runtime.unload("warm")
        baseline = runtime.rss_bytes()
        for i in range(500):
            runtime.load(f"cycle{i % 7}", many_store[i % 50], "onnx")
            runtime.unload(f"cycle{i % 7}")
        grown = runtime.rss_bytes() - baseline
        assert grown < 32 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 500 load/unload cycles"
        assert runtime.inference.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models == []
    finally:
        assert runtime.stop() == 0
