"""Each backend's first use, once per process: import its library, calibrate its sizes, and
charge what that costs the process for good.

A runtime starts with ONNX Runtime imported and calibrated (nearly every runtime serves ONNX;
its calibration takes ~0.1 s, and its one-time setup, ~10 MiB, then belongs to the baseline
the capacity leaves out) and nothing else: importing torch, scikit-learn or XGBoost costs
seconds and tens of MiB, which a runtime that never serves those formats should not pay. So
the first load of another backend's model (`ModelManager.load` calls `ready` before sizing
it) sets that backend up:

1. `Backend.prepare` imports its library; the resident memory that grew by (malloc's free
   memory given back before each reading) is the backend's import overhead.
2. With calibration on (CPU, `model_fixed_cost` unset), `runtimes.calibration` measures its
   fixed cost per model with probe models, in a model manager of its own (the probes take no
   capacity and no observer hears of them), and the one-time setup its first probes paid.
3. The import overhead plus that one-time setup is the backend's overhead: it counts in the
   runtime's used bytes from then on (`ModelLifecycle.backend_overhead_bytes`), so the
   capacity the placement layer sees shrinks when the runtime starts serving a new format.

On a GPU (the manager has a `meter`), a backend whose models run there (`uses_device`)
loads its probe model onto the device, runs it once and unloads it, with the device to
itself (`runtimes.device_memory.DeviceMeter`): what stays in use on the device afterwards
(the CUDA context of a first library, cuBLAS and cuDNN handles, an allocator's pools) is
the backend's device overhead, counted in the device's used bytes
(`ModelLifecycle.device_overhead_bytes`) as the host overhead is in the host's; at
start-up it is in the baseline the device capacity is read after. So the first real model
measured on the device is charged its own bytes, not the library's setup.

Readings need a quiet process: the setup holds the manager's `LoadGate` exclusively, so
loads and unloads in progress finish first and new ones wait. Concurrent first loads of one
backend wait for one setup; its result is kept. A failed calibration (a probe fails) is
logged once and the backend's models are charged `model_fixed_cost`; the user's load goes
on. With calibration off nothing is measured or charged: the setting, or a GPU (whose memory
resident memory does not show), fixes the sizes.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from runtimes.backends import BackendRegistry
from runtimes.calibration import BackendCost, calibrate_backend, settled_rss
from runtimes.dataplane import InferenceService
from runtimes.memory import STATM
from runtimes.model_manager import ModelManager
from runtimes.sizes import format_size

__all__ = ["BackendSetup", "BackendSetupResult"]

log = logging.getLogger(__name__)

#: The probes' manager holds nothing else; its capacity never refuses one.
_PROBE_CAPACITY = 1 << 62


class BackendSetupResult:
    """What one backend's setup found (None where not measured)."""

    def __init__(self, import_bytes: int | None, cost: BackendCost | None, device_bytes: int = 0) -> None:
        self.import_bytes = import_bytes
        self.cost = cost
        self.device_bytes = device_bytes  # what the backend keeps on the GPU for good

    @property
    def overhead_bytes(self) -> int:
        return (self.import_bytes or 0) + (self.cost.one_time_bytes if self.cost else 0)


class BackendSetup:
    """Sets up each of `backends` on its first use by `manager` (module docstring)."""

    def __init__(self, manager: ModelManager, backends: BackendRegistry, version: str, calibrate: bool) -> None:
        self._manager = manager
        self._backends = backends
        self._version = version
        self._measure = calibrate and STATM.exists()
        self._tasks: dict[str, asyncio.Task] = {}
        self.results: dict[str, BackendSetupResult] = {}
        manager.first_use = self

    def done(self, backend: str) -> bool:
        return backend in self.results

    async def ready(self, backend: str) -> None:
        """Return once `backend` is set up; the first call sets it up, later ones wait for it."""
        if backend in self.results:
            return
        task = self._tasks.get(backend)
        if task is None:
            task = self._tasks[backend] = asyncio.create_task(self._set_up(backend), name=f"set up {backend}")
        await asyncio.shield(task)  # a cancelled load must not cancel the setup others wait for

    async def set_up_before_ready(self, backend: str) -> None:
        """Set `backend` up now, at start-up (ONNX: nearly every runtime serves it, and its
        library is imported already): what it takes is in the process's baseline at READY,
        which the capacity leaves out already, so nothing is charged."""
        await self._set_up(backend, charge=False)

    def schedule(self, backend: str) -> None:
        """Set `backend` up once the loads in progress are done (a load that found its backend
        only after pulling its files: it holds the gate, so it cannot wait for the setup)."""
        if backend not in self.results and backend not in self._tasks:
            self._tasks[backend] = asyncio.create_task(self._set_up(backend), name=f"set up {backend}")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _set_up(self, name: str, charge: bool = True) -> None:
        backend = self._backends.get(name)
        try:
            async with self._manager.gate.exclusive():
                log.info("setting up backend %s (%s)", name, "its first load" if charge else "at start-up")
                result = await self._measured_setup(backend) if self._measure else await self._plain_setup(backend)
                self.results[name] = result
                if result.cost is not None:
                    self._manager.fixed_costs[name] = result.cost.per_model_bytes
                if charge:
                    self._manager.backend_overhead_bytes += result.overhead_bytes
                    self._manager.device_overhead_bytes += result.device_bytes
                if self._measure:
                    log.info("backend %s set up: import %s, %s once; %s (%d bytes) %s", name,
                             format_size(result.import_bytes or 0),
                             format_size(result.cost.one_time_bytes if result.cost else 0),
                             format_size(result.overhead_bytes), result.overhead_bytes,
                             "charged to this runtime's used bytes" if charge else "in the baseline before READY")
        except Exception as error:  # third-party code: a failed setup must not fail the user's load
            log.warning("setting up backend %s failed (%s); its models are charged %s each", name, error,
                        format_size(self._manager.config.model_fixed_cost))
            self.results[name] = BackendSetupResult(None, None)
        finally:
            self._tasks.pop(name, None)

    async def _plain_setup(self, backend) -> BackendSetupResult:
        await asyncio.to_thread(backend.prepare)
        return BackendSetupResult(None, None, await self._device_overhead(backend))

    async def _device_overhead(self, backend) -> int:
        """Device bytes a probe model's load, run and unload left in use (module docstring);
        0 off the GPU, for a CPU-only backend, one without a probe, or when the probe fails."""
        meter, device = self._manager.meter, self._manager.config.device
        if meter is None or not backend.uses_device:
            return 0
        try:
            with tempfile.TemporaryDirectory(prefix="meshserve-device-probe-") as folder:
                probe = await asyncio.to_thread(backend.write_probe, Path(folder))
                if probe is None:
                    return 0

                def run_once() -> None:
                    model = backend.load(probe.model_file, device)
                    try:
                        model.infer(probe.inputs, [])
                    finally:
                        model.unload()

                _, kept = await asyncio.to_thread(meter.measure, device.index, run_once)
        except Exception as error:  # third-party code: the user's load goes on without the figure
            log.warning("measuring backend %s's device overhead failed: %s", backend.name, error)
            return 0
        log.info("backend %s keeps %s on the GPU once it has run a model there", backend.name, format_size(kept))
        return kept

    async def _measured_setup(self, backend) -> BackendSetupResult:
        before = settled_rss()
        try:
            await asyncio.to_thread(backend.prepare)
        except ImportError as error:  # the load fails with its own reason; nothing was set up
            log.warning("backend %s cannot import its library: %s", backend.name, error)
            return BackendSetupResult(None, None)
        imported = max(settled_rss() - before, 0)
        try:
            cost = await self._calibrate(backend)
        except Exception as error:  # a probe failed: the setting's cost, and no one-time figure
            log.warning("size calibration of backend %s failed (%s); its models are charged %s each",
                        backend.name, error, format_size(self._manager.config.model_fixed_cost))
            cost = None
        return BackendSetupResult(imported, cost)

    async def _calibrate(self, backend) -> BackendCost | None:
        config = replace(self._manager.config, capacity_bytes=_PROBE_CAPACITY)
        probes = ModelManager(config, self._backends, self._manager.artifacts)
        try:
            return await calibrate_backend(probes, InferenceService(probes, self._version), backend)
        finally:
            await probes.close()
