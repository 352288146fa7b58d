"""A backend is set up (imported, calibrated) at its first load, once, with the loads of the
process kept out of its way; what it costs for good counts in the used bytes.

The model manager, backend setup and calibration are the real ones, reading this test
process's real resident memory; the backends are stand-ins whose probe can be held (a
threading.Event) or made to fail, so the order of loads is observed, not timed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtimes.backend_setup import BackendSetup
from runtimes.backends import Backend, BackendRegistry, Device, LoadedModel, Probe, TensorSpec
from runtimes.errors import InvalidModel
from runtimes.model_manager import ManagerConfig, ModelManager
from tests.support.waiting import async_wait_until

OWN_BYTES = 64
FIXED_COST_SETTING = 7


class _Echo(LoadedModel):
    platform = "stand-in"
    inputs = [TensorSpec("x", "FP32", (-1,))]
    outputs = [TensorSpec("y", "FP32", (-1,))]

    def infer(self, inputs, output_names):
        return {"y": inputs["x"]}

    def size_bytes(self) -> int:
        return OWN_BYTES

    def unload(self) -> None:
        pass


class _StandIn(Backend):
    """Stands in for a backend's library: `prepare` can hold memory as an import would."""

    file_suffixes = (".bin",)

    def __init__(self, name: str, events: list[str], import_bytes: int = 0, probe_fails: bool = False) -> None:
        self.name = name
        self._events = events
        self._import_bytes = import_bytes
        self._probe_fails = probe_fails
        self.imported: np.ndarray | None = None
        self.probes_written = 0
        self.probe_started = threading.Event()
        self.probe_may_go = threading.Event()
        self.probe_may_go.set()

    def prepare(self) -> None:
        self.imported = np.ones(self._import_bytes, np.uint8)  # touched: resident, as a library's code and data

    def write_probe(self, folder: Path) -> Probe:
        self.probes_written += 1
        self.probe_started.set()
        assert self.probe_may_go.wait(30), "the test never let the probe go"
        path = folder / f"probe{self.file_suffixes[0]}"
        path.write_bytes(b"probe")
        return Probe(path, {"x": np.zeros(4, np.float32)})

    def load(self, model_file: Path, device: Device) -> LoadedModel:
        is_probe = model_file.stem == "probe"
        if is_probe and self._probe_fails:
            raise InvalidModel("the probe is refused")
        self._events.append(f"{self.name} {'probe' if is_probe else model_file.parent.name}")
        return _Echo()


class _LocalFiles:
    async def pull(self, model_id, model_path, model_key=None):
        return SimpleNamespace(local_path=Path(model_path))

    async def release(self, model_id):
        pass


def _model(root: Path, name: str) -> str:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "model.bin").write_bytes(b"x" * 16)
    return str(root / name)


@pytest.fixture
def events() -> list[str]:
    return []


async def _manager(*backends: Backend, calibrate: bool = True) -> tuple[ModelManager, BackendSetup]:
    registry = BackendRegistry(list(backends))
    manager = ModelManager(ManagerConfig(capacity_bytes=1 << 30, model_fixed_cost=FIXED_COST_SETTING),
                           registry, _LocalFiles())
    return manager, BackendSetup(manager, registry, "test", calibrate)


async def test_concurrent_first_loads_of_one_backend_calibrate_it_once(tmp_path, events, caplog):
    caplog.set_level(logging.INFO, "runtimes")
    onnx = _StandIn("onnx", events)
    manager, setup = await _manager(onnx)
    try:
        sizes = await asyncio.gather(*(manager.load(f"m{i}", "onnx", _model(tmp_path, f"m{i}")) for i in range(5)))
        assert onnx.probes_written == 1
        assert caplog.text.count("setting up backend onnx") == 1
        assert caplog.text.count("size calibration: backend onnx costs") == 1
        cost = setup.results["onnx"].cost
        assert cost is not None and manager.fixed_costs["onnx"] == cost.per_model_bytes
        assert sizes == [cost.per_model_bytes + OWN_BYTES] * 5  # every one sized after the calibration
        await manager.load("later", "onnx", _model(tmp_path, "later"))  # the result is kept
        assert onnx.probes_written == 1
        assert not [m for m in manager.entries() if m.startswith("__size_probe__")]  # probes are not held
    finally:
        await manager.close()


async def test_a_load_of_another_backend_waits_while_one_calibrates(tmp_path, events):
    onnx, sklearn = _StandIn("onnx", events), _StandIn("sklearn", events)
    manager, setup = await _manager(onnx, sklearn)
    try:
        await manager.load("s0", "sklearn", _model(tmp_path, "s0"))  # sklearn set up already
        onnx.probe_may_go.clear()
        first_onnx = asyncio.create_task(manager.load("o0", "onnx", _model(tmp_path, "o0")))
        assert await asyncio.to_thread(onnx.probe_started.wait, 30)  # the ONNX calibration holds the gate
        waiting = asyncio.create_task(manager.load("s1", "sklearn", _model(tmp_path, "s1")))

        async def queued() -> bool:
            return manager.gate.waiting == 1

        await async_wait_until(queued, 10, "the sklearn load to wait at the gate")
        assert "s1" not in manager.entries() and "sklearn s1" not in events
        onnx.probe_may_go.set()
        await asyncio.gather(first_onnx, waiting)
        last_probe = max(i for i, event in enumerate(events) if event == "onnx probe")
        assert events.index("sklearn s1") > last_probe  # it went on once the calibration was done
        assert "onnx" in setup.results
    finally:
        onnx.probe_may_go.set()
        await manager.close()


async def test_a_failing_probe_falls_back_to_the_fixed_cost_setting_and_the_load_goes_on(tmp_path, events, caplog):
    caplog.set_level(logging.INFO, "runtimes")
    onnx = _StandIn("onnx", events, probe_fails=True)
    manager, setup = await _manager(onnx)
    try:
        assert await manager.load("a", "onnx", _model(tmp_path, "a")) == FIXED_COST_SETTING + OWN_BYTES
        assert await manager.load("b", "onnx", _model(tmp_path, "b")) == FIXED_COST_SETTING + OWN_BYTES
        assert caplog.text.count("size calibration of backend onnx failed") == 1  # logged once
        assert "the probe is refused" in caplog.text
        assert "onnx" not in manager.fixed_costs and setup.results["onnx"].cost is None
        assert manager.loaded_models() == ["a", "b"]
    finally:
        await manager.close()


async def test_a_backends_one_time_overhead_counts_in_the_used_bytes(tmp_path, events):
    import_bytes = 64 << 20
    sklearn = _StandIn("sklearn", events, import_bytes=import_bytes)
    manager, setup = await _manager(sklearn)
    try:
        assert manager.used_bytes == 0
        size = await manager.load("s", "sklearn", _model(tmp_path, "s"))
        overhead = setup.results["sklearn"].overhead_bytes
        # The stand-in's import holds 64 MiB: the process grew by about that much, for good.
        assert 0.9 * import_bytes <= setup.results["sklearn"].import_bytes <= 1.2 * import_bytes
        assert manager.backend_overhead_bytes == overhead
        assert manager.used_bytes == overhead + size
        await manager.unload("s")
        assert manager.used_bytes == overhead  # the library stays imported when its models are gone
    finally:
        await manager.close()


async def test_with_calibration_off_a_backend_is_imported_on_first_load_but_nothing_is_charged(tmp_path, events):
    sklearn = _StandIn("sklearn", events, import_bytes=1 << 20)
    manager, setup = await _manager(sklearn, calibrate=False)
    try:
        assert sklearn.imported is None
        assert await manager.load("s", "sklearn", _model(tmp_path, "s")) == FIXED_COST_SETTING + OWN_BYTES
        assert sklearn.imported is not None and sklearn.probes_written == 0
        assert manager.used_bytes == FIXED_COST_SETTING + OWN_BYTES
    finally:
        await manager.close()


async def test_an_untyped_load_of_local_files_sets_up_the_backend_its_files_show(tmp_path, events):
    onnx, sklearn = _StandIn("onnx", events), _StandIn("sklearn", events)
    sklearn.file_suffixes = (".joblib",)
    manager, setup = await _manager(onnx, sklearn)
    try:
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "model.joblib").write_bytes(b"x")
        size = await manager.load("s", "", str(tmp_path / "s"))
        assert set(setup.results) == {"sklearn"}
        assert size == manager.fixed_costs["sklearn"] + OWN_BYTES
    finally:
        await manager.close()
