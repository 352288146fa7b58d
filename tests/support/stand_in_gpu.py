"""A stand-in for a GPU's memory readings (`runtimes.device_memory.DeviceMemoryReader`), for the
tests that run where there is no GPU: everything else in them (models, backends, manager,
agent, etcd) is real. It is the only stand-in: what a load takes on a real device is
checked by the `gpu` tests and bench/gpu_check.py on a GPU machine.

Each measured load reads the device twice, before and after (`DeviceMeter.measure`); the
reading after a load grows the device's use by the next of `growths`, as if that load had
put so many bytes on the device. A reading after takes the next growth only once per
measured load, so the script holds only while measured loads of a device do not overlap,
which the meter promises.
"""

from __future__ import annotations

import threading

from runtimes.device_memory import DeviceMemory


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
