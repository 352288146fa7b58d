"""The placement layer end to end: real etcd, runtime processes with agents, controller
processes serving the management API (issue #4's multi-process tests)."""

from __future__ import annotations

import itertools
import random
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_mesh_pb2 as mm
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from runtimes.sizes import disk_size
from tests.support.fabric import Fabric
from tests.support.models import add_onnx
from tests.support.waiting import wait_until

Status = mm.ModelStatusInfo
_STEPS = itertools.count()  # the order in which the tests used models


def model_dir(root: Path, model_id: str) -> Path:
    # ~16 KiB of weights, so capacity can be set in whole models.
    return add_onnx(root / "store" / model_id / "model.onnx", weights=4096).parent


def register(controller, model_id: str, path: Path, model_type: str = "onnx") -> Status:
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=str(path)))
    return controller.mesh.registerModel(request, timeout=30)


def ensure_loaded(controller, model_id: str) -> Status:
    return controller.mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=60)


def infer(runtime, model_id: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model_id)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    reply = runtime.inference.ModelInfer(request, timeout=30)
    return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)


#: Each model is charged its tensors' bytes alone and predicted at its bytes on disk (a few
#: bytes more), so that room for ten is ten, whatever a model's fixed cost measures.
SIZING = ("--model-fixed-cost", "0", "--size-factor", "1.0")


def model_size(root: Path) -> int:
    probe = model_dir(root / "probe", "probe")
    return max(constant_tensor_bytes(probe / "model.onnx"), disk_size(probe)) + 1


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    """Three runtimes with room for ten models each, three controller replicas.

    Rate-driven scaling is off here: the controller's scale-down of cold copies when the
    fleet is short of space would mix its choices with the instances' LRU evictions that
    these tests check (scaling has its own tests in test_controller.py).
    """
    workdir = tmp_path_factory.mktemp("fabric")
    fabric = Fabric(workdir)
    try:
        fabric.start_etcd()
        capacity = 10 * model_size(workdir) + 1024
        for n in range(3):
            fabric.add_runtime(f"rt{n}", str(capacity), *SIZING)
        for _ in range(3):
            fabric.add_controller("--no-scaling")
        yield fabric
    finally:
        fabric.close()


def run_skewed(fabric, order: list[str], touched: dict[str, int], check_lru: bool) -> int:
    """ensureLoaded each model of `order` then use it; returns evictions seen.

    After each step every instance's record is sampled: used plus loading never exceeds
    capacity, and (with `check_lru`) a copy that went was used no later than every copy
    that stayed on that instance.
    """
    controller = fabric.controllers[0]
    before = fabric.instances()
    evictions = 0
    for model_id in order:
        status = ensure_loaded(controller, model_id)
        assert status.status == Status.LOADED, status
        infer(fabric.runtimes[fabric.holders(model_id)[0]], model_id)
        touched[model_id] = next(_STEPS)
        after = fabric.instances()
        for instance_id, record in after.items():
            assert record.used_bytes + record.loading_bytes <= record.capacity_bytes, record
            old = before.get(instance_id)
            gone = set(old.copies) - set(record.copies) if old else set()
            kept = (set(old.copies) & set(record.copies)) - {model_id} if old else set()
            for victim in gone:
                evictions += 1
                if check_lru:
                    newer_victim = [k for k in kept if touched.get(k, -1) < touched.get(victim, -1)]
                    assert not newer_victim, (f"{victim} (used at step {touched.get(victim)}) evicted from "
                                              f"{instance_id} while {newer_victim} stayed, used earlier")
        before = after
    return evictions


def test_skewed_traffic_never_exceeds_capacity_and_evicts_least_recently_used(fabric):
    controller = fabric.controllers[0]
    store = fabric.workdir / "skewed"
    ids = [f"s{n:03d}" for n in range(100)]
    for model_id in ids:
        register(controller, model_id, model_dir(store, model_id))
    rng = random.Random(7)
    weights = [1 / (rank + 1) for rank in range(len(ids))]  # Zipf-like skew
    touched: dict[str, int] = {}
    # Phase 1: we are the only user, so our order is the LRU order the instances see.
    assert run_skewed(fabric, rng.choices(ids, weights, k=120), touched, check_lru=True) > 0, \
        "the order should overflow the fabric and force evictions"

    # Phase 2: inference traffic on whatever is loaded, alongside. A request the runtime
    # accepted must never fail because its copy was evicted under it.
    stop = threading.Event()
    bad: list[str] = []

    def traffic() -> None:
        while not stop.is_set():
            for instance_id, record in fabric.instances().items():
                for model_id in list(record.copies)[:3]:
                    try:
                        infer(fabric.runtimes[instance_id], model_id)
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.NOT_FOUND:  # not loaded (any more): allowed
                            bad.append(f"{model_id}@{instance_id}: {error.code().name} {error.details()}")

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        assert run_skewed(fabric, rng.choices(ids, weights, k=60), touched, check_lru=False) > 0
    finally:
        stop.set()
        worker.join(30)
    assert not bad, bad[:5]


def test_twenty_concurrent_ensure_loaded_from_three_processes_load_once(fabric):
    store = fabric.workdir / "concurrent"
    register(fabric.controllers[0], "hot", model_dir(store, "hot"))
    loads_before = fabric.loads_done()
    results: list[Status] = []
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            results.append(ensure_loaded(fabric.controllers[n % 3], "hot"))
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert all(r.status == Status.LOADED for r in results) and len(results) == 20
    assert fabric.loads_done() - loads_before == 1
    assert len(fabric.holders("hot")) == 1


def test_corrupt_model_fails_with_its_reason_and_is_not_retried_in_a_loop(fabric):
    controller = fabric.controllers[1]
    broken = fabric.workdir / "store" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    register(controller, "broken", broken)
    status = ensure_loaded(controller, "broken")
    assert status.status == Status.LOADING_FAILED, status
    assert any("broken" in e or "onnx" in e.lower() or "INVALID_ARGUMENT" in e for e in status.errors), status.errors
    record = fabric.models()["broken"]
    assert len(record.failures) >= 2, "the load should have been tried on another instance"
    failures_seen = dict(record.failures)
    # Asking again does not load again: the failure records keep it off those instances.
    again = ensure_loaded(controller, "broken")
    assert again.status == Status.LOADING_FAILED
    assert fabric.models()["broken"].failures == failures_seen
    status = controller.mesh.getModelStatus(mm.GetStatusRequest(modelId="broken"), timeout=10)
    assert status.status == Status.LOADING_FAILED and status.errors
    # Other models are unaffected.
    register(controller, "healthy", model_dir(fabric.workdir / "store2", "healthy"))
    assert ensure_loaded(controller, "healthy").status == Status.LOADED


def test_unknown_model_is_not_found(fabric):
    with pytest.raises(grpc.RpcError) as raised:
        ensure_loaded(fabric.controllers[0], "no-such-model")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def small_fabric(tmp_path):
    fabric = Fabric(tmp_path, lease_ttl_s=2)
    try:
        fabric.start_etcd()
        for n in range(2):
            fabric.add_runtime(f"rt{n}", "4MiB")
        fabric.add_controller("--interval-s", "0.5")
        yield fabric
    finally:
        fabric.close()


def test_sigkilled_instance_leaves_and_its_recently_used_models_are_reloaded_elsewhere(small_fabric):
    fabric = small_fabric
    controller = fabric.controllers[0]
    for model_id in ("a", "b", "c"):
        register(controller, model_id, model_dir(fabric.workdir, model_id))
        ensure_loaded(controller, model_id)
    victim_id = fabric.holders("a")[0]
    on_victim = set(fabric.instance(victim_id).copies)
    survivor_id = next(i for i in fabric.runtimes if i != victim_id)
    fabric.runtimes[victim_id].process.send_signal(signal.SIGKILL)
    fabric.runtimes[victim_id].process.wait(10)
    wait_until(lambda: fabric.instance(victim_id) is None, fabric.lease_ttl_s + 5, "the killed instance's record to go")
    wait_until(lambda: on_victim <= set(fabric.instance(survivor_id).copies), 30,
               f"{sorted(on_victim)} to be re-homed on {survivor_id}")
    for model_id in on_victim:
        assert infer(fabric.runtimes[survivor_id], model_id).tolist() == [2.0, 3.0, 4.0, 5.0]


def test_etcd_restart_agents_and_controller_reconnect_and_nothing_is_lost(small_fabric):
    fabric = small_fabric
    controller = fabric.controllers[0]
    register(controller, "kept", model_dir(fabric.workdir, "kept"))
    ensure_loaded(controller, "kept")
    holder = fabric.holders("kept")[0]
    fabric.etcd.stop()
    # The data plane keeps serving what it holds while etcd is down.
    assert infer(fabric.runtimes[holder], "kept").tolist() == [2.0, 3.0, 4.0, 5.0]
    fabric.etcd.start()
    wait_until(lambda: set(fabric.instances()) == set(fabric.runtimes), 30, "every instance to be registered again")
    wait_until(lambda: fabric.holders("kept") == [holder], 30, "the copy to be published again")
    assert "kept" in fabric.models()
    register(controller, "after", model_dir(fabric.workdir, "after"))
    assert wait_until(lambda: ensure_loaded(controller, "after").status == Status.LOADED, 30,
                      "the controller to serve ensureLoaded again")
