"""Suite-wide: tests marked `gpu` need a CUDA device and are skipped without one."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    from runtimes.device_memory import read_device_memory  # no import of NVML or torch without a device

    if read_device_memory(0) is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible: no NVIDIA device, or NVML and torch cannot read it)")
    for item in gpu_tests:
        item.add_marker(skip)
