"""GPU memory on a real GPU (`gpu` marker: skipped without a CUDA device).

The probe reads the device; a real model manager on "cuda" measures what an ONNX Runtime
(CUDA provider) and a torch model take on the device, apart from host memory, after each
backend's one-time device overhead was taken at its setup; unloading gives the memory
back, checked after 100 load/unload cycles. Nothing stands in for anything here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from puller import Puller
from runtimes.backend_setup import BackendSetup
from runtimes.backends import BackendRegistry, Device
from runtimes.device_memory import _from_nvml, _from_torch, read_device_memory
from runtimes.model_manager import ManagerConfig, ModelManager
from runtimes.server import resolve_device_capacity
from runtimes.settings import RuntimeSettings
from tests.support import models

pytestmark = pytest.mark.gpu

MIB = 1 << 20
WIDTH = 4096  # a 4096 x 4096 FP32 weight: 64 MiB
WEIGHTS = WIDTH * WIDTH * 4
CYCLES = 100


def test_the_probe_reads_the_device_and_nvml_and_torch_agree_on_its_size():
    memory = read_device_memory(0)
    assert memory is not None and 0 < memory.free <= memory.total
    nvml, torch_reading = _from_nvml(0), _from_torch(0)
    if nvml is not None and torch_reading is not None:
        assert nvml.total == torch_reading.total


def _model(kind: str, folder: Path) -> tuple[str, Path, str]:
    """(model type, path, input name) of a model of WEIGHTS bytes."""
    if kind == "onnx":
        ort = pytest.importorskip("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("this onnxruntime build has no CUDA provider (install onnxruntime-gpu)")
        return "onnx", models.dense_onnx(folder / "model.onnx", WIDTH, WIDTH).parent, "x"
    pytest.importorskip("torch")
    path, _ = models.torchscript_linear(folder / "model.pt", WIDTH, WIDTH)
    return "pytorch", path.parent, "input"


@contextlib.asynccontextmanager
async def gpu_runtime(tmp_path: Path, backend: str) -> AsyncIterator[ModelManager]:
    """A manager on cuda:0 with `backend` set up (its device overhead taken) and the device
    capacity read after, as `meshserve runtime` does."""
    puller = Puller(tmp_path / "cache")
    backends = BackendRegistry.default()
    manager = ModelManager(ManagerConfig(capacity_bytes=8 << 30, device=Device("cuda", 0)), backends, puller)
    setup = BackendSetup(manager, backends, "test", calibrate=False)
    try:
        await setup.ready(backend)
        assert setup.results[backend].device_bytes > 0, "running a probe on the device keeps a context or handles"
        manager.set_device_capacity(resolve_device_capacity(RuntimeSettings(), manager.config.device))
        yield manager
    finally:
        await manager.close()
        await puller.aclose()


@pytest.mark.parametrize("kind", ["onnx", "pytorch"])
async def test_a_model_is_measured_on_the_device_and_unloading_gives_it_back(tmp_path, kind):
    model_type, path, input_name = _model(kind, tmp_path / "store" / kind)
    async with gpu_runtime(tmp_path, model_type) as manager:
        before = read_device_memory(0).used
        host = await manager.load("big", model_type, str(path))
        device = manager.device_size_of("big")
        # Its weights are on the device (an allocator rounds up and keeps some slack), not on the host.
        assert WEIGHTS <= device < 2 * WEIGHTS, device
        assert host < WEIGHTS // 4, host
        assert manager.device_used_bytes == device + manager.device_overhead_bytes
        x = np.ones((2, WIDTH), np.float32)
        (output,) = (await manager.run("big", {input_name: x}, [])).values()
        assert output.shape == (2, WIDTH)
        await manager.unload("big")
        for _ in range(CYCLES - 1):
            await manager.load("big", model_type, str(path))
            await manager.unload("big")
        kept = read_device_memory(0).used - before
        assert kept < WEIGHTS // 4, f"{kept / MIB:.0f} MiB still in use after {CYCLES} load/unload cycles"
