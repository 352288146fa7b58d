"""The instance agent of a runtime with a GPU: device memory published apart from host memory,
in the instance record, the model records and the metrics, and LRU eviction freeing GPU
memory when that is what a load is short of; over the model-runtime SPI, a remote holder
(`meshserve agent`'s) reads the runtime's device capacity and each model's device bytes.

There is no GPU here: `tests.support.stand_in_gpu.StandInGpu` stands in for the device's
memory readings (the only stand-in; the ONNX models, backend, puller, manager, agent and
etcd are real, and ONNX Runtime runs the models on the CPU for want of a CUDA provider).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.instance.agent import InstanceAgent
from mesh.instance.remote import RemoteModels
from protos import model_runtime_pb2_grpc
from runtimes.errors import CapacityExhausted
from runtimes.grpc_servicers import ModelRuntimeServicer
from tests.mesh.instance.test_agent import FAST, WAIT, X, claim, fabric_view, held, register
from tests.support import models
from tests.support.stand_in_gpu import MIB, StandInGpu, gpu_manager

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def weighted_models(folder: Path, *names: str) -> dict[str, Path]:
    """ONNX models of ~1 MiB of weights each."""
    return {name: models.add_onnx(folder / name / "model.onnx", weights=250_000).parent for name in names}


async def test_device_memory_is_published_apart_and_eviction_frees_the_gpu(
        etcd: EtcdClient, keys: Keys, tmp_path: Path) -> None:
    paths = weighted_models(tmp_path / "store", "g0", "g1")
    for name, path in paths.items():
        await register(etcd, keys, name, path)
    gpu = StandInGpu(16 * MIB, 3 * MIB, 3 * MIB)  # each load puts 3 MiB on the device
    async with gpu_manager(tmp_path, gpu, device_capacity=4 * MIB) as manager:
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


async def test_a_remote_holder_reads_the_runtimes_device_capacity_and_model_device_bytes(tmp_path: Path) -> None:
    paths = weighted_models(tmp_path / "store", "g0", "g1")
    async with gpu_manager(tmp_path, StandInGpu(16 * MIB, 3 * MIB), device_capacity=4 * MIB) as manager:
        manager.device_overhead_bytes = 512 << 10  # as a backend's setup on the device would leave
        server = grpc.aio.server()
        ready = asyncio.Event()
        ready.set()
        model_runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(ModelRuntimeServicer(manager, ready, "test", 0), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        remote = RemoteModels(f"127.0.0.1:{port}")
        try:
            await remote.wait_ready(10)
            assert remote.device_capacity_bytes == 4 * MIB - (512 << 10)  # what models may take: less the overhead
            predicted = await remote.predict("g0", "onnx", str(paths["g0"]), None)
            assert predicted == manager.predict_footprint("onnx", str(paths["g0"]), None) and predicted.device > 0
            host = await remote.load("g0", "onnx", str(paths["g0"]))
            assert host == manager.size_of("g0") and remote.device_size_of("g0") == 3 * MIB
            assert remote.device_used_bytes == 3 * MIB
            # ~1.25 MiB more predicted on the GPU, 0.5 MiB free as the runtime reports it: refused here,
            # before the runtime is asked.
            with pytest.raises(CapacityExhausted, match="on the GPU"):
                await remote.load("g1", "onnx", str(paths["g1"]))
            assert manager.loaded_models() == ["g0"]
        finally:
            await remote.close()
            await server.stop(0)
