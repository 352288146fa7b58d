"""The models one runtime process holds: pulled, loaded by a backend, run in this process.

Guarantees:
- Capacity and ordering (`runtimes.lifecycle.ModelLifecycle`, shared with the instance
  agent's remote holder): the bytes of loaded models plus the reservations of loads in
  progress never exceed `capacity_bytes`; a load reserves its predicted size first
  (bytes on disk x `size_factor`, the key's `disk_size_bytes`, or `default_model_size`),
  the measured size replaces it (what the backend holds for the model, else bytes on disk x
  `size_factor`); both add the backend's fixed cost per model (`fixed_costs`, calibrated
  at the backend's first load by `runtimes.backend_setup`, else `model_fixed_cost`), and
  the backends' one-time overhead counts as used; a model that turns
  out not to fit is unloaded again and refused (CapacityExhausted). On a GPU
  (`device` cuda), a backend that runs there (`Backend.uses_device`) is measured on the
  device too: the device memory in use after its load less before (`runtimes.device_memory`:
  measured loads of one device run one at a time), its reservation the predicted size;
  what its backend measured beyond those device bytes is charged to the host, with the
  fixed cost. Deciding what to
  evict belongs to the placement layer, not here. Loads and unloads of one model id run
  one at a time, in order; different ids run in parallel (up to `max_loading_concurrency`
  loads).
- First use of a backend: before a load is sized, `first_use.ready(backend)` sets the
  backend up (import, calibration) once; loads and unloads hold `gate` shared, a setup
  holds it alone (`runtimes.load_gate`). A load whose backend shows only in its pulled
  files (no model type, remote storage) has its backend set up after it (`schedule`).
- In flight: a model being unloaded takes no new requests, and its unload
  waits for the requests already running.
- Concurrency: each model runs at most `max_concurrency` requests at once;
  `max_queue` more may wait; beyond that a request is refused at once (Busy, limit
  "model"). All models together keep at most `max_instance_queue` requests waiting: a
  request that would wait beyond that is refused at once too (Busy, limit "instance"), so
  the memory of queued requests is bounded per process, not per model.
  A request whose deadline passed while it waited is not run (DeadlineExceeded).
- Batching: a model with a batching policy (`runtimes.batching_policy`: its modelKey,
  its config.pbtxt, or `batching`, the runtime's default) runs its requests through its
  `runtimes.batching.Batcher`: up to `max_batches_at_once` batches at once (the runtime
  passes its usable cores), no more than `max_concurrency` or `infer_threads`, each taking
  one slot; its requests count against `max_queue` as single ones do, and as queued
  against `max_instance_queue` until answered.

Where inference runs: on the worker pool, so a slow model never stalls the event
loop. A model proven fast (its last `inline_after` runs each took under
`inline_below_ns` of CPU and under `inline_max_wall_ns`) runs small requests (inputs up to `inline_max_bytes`) on the
event loop itself: the hop to a worker thread and back costs ~30-100 us of CPU and a GIL hand-off, many
times the compute of a tiny model. One slow inline run sends the model back to
the pool for `inline_backoff` runs. An inline run takes no concurrency slot: it
holds the loop from start to end, so it cannot add to the requests in flight.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from puller.errors import InvalidStorageUri, PullError, UnsafePath
from runtimes.backends import TRITON, Backend, BackendRegistry, Device, LoadedModel
from runtimes.batching import BatchHooks, Batcher
from runtimes.batching_policy import BatchingPolicy, batching_policy
from runtimes.device_memory import DeviceMeter
from runtimes.errors import Busy, DeadlineExceeded, InvalidInput, InvalidModel, LoadFailed
from runtimes.lifecycle import Footprint, LifecycleObserver, ModelEntry, ModelLifecycle, RoomMaker, State
from runtimes.load_gate import LoadGate
from runtimes.memory import release_free_memory
from runtimes.model_type import parse_model_key, resolve_model_type
from runtimes.sizes import disk_size

__all__ = ["Artifacts", "BackendFirstUse", "LifecycleObserver", "ManagerConfig", "ModelEntry", "ModelManager",
           "RoomMaker", "State"]


class Artifacts(Protocol):
    """Where model files come from (the puller): storage location -> local path."""

    async def pull(self, model_id: str, model_path: str, model_key: str | None = None): ...

    async def release(self, model_id: str) -> None: ...


class BackendFirstUse(Protocol):
    """Sets a backend up on its first use (`runtimes.backend_setup.BackendSetup`)."""

    def done(self, backend: str) -> bool: ...

    async def ready(self, backend: str) -> None: ...

    def schedule(self, backend: str) -> None: ...

    async def close(self) -> None: ...


#: Loads of files at least this big give freed memory back to the system afterwards.
RELEASE_AFTER_LOADING = 1 << 20


@dataclass(frozen=True)
class ManagerConfig:
    capacity_bytes: int
    size_factor: float = 1.25
    default_model_size: int = 1 << 20
    max_concurrency: int = 8
    max_queue: int = 256
    max_instance_queue: int = 1024  # requests waiting for a slot, all models together
    max_loading_concurrency: int = 2
    infer_threads: int = 4
    max_batches_at_once: int = 0  # per batched model (0: no bound of its own), never more than infer_threads
    device: Device = Device()
    inline_below_ns: int = 500_000  # CPU time of the calling thread: immune to GIL waits and preemption
    inline_max_wall_ns: int = 2_000_000  # and wall time, for backends that block without using CPU (GPU syncs)
    inline_after: int = 16
    inline_max_bytes: int = 64 << 10
    inline_backoff: int = 100
    model_fixed_cost: int = 0  # charged to each model of a backend absent from ModelManager.fixed_costs
    batching: BatchingPolicy | None = None  # for models whose key and config.pbtxt say nothing; None: off


class ModelManager(ModelLifecycle):
    """Owns every model this runtime holds; see the module docstring for guarantees."""

    def __init__(self, config: ManagerConfig, backends: BackendRegistry, artifacts: Artifacts,
                 observer: LifecycleObserver | None = None, *, meter: DeviceMeter | None = None) -> None:
        super().__init__(config.capacity_bytes, observer)
        self.config = config
        #: Measures loads on the GPU (None on the CPU: nothing to measure there).
        self.meter = (meter or DeviceMeter()) if config.device.is_gpu else None
        self._backends = backends
        self._artifacts = artifacts
        self._load_slots = asyncio.Semaphore(config.max_loading_concurrency)
        self._load_pool = ThreadPoolExecutor(config.max_loading_concurrency, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(config.infer_threads, thread_name_prefix="infer")
        self._queued = 0  # requests waiting for a concurrency slot, all models together
        #: Told how long each pooled request waited for a concurrency slot (seconds; metrics).
        #: Inline runs take no slot and wait for none, so they are not reported.
        self.on_request_queued: Callable[[float], None] | None = None
        #: Told the rows of each batch a batched model runs (metrics).
        self.on_batch_run: Callable[[int], None] | None = None
        self._policies: dict[str, BatchingPolicy] = {}  # of loads between their bring-in and LOADED
        #: Bytes each model of a backend costs besides its own data, by backend name: a
        #: session, objects, first-run buffers (`runtimes.calibration` measures them).
        self.fixed_costs: dict[str, int] = {}
        #: Sets each backend up before its first load; None: nothing to set up (tests, probes).
        self.first_use: BackendFirstUse | None = None
        self.gate = LoadGate()

    @property
    def artifacts(self) -> Artifacts:
        return self._artifacts

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str | None = None) -> int:
        if self.first_use is not None:
            backend = self._backend_of(model_type, model_path, model_key)
            if backend and self.gate.held_here:  # nested in a load: waiting here would deadlock
                self.first_use.schedule(backend)
            elif backend:
                await self.first_use.ready(backend)  # before sizing: it sets the fixed cost
        async with self.gate.shared():
            return await super().load(model_id, model_type, model_path, model_key)

    async def unload(self, model_id: str) -> None:
        async with self.gate.shared():  # freed memory would show in a calibration's readings
            await super().unload(model_id)

    def _backend_of(self, model_type: str, model_path: str, model_key: str | None) -> str:
        """The backend a load will use, when the request or local files say; "" otherwise
        (the load itself then fails with the reason, or finds it after pulling)."""
        try:
            key = parse_model_key(model_key)
            wanted = resolve_model_type(model_type, key).name
        except InvalidInput:
            return ""
        if wanted in self._backends.formats() and wanted != TRITON:
            return wanted
        local = Path(model_path) if model_path and "://" not in model_path else None
        if local is None:
            return ""
        try:
            return self._backends.select(wanted, local, key)[0].name
        except (InvalidModel, OSError):
            return ""

    def fixed_cost(self, backend: str) -> int:
        """The fixed cost of one model of `backend`; the largest known when the type is not named."""
        if not backend:
            return max([*self.fixed_costs.values(), self.config.model_fixed_cost])
        return self.fixed_costs.get(backend, self.config.model_fixed_cost)

    def predict_size(self, model_type: str, model_path: str, model_key: str | None) -> int:
        """Fast, conservative: local files times the size factor, else the key's disk size or a
        default; plus the backend's fixed cost."""
        return self.predict_footprint(model_type, model_path, model_key).host

    def predict_footprint(self, model_type: str, model_path: str, model_key: str | None) -> Footprint:
        """`predict_size` on the host and, for a backend that runs on this runtime's GPU (or
        one not known yet), the same bytes less the fixed cost on the device: its data goes
        there. The measurement after the load settles both."""
        key = parse_model_key(model_key)
        backend = resolve_model_type(model_type, key).name  # an unsupported type fails here
        local = Path(model_path) if model_path and "://" not in model_path else None
        if local is not None and local.exists():
            on_disk = disk_size(local)
        else:
            on_disk = int(key.get("disk_size_bytes") or 0)
        own = max(int(on_disk * self.config.size_factor), 1) if on_disk else self.config.default_model_size
        return Footprint(self.fixed_cost(backend) + own, own if self._on_device(backend) else 0)

    def _on_device(self, backend: str) -> bool:
        """Whether models of `backend` live on the GPU (a backend not known yet: assume so)."""
        if not self.config.device.is_gpu:
            return False
        try:
            return self._backends.get(backend).uses_device
        except KeyError:  # not named, or a Triton layout (its files say which backend)
            return True

    # -- the lifecycle's steps, in this process ------------------------------------
    async def _predict(self, model_id: str, model_type: str, model_path: str, model_key: str | None) -> Footprint:
        return self.predict_footprint(model_type, model_path, model_key)

    async def _bring_in(self, model_id: str, model_type: str, model_path: str,
                        model_key: str | None) -> tuple[LoadedModel, Footprint]:
        """The loaded model and its size: the backend's fixed cost plus what the backend measured
        (a backend that cannot measure: bytes on disk times the size factor); on a GPU, the
        device bytes the load took, which leave the host only what the backend measured beyond them."""
        key = parse_model_key(model_key)
        wanted = resolve_model_type(model_type, key)
        model, backend, on_disk, device_bytes = await self._fetch_and_load(model_id, wanted.name, model_path, model_key)
        try:
            policy = batching_policy(model, key, self.config.batching)
        except (InvalidInput, InvalidModel):
            await self._discard(model_id, model)
            raise
        if policy is not None:
            self._policies[model_id] = policy
        own = model.size_bytes() or max(int(on_disk * self.config.size_factor), 1)
        if device_bytes:
            own = max(own - device_bytes, 1)  # 1, not 0: a host size of 0 would mean "not measured"
        return model, Footprint(self.fixed_cost(backend.name) + own, device_bytes)

    async def _fetch_and_load(self, model_id: str, model_type: str, model_path: str,
                              model_key: str | None) -> tuple[LoadedModel, Backend, int, int]:
        """The loaded model, the backend that loaded it, the bytes its files take on disk and
        the device bytes its load took (0 off the GPU)."""
        pulled = await self._pull(model_id, model_path, model_key)
        backend, model_file = self._backends.select(model_type, Path(pulled.local_path), parse_model_key(model_key))
        if self.first_use is not None and not self.first_use.done(backend.name):
            self.first_use.schedule(backend.name)
        loop = asyncio.get_running_loop()
        device = self.config.device
        load = functools.partial(backend.load, model_file, device)
        if self.meter is not None and backend.uses_device:
            model, device_bytes = await loop.run_in_executor(self._load_pool, self.meter.measure, device.index, load)
        else:
            model, device_bytes = await loop.run_in_executor(self._load_pool, load), 0
        on_disk = disk_size(model_file)
        if on_disk >= RELEASE_AFTER_LOADING:
            # A big load frees big buffers (the file read whole, parsing); glibc would keep them
            # resident, but they are nobody's memory once the model is in.
            await loop.run_in_executor(self._load_pool, release_free_memory)
        return model, backend, on_disk, device_bytes

    async def _pull(self, model_id: str, model_path: str, model_key: str | None):
        try:
            return await self._artifacts.pull(model_id, model_path, model_key)
        except (InvalidStorageUri, UnsafePath) as error:
            raise InvalidInput(str(error)) from error
        except PullError as error:
            raise LoadFailed(f"cannot fetch '{model_id}': {error}", retryable=error.retryable) from error

    def _load_slot(self) -> asyncio.Semaphore:
        return self._load_slots  # at most max_loading_concurrency loads at once

    def _loaded(self, entry: ModelEntry) -> None:
        entry.slots = asyncio.Semaphore(self.config.max_concurrency)
        policy = self._policies.pop(entry.model_id, None)
        if policy is not None:
            max_batches = min(self.config.max_concurrency, self.config.infer_threads,
                              self.config.max_batches_at_once or self.config.infer_threads)
            entry.batcher = Batcher(entry.model_id, entry.model, policy, entry.slots, max_batches, self._infer_pool,
                                    entry.stats, self._batch_hooks(entry))

    def _batch_hooks(self, entry: ModelEntry) -> BatchHooks:
        def queued(seconds: float) -> None:
            if self.on_request_queued is not None:
                self.on_request_queued(seconds)

        def batch_ran(rows: int) -> None:
            if self.on_batch_run is not None:
                self.on_batch_run(rows)

        return BatchHooks(queued, batch_ran, lambda size: self._inline_allowed(entry, size),
                          lambda cpu_ns, wall_ns, inline: self._note_duration(entry, cpu_ns, wall_ns, inline))

    async def _discard(self, model_id: str, handle: LoadedModel) -> None:
        self._policies.pop(model_id, None)
        await asyncio.get_running_loop().run_in_executor(self._load_pool, handle.unload)

    async def _release(self, model_id: str, handle: LoadedModel | None) -> None:
        entry = self._entries.get(model_id)
        if entry is not None and entry.batcher is not None:
            await entry.batcher.wait_idle()  # a batch whose callers went away may still run
        if handle is not None:
            await asyncio.get_running_loop().run_in_executor(self._load_pool, handle.unload)
        await self._artifacts.release(model_id)

    # -- requests -----------------------------------------------------------
    def requests_in_flight(self) -> int:
        """Requests taken and not yet answered, queued or running, all models. Called from the
        metrics thread: `entries()` copies the dict in one C call, which no other thread interrupts."""
        return sum(entry.in_flight for entry in self.entries().values())

    async def run(self, model_id: str, inputs: dict[str, np.ndarray], output_names: list[str],
                  deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run one request on a loaded model, honouring its concurrency limit (and its batching);
        `deadline` (time.perf_counter() seconds): not run once it passed."""
        entry = self.get(model_id)
        self._admit(model_id, entry)
        entry.in_flight += 1
        entry.idle.clear()
        queued_at = time.perf_counter_ns()
        abandoned = False  # cancelled while a worker thread runs it: released when that ends
        try:
            if entry.batcher is not None:
                self._queued += 1  # until answered: the batcher's queue is the model's
                try:
                    outputs, started, finished = await entry.batcher.submit(inputs, output_names, deadline)
                finally:
                    self._queued -= 1
                entry.stats.record_success(queued_at, started, finished)
                return outputs
            # An inline run holds the event loop from start to end, so it cannot add to the
            # concurrency in flight: it needs no slot, only that none is queued before it.
            inline = self._runs_inline(entry, inputs) and not entry.slots.locked()
            if inline:
                started = queued_at
                outputs, cpu_ns, wall_ns = _timed_infer(entry.model, inputs, output_names)
                finished = time.perf_counter_ns()
            else:
                await self._take_slot(entry)
                work = None
                try:
                    started = time.perf_counter_ns()
                    if self.on_request_queued is not None:
                        self.on_request_queued((started - queued_at) / 1e9)
                    if deadline is not None and time.perf_counter() >= deadline:
                        raise DeadlineExceeded(f"model '{model_id}': the request's deadline passed while it was queued")
                    work = asyncio.get_running_loop().run_in_executor(
                        self._infer_pool, _timed_infer, entry.model, inputs, output_names)
                    outputs, cpu_ns, wall_ns = await asyncio.shield(work)
                    finished = time.perf_counter_ns()
                except asyncio.CancelledError:
                    if work is not None and not work.done():
                        # The caller went, but a worker thread still runs the model: its slot and
                        # its count in flight (which unload waits on) go only once it is done.
                        abandoned = True
                        work.add_done_callback(lambda done: self._abandoned_done(entry, done))
                    raise
                finally:
                    if not abandoned:
                        entry.slots.release()
            self._note_duration(entry, cpu_ns, wall_ns, inline)
            entry.stats.record_success(queued_at, started, finished)
            return outputs
        except BaseException:
            entry.stats.record_failure(queued_at, time.perf_counter_ns())
            raise
        finally:
            if not abandoned:
                self._leave(entry)

    @staticmethod
    def _leave(entry: ModelEntry) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0:
            entry.idle.set()

    def _abandoned_done(self, entry: ModelEntry, done: asyncio.Future) -> None:
        """A run whose caller went away has finished in its worker thread."""
        if not done.cancelled():
            done.exception()  # retrieved: the caller is gone, nobody else will
        entry.slots.release()
        self._leave(entry)

    def _admit(self, model_id: str, entry: ModelEntry) -> None:
        """Busy, naming the limit, when the request could only wait beyond the model's queue
        or the runtime's; a request that finds a free slot is never refused."""
        config = self.config
        if entry.in_flight >= config.max_concurrency + config.max_queue:
            raise Busy(f"model '{model_id}' has {entry.in_flight} requests in flight or queued, its limit "
                       f"(max_concurrency {config.max_concurrency} + max_queue {config.max_queue}); "
                       "retry later", limit="model")
        if entry.slots.locked() and self._queued >= config.max_instance_queue:
            raise Busy(f"this runtime has {self._queued} requests queued across its models, its limit "
                       f"(max_instance_queue {config.max_instance_queue}); retry later", limit="instance")

    async def _take_slot(self, entry: ModelEntry) -> None:
        """A concurrency slot of the model; counted as queued while it waits for one."""
        if not entry.slots.locked():
            await entry.slots.acquire()  # free: returns without waiting
            return
        self._queued += 1
        try:
            await entry.slots.acquire()
        finally:
            self._queued -= 1

    def _runs_inline(self, entry: ModelEntry, inputs: dict[str, np.ndarray]) -> bool:
        if entry.fast_runs < self.config.inline_after:
            return False
        size = 0
        for array in inputs.values():
            size += array.nbytes
        return self._inline_allowed(entry, size)

    def _inline_allowed(self, entry: ModelEntry, input_bytes: int) -> bool:
        """Whether a run of a model with these input bytes may hold the event loop (see the module docstring)."""
        return entry.fast_runs >= self.config.inline_after and input_bytes <= self.config.inline_max_bytes

    def _note_duration(self, entry: ModelEntry, cpu_ns: int, wall_ns: int, inline: bool) -> None:
        config = self.config
        if cpu_ns <= config.inline_below_ns and wall_ns <= config.inline_max_wall_ns:
            if entry.fast_runs < config.inline_after:
                entry.fast_runs += 1
        elif inline:  # it stalled the event loop: back to the pool for a while
            entry.fast_runs = -config.inline_backoff
        else:
            entry.fast_runs = min(entry.fast_runs, 0)

    async def close(self) -> None:
        if self.first_use is not None:
            await self.first_use.close()
        await self.unload_all()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)


def _timed_infer(model: LoadedModel, inputs: dict[str, np.ndarray],
                 output_names: list[str]) -> tuple[dict, int, int]:
    """The model's outputs, and the CPU and wall nanoseconds of its compute (no thread hand-off)."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    outputs = model.infer(inputs, output_names)
    return outputs, time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
