"""The model manager's guarantees, with gated fakes of our own Backend interface.

Invariants held here: capacity counts loads in progress; a model with requests
in flight is not unloaded until they finish; one load per model id at a time;
a full queue answers at once.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from runtimes.backends import Backend, BackendRegistry, Device, LoadedModel, TensorSpec
from runtimes.errors import Busy, CapacityExhausted, InvalidModel, ModelNotFound, ModelTooLarge
from runtimes.model_manager import ManagerConfig, ModelManager


class GatedModel(LoadedModel):
    platform = "fake"
    inputs = [TensorSpec("x", "FP32", (-1,))]
    outputs = [TensorSpec("y", "FP32", (-1,))]

    def __init__(self, size: int, gate: threading.Event) -> None:
        self._size, self._gate = size, gate
        self.unloaded = False
        self.running = 0

    def infer(self, inputs, output_names):
        self.running += 1
        try:
            assert self._gate.wait(10), "test gate never opened"
            return {"y": inputs["x"] + 1}
        finally:
            self.running -= 1

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        self.unloaded = True


class GatedBackend(Backend):
    name = "onnx"
    file_suffixes = (".onnx",)

    def __init__(self) -> None:
        self.load_gate = threading.Event()
        self.load_gate.set()
        self.infer_gate = threading.Event()
        self.infer_gate.set()
        self.loads: list[Path] = []
        self.measured: dict[str, int] = {}
        self.models: list[GatedModel] = []

    def load(self, model_file: Path, device: Device) -> GatedModel:
        self.loads.append(model_file)
        assert self.load_gate.wait(10), "test gate never opened"
        model = GatedModel(self.measured.get(model_file.parent.name, model_file.stat().st_size), self.infer_gate)
        self.models.append(model)
        return model


@dataclass
class Pulled:
    local_path: Path
    size_bytes: int = 0
    digest: str = ""


class LocalFiles:
    """Artifacts that are already on disk."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def pull(self, model_id, model_path, model_key=None):
        return Pulled(Path(model_path))

    async def release(self, model_id):
        self.released.append(model_id)


def _model_dir(root: Path, name: str, size: int) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\0" * size)
    return folder


@pytest.fixture
def backend():
    return GatedBackend()


@pytest.fixture
async def manager(backend):
    config = ManagerConfig(capacity_bytes=100, size_factor=1.0, max_concurrency=1, max_queue=1, infer_threads=4)
    manager = ModelManager(config, BackendRegistry([backend]), LocalFiles())
    yield manager
    backend.load_gate.set()
    backend.infer_gate.set()
    await manager.close()


async def _until(condition, what):
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def test_capacity_counts_loads_in_progress(manager, backend, tmp_path):
    backend.load_gate.clear()
    first = asyncio.create_task(manager.load("a", "onnx", str(_model_dir(tmp_path, "a", 60))))
    await _until(lambda: backend.loads, "load of a to start")
    assert manager.used_bytes == 60
    with pytest.raises(CapacityExhausted, match="needs 60B, 40B free"):
        await manager.load("b", "onnx", str(_model_dir(tmp_path, "b", 60)))
    backend.load_gate.set()
    assert await first == 60
    assert manager.used_bytes == 60


async def test_measured_size_over_capacity_is_unloaded_and_refused(manager, backend, tmp_path):
    backend.measured["big"] = 150
    with pytest.raises(ModelTooLarge, match="measured 150B"):
        await manager.load("big", "onnx", str(_model_dir(tmp_path, "big", 10)))
    assert backend.models[0].unloaded
    assert manager.used_bytes == 0 and manager.loaded_models() == []


async def test_concurrent_loads_of_one_model_load_once(manager, backend, tmp_path):
    path = str(_model_dir(tmp_path, "a", 10))
    sizes = await asyncio.gather(*(manager.load("a", "onnx", path) for _ in range(8)))
    assert sizes == [10] * 8
    assert len(backend.loads) == 1


async def test_unload_waits_for_requests_in_flight(manager, backend, tmp_path):
    await manager.load("a", "onnx", str(_model_dir(tmp_path, "a", 10)))
    backend.infer_gate.clear()
    request = asyncio.create_task(manager.run("a", {"x": np.zeros(2, np.float32)}, []))
    await _until(lambda: backend.models[0].running == 1, "the request to start")
    unload = asyncio.create_task(manager.unload("a"))
    await _until(lambda: manager.entries()["a"].state.value == "UNLOADING", "unload to begin")
    assert not backend.models[0].unloaded
    with pytest.raises(ModelNotFound, match="unloading"):
        await manager.run("a", {"x": np.zeros(2, np.float32)}, [])
    backend.infer_gate.set()
    result = await request
    await unload
    assert result["y"].tolist() == [1.0, 1.0]
    assert backend.models[0].unloaded and manager.used_bytes == 0


async def test_full_queue_answers_at_once(manager, backend, tmp_path):
    await manager.load("a", "onnx", str(_model_dir(tmp_path, "a", 10)))
    backend.infer_gate.clear()
    x = {"x": np.zeros(1, np.float32)}
    running = asyncio.create_task(manager.run("a", x, []))
    queued = asyncio.create_task(manager.run("a", x, []))
    await _until(lambda: manager.entries()["a"].in_flight == 2, "two requests in flight")
    with pytest.raises(Busy, match="retry later"):
        await manager.run("a", x, [])
    backend.infer_gate.set()
    assert len(await asyncio.gather(running, queued)) == 2


async def test_busy_names_the_limit_the_model_or_the_whole_runtime(backend, tmp_path):
    """Per model: max_concurrency + max_queue; per runtime: max_instance_queue waiting in all models
    together. A request that finds a free slot is never refused by the runtime's bound."""
    config = ManagerConfig(capacity_bytes=100, size_factor=1.0, max_concurrency=1, max_queue=1,
                           max_instance_queue=1, infer_threads=4)
    manager = ModelManager(config, BackendRegistry([backend]), LocalFiles())
    try:
        for name in ("a", "b"):
            await manager.load(name, "onnx", str(_model_dir(tmp_path, name, 10)))
        backend.infer_gate.clear()
        x = {"x": np.zeros(1, np.float32)}
        calls = [asyncio.create_task(manager.run("a", x, [])) for _ in range(2)]  # one runs, one waits
        await _until(lambda: manager.entries()["a"].in_flight == 2, "a running and a queued")
        with pytest.raises(Busy, match=r"model 'a' .*max_concurrency 1 \+ max_queue 1") as raised:
            await manager.run("a", x, [])
        assert raised.value.limit == "model"
        calls.append(asyncio.create_task(manager.run("b", x, [])))  # b's slot is free: it runs
        await _until(lambda: manager.entries()["b"].in_flight == 1, "b running")
        with pytest.raises(Busy, match=r"1 requests queued across its models.*max_instance_queue 1") as raised:
            await manager.run("b", x, [])  # it would wait, and the runtime's one queued place is taken
        assert raised.value.limit == "instance"
        backend.infer_gate.set()
        assert len(await asyncio.gather(*calls)) == 3
        await manager.run("b", x, [])  # nothing waits any more: served
    finally:
        backend.infer_gate.set()
        await manager.close()


async def test_failed_load_releases_its_reservation(manager, backend, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("no model")
    with pytest.raises(InvalidModel, match=r"no model file \(.onnx\) found in empty"):
        await manager.load("e", "onnx", str(empty))
    assert manager.used_bytes == 0 and manager.entries() == {}


class ThreadRecordingModel(GatedModel):
    """Records which thread ran each request; `slow_ns` makes a run burn that much CPU."""

    def __init__(self) -> None:
        super().__init__(10, threading.Event())
        self._gate.set()
        self.threads: list[int] = []
        self.slow_ns = 0

    def infer(self, inputs, output_names):
        self.threads.append(threading.get_ident())
        if self.slow_ns:
            import time

            until = time.thread_time_ns() + self.slow_ns
            while time.thread_time_ns() < until:  # burn CPU, as a slow model does
                pass
        return {"y": inputs["x"]}


async def _loaded_as(manager, tmp_path, model: LoadedModel):
    """Model "a" loaded, with `model` standing in for what the backend loaded."""
    await manager.load("a", "onnx", str(_model_dir(tmp_path, "a", 10)))
    manager.entries()["a"].model = model
    return model


async def test_fast_models_run_inline_and_slow_ones_go_back_to_the_pool(manager, backend, tmp_path):
    model = await _loaded_as(manager, tmp_path, ThreadRecordingModel())
    loop_thread = threading.get_ident()
    x = {"x": np.zeros(4, np.float32)}
    for _ in range(manager.config.inline_after):
        await manager.run("a", x, [])
    assert loop_thread not in model.threads, "a model must prove itself fast on the pool first"
    await manager.run("a", x, [])
    assert model.threads[-1] == loop_thread, "a proven-fast model runs on the event loop"
    big = {"x": np.zeros(manager.config.inline_max_bytes // 4 + 1, np.float32)}
    await manager.run("a", big, [])
    assert model.threads[-1] != loop_thread, "large inputs always go to the pool"
    model.slow_ns = manager.config.inline_below_ns * 2
    await manager.run("a", x, [])  # inline, and too slow: backs off
    model.slow_ns = 0
    for _ in range(manager.config.inline_after + 1):
        await manager.run("a", x, [])
    assert all(t != loop_thread for t in model.threads[-manager.config.inline_after - 1:]), \
        "after a slow inline run the model stays on the pool"


class GatedWhenLargeModel(ThreadRecordingModel):
    """Large requests wait for `gate`; records the most requests it ever ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.running = self.most_running = 0

    def infer(self, inputs, output_names):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if inputs["x"].nbytes > 64:
                assert self.gate.wait(10), "test gate never opened"
            return super().infer(inputs, output_names)
        finally:
            self.running -= 1


async def test_an_inline_run_waits_while_every_slot_is_taken(manager, backend, tmp_path):
    # max_concurrency is 1: a proven-fast model's small request must not run beside a pool run.
    model = await _loaded_as(manager, tmp_path, GatedWhenLargeModel())
    loop_thread = threading.get_ident()
    small = {"x": np.zeros(4, np.float32)}
    for _ in range(manager.config.inline_after + 1):
        await manager.run("a", small, [])
    assert model.threads[-1] == loop_thread, "the model runs small requests inline by now"
    large_input = {"x": np.zeros(manager.config.inline_max_bytes // 4 + 1, np.float32)}  # too large to run inline
    large = asyncio.create_task(manager.run("a", large_input, []))
    await _until(lambda: model.running == 1, "the large request to hold the only slot")
    waiting = asyncio.create_task(manager.run("a", small, []))
    await _until(lambda: manager.entries()["a"].in_flight == 2, "the small request to queue")
    assert not waiting.done() and model.running == 1
    model.gate.set()
    await asyncio.gather(large, waiting)
    assert model.most_running == 1
    assert model.threads[-1] != loop_thread, "a request that queued for a slot runs on the pool"
