"""GPU memory on the CPU-only path: the probe reports no device here, the reserve arithmetic,
the measuring lock, and a real model manager accounting device bytes apart from host bytes.

Where a test needs a GPU's readings, `tests.support.stand_in_gpu.StandInGpu` stands in for
the device's memory (the only stand-in: the ONNX models, the backend, the puller and the
manager are real; with device "cuda" and no CUDA provider, ONNX Runtime runs them on the
CPU). What a real load takes on a real device is for the `gpu` tests (test_gpu_memory.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from runtimes.backends import Device
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from runtimes.device_memory import (DeviceMemory, DeviceMeter, _from_nvml, device_capacity, nvidia_device_present,
                                    read_device_memory)
from runtimes.errors import CapacityExhausted, ModelTooLarge
from runtimes.server import resolve_device_capacity
from runtimes.settings import RuntimeSettings
from tests.support import models
from tests.support.stand_in_gpu import FIXED_COST as FIXED
from tests.support.stand_in_gpu import MIB, StandInGpu, gpu_manager


@pytest.mark.skipif(nvidia_device_present(), reason="this machine has an NVIDIA device")
def test_without_a_device_the_probe_reports_none_and_nvml_is_not_usable():
    assert read_device_memory(0) is None
    pytest.importorskip("pynvml")
    assert _from_nvml(0) is None  # nvidia-ml-py is installed, but there is no driver to talk to


def test_device_capacity_is_free_memory_less_the_reserve():
    memory = DeviceMemory(total=80 << 30, free=70 << 30)
    assert memory.used == 10 << 30
    assert device_capacity(memory, 1 << 30) == 69 << 30
    assert device_capacity(memory, 71 << 30) == 0  # a reserve above what is free leaves nothing, not less


def test_the_runtime_derives_its_device_capacity_only_on_a_gpu():
    gpu = StandInGpu(80 << 30, used=10 << 30)
    settings = RuntimeSettings(device_memory_reserve="2GiB")
    assert resolve_device_capacity(settings, Device("cpu"), gpu) is None
    assert resolve_device_capacity(settings, Device("cuda", 0), gpu) == (80 - 10 - 2) << 30
    assert resolve_device_capacity(RuntimeSettings(device_capacity="5GiB"), Device("cuda", 0), gpu) == 5 << 30
    assert resolve_device_capacity(settings, Device("cuda", 1), gpu) is None  # unreadable: not accounted


def test_measured_loads_of_one_device_run_one_at_a_time_and_other_devices_are_not_held_up():
    used = {0: 0, 1: 0}
    meter = DeviceMeter(lambda index: DeviceMemory(100, 100 - used[index]))

    def put(index: int, size: int, result: str):
        def work() -> str:
            used[index] += size
            return result
        return work

    second_result: list[tuple[str, int]] = []
    second = threading.Thread(target=lambda: second_result.append(meter.measure(0, put(0, 5, "second"))))

    def first() -> tuple[bool, tuple[str, int]]:
        used[0] += 30
        second.start()
        second.join(timeout=0.5)
        held_up = second.is_alive()  # it cannot start while this load holds device 0
        return held_up, meter.measure(1, put(1, 7, "other"))  # another device: at once

    assert meter.measure(0, first) == ((True, ("other", 7)), 30)
    second.join(timeout=10)
    assert second_result == [("second", 5)]  # measured on its own: the first load's 30 bytes are not in it
    assert DeviceMeter(lambda index: None).measure(0, lambda: "x") == ("x", 0)  # unreadable: 0, not a guess


@pytest.fixture
def weighted(tmp_path: Path) -> dict[str, Path]:
    """ONNX models of ~1 MiB and ~2 MiB of weights."""
    return {name: models.add_onnx(tmp_path / "store" / name / "model.onnx", weights=floats).parent
            for name, floats in (("one", 250_000), ("two", 500_000))}


async def test_a_load_on_the_gpu_is_charged_its_device_bytes_apart_from_host_bytes(tmp_path, weighted):
    tensors = constant_tensor_bytes(weighted["one"] / "model.onnx")
    gpu = StandInGpu(16 * MIB, tensors + 4096, 3 * MIB)  # the first load put its tensors (and a bit) on the device
    async with gpu_manager(tmp_path, gpu, device_capacity=8 * MIB) as manager:
        predicted = manager.predict_footprint("onnx", str(weighted["one"]), None)
        on_disk = (weighted["one"] / "model.onnx").stat().st_size
        assert predicted.device == int(on_disk * manager.config.size_factor)  # its data goes to the device
        assert predicted.host == FIXED + predicted.device

        host = await manager.load("one", "onnx", str(weighted["one"]))
        assert manager.device_size_of("one") == tensors + 4096
        assert host == FIXED + 1  # all it measured is on the device: the host holds its fixed cost
        assert manager.used_bytes == host and manager.device_used_bytes == tensors + 4096
        outputs = await manager.run("one", {"x": np.ones((1, 4), np.float32)}, ["y"])
        np.testing.assert_array_equal(outputs["y"], np.full((1, 4), 2.0, np.float32))

        # The second model measures 3 MiB on the device: with 8 MiB it fits next to the first.
        await manager.load("two", "onnx", str(weighted["two"]))
        assert manager.device_used_bytes == tensors + 4096 + 3 * MIB
        await manager.unload("one")
        assert manager.device_used_bytes == 3 * MIB and gpu.reads == 4  # two measured loads, none interleaved


async def test_a_model_that_does_not_fit_the_gpu_is_refused_though_host_memory_has_room(tmp_path, weighted):
    async with gpu_manager(tmp_path, StandInGpu(16 * MIB, 3 * MIB, 3 * MIB), device_capacity=4 * MIB) as manager:
        await manager.load("one", "onnx", str(weighted["one"]))  # predicted ~1.25 MiB, measured 3 MiB
        # "two" predicts ~2.5 MiB on the device, 1 MiB is free: refused before it loads.
        with pytest.raises(CapacityExhausted, match="on the GPU"):
            await manager.load("two", "onnx", str(weighted["two"]))
        assert manager.loaded_models() == ["one"] and manager.used_bytes < manager.capacity_bytes // 2
        manager.device_overhead_bytes = 1 * MIB  # a backend's context on the device counts as used
        assert manager.device_used_bytes == 4 * MIB
    async with gpu_manager(tmp_path, StandInGpu(16 * MIB, 5 * MIB), device_capacity=4 * MIB) as manager:
        # Predicted to fit, measured more than the whole device capacity: unloaded again.
        with pytest.raises(ModelTooLarge, match="on the GPU after loading"):
            await manager.load("one", "onnx", str(weighted["one"]))
        assert manager.loaded_models() == [] and manager.device_used_bytes == 0


async def test_on_the_cpu_nothing_is_measured_on_a_device(tmp_path, weighted):
    async with gpu_manager(tmp_path, StandInGpu(16 * MIB, 3 * MIB), None, device=Device("cpu")) as manager:
        assert manager.meter is None and manager.device_capacity_bytes is None
        assert manager.predict_footprint("onnx", str(weighted["one"]), None).device == 0
        host = await manager.load("one", "onnx", str(weighted["one"]))
        assert host == FIXED + constant_tensor_bytes(weighted["one"] / "model.onnx")
        assert manager.device_size_of("one") == 0 and manager.device_used_bytes == 0
