"""Sizes that match real memory: the fixed cost per model a runtime calibrates at a backend's first load,
and what it charges, against the resident memory a real runtime process really grows by.

The process is a real `meshserve runtime`; its resident memory is read from
/proc/<pid>/status. Memory figures, not timing, are asserted.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_runtime_pb2 as rt
from runtimes.backends import Backend, BackendRegistry, Device, LoadedModel, TensorSpec
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from runtimes.calibration import ONE_OFF_FLOOR, _split_one_offs
from runtimes.model_manager import ManagerConfig, ModelManager
from tests.support import models
from tests.support.runtime_process import start_runtime_process

MODELS = 200
#: Accounted bytes of MODELS small models against the runtime's growth. Measured here: within
#: 5%; the bound leaves room for what the process allocates besides (gRPC buffers, logs).
BOUND = 0.35
_CHARGED = re.compile(r"backend sklearn set up: .* \((\d+) bytes\) charged")
_CALIBRATED = re.compile(r"size calibration: backend (\S+) costs \S+ per model \((\d+) bytes")


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return [models.add_onnx(root / f"m{i:03d}" / "model.onnx", offset=float(i)).parent for i in range(MODELS)]


def infer(runtime, model_id: str) -> float:
    request = pb.ModelInferRequest(model_name=model_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    reply = runtime.inference.ModelInfer(request, timeout=30)
    return float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0])


def calibrated(log: str) -> dict[str, int]:
    return {backend: int(value) for backend, value in _CALIBRATED.findall(log)}


def mapped_libraries(runtime) -> str:
    """The files mapped into the runtime process: an imported library's compiled extensions show."""
    return Path(f"/proc/{runtime.process.pid}/maps").read_text()


def test_accounted_bytes_of_200_small_models_match_the_memory_the_runtime_grows_by(tmp_path, small_models):
    runtime = start_runtime_process(tmp_path, capacity="1GiB")
    try:
        costs = calibrated(runtime.log())
        assert set(costs) == {"onnx"}, runtime.log()  # ONNX at start-up; the others wait for a first load
        assert runtime.load("m0", small_models[0], "onnx").sizeInBytes == costs["onnx"] + 32
        # An ONNX Runtime session that has run once holds tens of KiB, whatever its initializers.
        assert 16 << 10 < costs["onnx"] < 1 << 20, costs
        assert infer(runtime, "m0") == 0.0
        before = runtime.rss_bytes()
        accounted = 0
        for i, path in enumerate(small_models[1:], start=1):
            size = runtime.load(f"m{i}", path, "onnx").sizeInBytes
            assert size == costs["onnx"] + constant_tensor_bytes(path / "model.onnx") == costs["onnx"] + 32
            accounted += size
        for i in range(1, MODELS):  # each model's first run: its buffers are part of its cost
            assert infer(runtime, f"m{i}") == float(i)
        grown = runtime.rss_bytes() - before
        assert abs(accounted - grown) <= BOUND * grown, (
            f"accounted {accounted / 2**20:.1f} MiB for {MODELS - 1} models, RSS grew {grown / 2**20:.1f} MiB")
        # The old charge (bytes on disk x 1.25) was 16 times too little; this one is not.
        on_disk = sum(path.joinpath("model.onnx").stat().st_size for path in small_models[1:])
        assert accounted > 10 * on_disk
        assert calibrated(runtime.log()) == costs  # nothing else was calibrated
        # A runtime that served only ONNX never imported the other formats' libraries.
        maps = mapped_libraries(runtime)
        assert "/sklearn/" not in maps and "libxgboost" not in maps and "libtorch" not in maps
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_scikit_learn_is_imported_and_calibrated_at_its_first_model_and_the_runtime_room_shrinks(tmp_path):
    pytest.importorskip("sklearn")
    from tests.support import classic_models

    model = classic_models.sklearn_logistic(tmp_path / "logistic" / "model.joblib")[0].parent
    runtime = start_runtime_process(tmp_path / "rt", capacity="1GiB")
    try:
        def capacity() -> int:
            return runtime.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10).capacityInBytes

        assert capacity() == 1 << 30  # ONNX's setup is in the baseline, before READY: not charged
        assert "/sklearn/" not in mapped_libraries(runtime)
        assert set(calibrated(runtime.log())) == {"onnx"}
        before = runtime.rss_bytes()
        size = runtime.load("logistic", model, "sklearn").sizeInBytes
        grown = runtime.rss_bytes() - before
        assert "/sklearn/" in mapped_libraries(runtime)
        assert set(calibrated(runtime.log())) == {"onnx", "sklearn"}, runtime.log()
        overhead = int(_CHARGED.search(runtime.log()).group(1))
        # Importing scikit-learn takes tens of MiB, for good: charged, and off the room models get.
        assert overhead > 10 << 20
        assert abs(overhead + size - grown) <= BOUND * grown, (overhead, size, grown)
        assert capacity() == (1 << 30) - overhead
        runtime.unload("logistic")
        assert capacity() == (1 << 30) - overhead  # the library stays imported
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_a_fixed_cost_setting_turns_calibration_off_and_is_charged_to_every_model(tmp_path):
    weights = models.dense_onnx(tmp_path / "dense" / "model.onnx", 64, 32).parent
    tiny = models.add_onnx(tmp_path / "tiny" / "model.onnx").parent
    runtime = start_runtime_process(tmp_path / "rt", "--model-fixed-cost", "100KiB", capacity="64MiB")
    try:
        assert "size calibration off: every model is charged 100.0KiB" in runtime.log()
        assert calibrated(runtime.log()) == {}
        assert runtime.load("dense", weights, "onnx").sizeInBytes == (100 << 10) + 64 * 32 * 4
        assert runtime.load("tiny", tiny, "onnx").sizeInBytes == (100 << 10) + 2 * 4 * 4
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_a_model_too_big_for_the_capacity_once_its_fixed_cost_counts_is_refused(tmp_path):
    import grpc

    tiny = models.add_onnx(tmp_path / "tiny" / "model.onnx").parent
    runtime = start_runtime_process(tmp_path / "rt", "--model-fixed-cost", "2MiB", capacity="1MiB")
    try:
        with pytest.raises(grpc.RpcError) as refused:  # 32 bytes of tensors, but 2 MiB as it runs
            runtime.load("tiny", tiny, "onnx")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "whole capacity" in refused.value.details()
    finally:
        assert runtime.stop() == 0, runtime.log()


def test_one_offs_are_set_apart_from_the_cost_per_model():
    usual = [(112 << 10, 32)] * 10 + [(120 << 10, 32)]
    one_off = [(16 << 20, 32)]  # a library's setup for one more thread
    kept, apart = _split_one_offs(usual[:5] + one_off + usual[5:])
    assert kept == usual and apart == one_off
    small = [(4096, 200), (8192, 200), (0, 200), (4096, 200), (ONE_OFF_FLOOR, 200)]
    assert _split_one_offs(small) == (small, [])  # page-sized noise of a tiny model is no one-off


class _Sized(LoadedModel):
    platform = "fake"
    inputs = [TensorSpec("x", "FP32", (-1,))]
    outputs = [TensorSpec("y", "FP32", (-1,))]

    def __init__(self, size: int) -> None:
        self._size = size

    def infer(self, inputs, output_names):
        return {"y": inputs["x"]}

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        pass


class _SizedBackend(Backend):
    name = "onnx"
    file_suffixes = (".onnx",)

    def load(self, model_file: Path, device: Device) -> LoadedModel:
        return _Sized(int(model_file.read_bytes() or b"0"))  # the file says what the model holds


class _LocalFiles:
    async def pull(self, model_id, model_path, model_key=None):
        return SimpleNamespace(local_path=Path(model_path))

    async def release(self, model_id):
        pass


async def test_the_manager_adds_the_fixed_cost_to_predicted_and_measured_sizes(tmp_path):
    (tmp_path / "holds").mkdir()
    (tmp_path / "holds" / "model.onnx").write_bytes(b"5000")  # 4 bytes on disk, 5000 held
    (tmp_path / "unmeasured").mkdir()
    (tmp_path / "unmeasured" / "model.onnx").write_bytes(b"0000000000")  # 10 bytes, holds "0": unknown
    manager = ModelManager(ManagerConfig(capacity_bytes=1 << 20, size_factor=2.0, model_fixed_cost=7),
                           BackendRegistry([_SizedBackend()]), _LocalFiles())
    try:
        assert manager.fixed_cost("onnx") == 7  # not calibrated: the setting
        manager.fixed_costs = {"onnx": 1000, "sklearn": 3000}
        assert manager.predict_size("onnx", str(tmp_path / "holds"), None) == 1000 + 4 * 2
        assert manager.predict_size("", str(tmp_path / "holds"), None) == 3000 + 4 * 2  # type unknown: the largest
        assert await manager.load("a", "onnx", str(tmp_path / "holds")) == 1000 + 5000
        assert await manager.load("b", "onnx", str(tmp_path / "unmeasured")) == 1000 + 10 * 2  # disk x factor
        assert manager.used_bytes == 6000 + 1020
    finally:
        await manager.close()


def test_a_derived_capacity_leaves_out_the_memory_the_process_already_holds():
    from runtimes.memory import resident_bytes
    from runtimes.server import resolve_capacity
    from runtimes.settings import RuntimeSettings
    from runtimes.sizes import container_memory_limit

    buffer = 256 << 20
    derived = resolve_capacity(RuntimeSettings(capacity_buffer=buffer))
    held = resident_bytes()  # this test process: numpy, ONNX Runtime, gRPC imported
    assert held > 32 << 20
    # Not promised to models: what the process holds now (within a few MiB of allocator noise) and the buffer.
    assert abs((container_memory_limit() - held - buffer) - derived) < 16 << 20
    assert resolve_capacity(RuntimeSettings(capacity=123 << 20)) == 123 << 20  # given: as given
