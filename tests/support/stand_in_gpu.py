"""A stand-in for a GPU's memory readings (`runtimes.device_memory.DeviceMemoryReader`), for the
tests that run where there is no GPU: everything else in them (models, backends, manager,
agent, etcd) is real. It is the only stand-in: what a load takes on a real device is
checked by the `gpu` tests and bench/gpu_check.py on a GPU machine.

Each measured load reads the device twice, before and after (`DeviceMeter.measure`); the
reading after a load grows the device's use by the next of `growths`, as if that load had
put so many bytes on the device. A reading after takes the next growth only once per
measured load, so the script holds only while measured loads of a device do not overlap,
which the meter promises. `gpu_manager` is a real model manager on "cuda" that reads it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from puller import Puller
from runtimes.backends import BackendRegistry, Device
from runtimes.backends.onnx_backend import OnnxBackend
from runtimes.device_memory import DeviceMemory, DeviceMeter
from runtimes.model_manager import ManagerConfig, ModelManager

MIB = 1 << 20
#: What each model is charged besides its own data (fixed: GPU runtimes are not calibrated).
FIXED_COST = 64 << 10


class StandInGpu:
    def __init__(self, total: int, *growths: int, used: int = 0) -> None:
        self.total = total
        self.used = used
        self.growths = list(growths)
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self, index: int) -> DeviceMemory | None:
        if index != 0:
            return None  # one device
        with self._lock:
            if self.reads % 2 == 1:  # the reading after a load
                self.used += self.growths.pop(0) if self.growths else 0
            self.reads += 1
            return DeviceMemory(self.total, self.total - self.used)


@contextlib.asynccontextmanager
async def gpu_manager(tmp_path: Path, gpu: StandInGpu, device_capacity: int | None,
                      device: Device = Device("cuda", 0)) -> AsyncIterator[ModelManager]:
    """A real manager of real ONNX models on `device` (64 MiB of host memory), its device
    readings from `gpu`; ONNX Runtime runs them on the CPU for want of a CUDA provider."""
    puller = Puller(tmp_path / "cache")
    config = ManagerConfig(capacity_bytes=64 * MIB, device=device, model_fixed_cost=FIXED_COST)
    manager = ModelManager(config, BackendRegistry([OnnxBackend()]), puller, meter=DeviceMeter(gpu))
    manager.set_device_capacity(device_capacity)
    try:
        yield manager
    finally:
        await manager.close()
        await puller.aclose()
