"""Memory of a GPU: total, free and used per device, and what one load takes of it.

- `read_device_memory(index)`: the device's total and free bytes from NVML (nvidia-ml-py,
  the driver's own count: every allocator of every process, ONNX Runtime's arena and
  torch's cache alike), else `torch.cuda.mem_get_info`; None on a machine without an NVIDIA
  device (nothing is imported there: NVML's and torch's imports cost time and memory a CPU
  runtime should not pay).
- `device_capacity(memory, reserve)`: the bytes models may take: the free memory less a
  reserve (kernels' workspaces, the CUDA context of a library set up later, fragmentation).
- `DeviceMeter`: a model's size on the device is the device memory in use after its load
  less before. Another load on the same device meanwhile would show in the difference, so
  measured loads of one device run one at a time (`measure` holds the device's lock);
  loads on other devices, and unmeasured loads, are not held up.

The readings are the driver's, device-wide: another process allocating on the same GPU
during a load counts toward the model (the capacity leaves out only what others held at
start-up). One device per runtime is the deployment this is made for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = ["DeviceMemory", "DeviceMemoryReader", "DeviceMeter", "device_capacity", "nvidia_device_present",
           "read_device_memory"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory, in bytes, at the time it was read."""

    total: int
    free: int

    @property
    def used(self) -> int:
        return self.total - self.free


class DeviceMemoryReader(Protocol):
    """Reads a device's memory; None: no such device."""

    def __call__(self, index: int) -> DeviceMemory | None: ...


def nvidia_device_present() -> bool:
    """An NVIDIA device node or driver entry exists (no library is imported to tell)."""
    return any(Path("/dev").glob("nvidia[0-9]*")) or any(Path("/proc/driver/nvidia/gpus").glob("*"))


def read_device_memory(index: int) -> DeviceMemory | None:
    """Device `index`'s memory from NVML, else from torch; None when there is no such device."""
    if not nvidia_device_present():
        return None
    return _from_nvml(index) or _from_torch(index)


_nvml_ready: bool | None = None  # None: not tried yet; False: NVML is not usable here
_nvml_lock = threading.Lock()


def _from_nvml(index: int) -> DeviceMemory | None:
    global _nvml_ready
    try:
        import pynvml  # nvidia-ml-py, the `gpu` extra
    except ImportError:
        return None
    with _nvml_lock:
        if _nvml_ready is None:
            try:
                pynvml.nvmlInit()  # once per process; NVML counts its own users
                _nvml_ready = True
            except pynvml.NVMLError as error:
                log.info("NVML is not usable (%s); reading device memory through torch", error)
                _nvml_ready = False
    if not _nvml_ready:
        return None
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
    except pynvml.NVMLError as error:
        log.warning("NVML cannot read device %d's memory: %s", index, error)
        return None
    return DeviceMemory(int(info.total), int(info.free))


def _from_torch(index: int) -> DeviceMemory | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    free, total = torch.cuda.mem_get_info(index)  # creates the CUDA context if there is none
    return DeviceMemory(int(total), int(free))


def device_capacity(memory: DeviceMemory, reserve: int) -> int:
    """Bytes of models a device may hold: its free memory less `reserve` (never negative)."""
    return max(memory.free - reserve, 0)


class DeviceMeter:
    """Measures what a load takes on its device, one measured load per device at a time."""

    def __init__(self, reader: DeviceMemoryReader = read_device_memory) -> None:
        self._reader = reader
        self._locks: dict[int, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def read(self, index: int) -> DeviceMemory | None:
        return self._reader(index)

    def measure(self, index: int, work: Callable[[], T]) -> tuple[T, int]:
        """Run `work` (blocking: call it from a worker thread) with device `index` to itself
        among measured loads; its result and the device bytes it left in use (0 when the
        device cannot be read). Raises what `work` raised."""
        with self._lock(index):
            before = self._reader(index)
            result = work()
            after = self._reader(index) if before is not None else None
        grown = after.used - before.used if before is not None and after is not None else 0
        return result, max(grown, 0)

    def _lock(self, index: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(index, threading.Lock())
