"""The instance agent of a runtime with a GPU: device memory published apart from host memory,
in the instance record, the model records and the metrics, and LRU eviction freeing GPU
memory when that is what a load is short of.

There is no GPU here: `tests.support.stand_in_gpu.StandInGpu` stands in for the device's
memory readings (the only stand-in; the ONNX models, backend, puller, manager, agent and
etcd are real, and ONNX Runtime runs the models on the CPU for want of a CUDA provider).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.instance.agent import InstanceAgent
from puller import Puller
from runtimes.backends import BackendRegistry, Device
from runtimes.backends.onnx_backend import OnnxBackend
from runtimes.device_memory import DeviceMeter
from runtimes.model_manager import ManagerConfig, ModelManager
from tests.mesh.instance.test_agent import FAST, WAIT, X, claim, fabric_view, held, register
from tests.support import models
from tests.support.stand_in_gpu import StandInGpu

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

MIB = 1 << 20


async def test_device_memory_is_published_apart_and_eviction_frees_the_gpu(
        etcd: EtcdClient, keys: Keys, tmp_path: Path) -> None:
    paths = {name: models.add_onnx(tmp_path / "store" / name / "model.onnx", weights=250_000).parent
             for name in ("g0", "g1")}
    for name, path in paths.items():
        await register(etcd, keys, name, path)
    gpu = StandInGpu(16 * MIB, 3 * MIB, 3 * MIB)  # each load puts 3 MiB on the device
    puller = Puller(tmp_path / "cache")
    manager = ModelManager(ManagerConfig(capacity_bytes=64 * MIB, device=Device("cuda", 0), model_fixed_cost=64 << 10),
                           BackendRegistry([OnnxBackend()]), puller, meter=DeviceMeter(gpu))
    manager.set_device_capacity(4 * MIB)
    registry = CollectorRegistry()
    agent = InstanceAgent(etcd, keys, manager, instance_id="i1", address="127.0.0.1:1", metrics_registry=registry,
                          fresh_copy_grace_s=0, **FAST)
    try:
        async with fabric_view(etcd, keys) as view:
            await agent.start()
            host = await manager.load("g0", "onnx", str(paths["g0"]))
            record = await view.wait_for(lambda: (r := view.instance("i1")) and "g0" in r.copies
                                         and not r.copies["g0"].loading and r, WAIT)
            assert record.device_capacity_bytes == 4 * MIB and record.device_used_bytes == 3 * MIB
            assert record.copies["g0"].device_bytes == 3 * MIB and record.copies["g0"].size_bytes == host
            assert record.used_bytes == host and record.capacity_bytes == 64 * MIB  # host memory apart
            model = await view.wait_for(lambda: claim(view, "g0") and view.model("g0"), WAIT)
            assert model.device_size_estimate_bytes == 3 * MIB and model.size_estimate_bytes == host
            assert registry.get_sample_value("meshserve_instance_device_capacity_bytes") == 4 * MIB
            assert registry.get_sample_value("meshserve_instance_device_used_bytes") == 3 * MIB

            await manager.run("g0", X, [])
            # g1 predicts ~1.25 MiB on the GPU, 1 MiB is free; the host has room for both:
            # the agent evicts g0 for its GPU bytes, and g1 loads.
            await manager.load("g1", "onnx", str(paths["g1"]))
            assert manager.loaded_models() == ["g1"]
            assert registry.get_sample_value("modelmesh_age_at_eviction_milliseconds_count") == 1
            await view.wait_for(lambda: held(view) == {"g1"} and view.instance("i1").device_used_bytes == 3 * MIB, WAIT)
            await view.wait_for(lambda: claim(view, "g0") is None, WAIT)
    finally:
        await agent.close()
        await manager.close()
        await puller.aclose()
