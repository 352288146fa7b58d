"""The lifecycle of the models one runtime holds.

Guarantees:
- Capacity: the bytes of loaded models plus the reservations of loads in
  progress never exceed `capacity_bytes`. A load reserves its predicted size
  first; after loading, the measured size replaces it, and a model that turns
  out not to fit is unloaded again and refused (CapacityExhausted). Deciding
  what to evict belongs to the placement layer, not here.
- Ordering: loads and unloads of one model id run one at a time, in order;
  different ids run in parallel (up to `max_loading_concurrency` loads).
- In flight: a model being unloaded takes no new requests, and its unload
  waits for the requests already running.
- Concurrency: each model runs at most `max_concurrency` requests at once;
  `max_queue` more may wait; beyond that a request is refused at once (Busy).

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
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

from puller.errors import InvalidStorageUri, PullError, UnsafePath
from runtimes.backends import BackendRegistry, Device, LoadedModel
from runtimes.errors import (
    Busy,
    CapacityExhausted,
    ModelTooLarge,
    InvalidInput,
    LoadFailed,
    ModelNotFound,
)
from runtimes.model_type import parse_model_key, resolve_model_type
from runtimes.sizes import disk_size, format_size
from runtimes.stats import ModelStats

log = logging.getLogger(__name__)


class Artifacts(Protocol):
    """Where model files come from (the puller): storage location -> local path."""

    async def pull(self, model_id: str, model_path: str, model_key: str | None = None): ...

    async def release(self, model_id: str) -> None: ...


class LifecycleObserver(Protocol):
    """Hooks for metrics: called after each load and unload."""

    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None: ...

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None: ...

    def model_unloaded(self, model_id: str, seconds: float) -> None: ...


#: Called with (model_id, predicted_bytes) before a load reserves its room; it may unload
#: other models to make room (the placement layer's instance agent evicts LRU copies).
RoomMaker = Callable[[str, int], Awaitable[None]]


class State(enum.Enum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    UNLOADING = "UNLOADING"


@dataclass
class ModelEntry:
    model_id: str
    state: State
    reserved_bytes: int
    model: LoadedModel | None = None
    stats: ModelStats = field(default_factory=ModelStats)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None
    fast_runs: int = 0  # consecutive runs under ManagerConfig.inline_below_ns (negative: backing off)
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def last_used_ms(self) -> int:
        """The last request's time, or when the load began: a fresh copy counts as just used."""
        return max(self.stats.last_inference_ms, self.since_ms)


@dataclass(frozen=True)
class ManagerConfig:
    capacity_bytes: int
    size_factor: float = 1.25
    default_model_size: int = 1 << 20
    max_concurrency: int = 8
    max_queue: int = 256
    max_loading_concurrency: int = 2
    infer_threads: int = 4
    device: Device = Device()
    inline_below_ns: int = 500_000  # CPU time of the calling thread: immune to GIL waits and preemption
    inline_max_wall_ns: int = 2_000_000  # and wall time, for backends that block without using CPU (GPU syncs)
    inline_after: int = 16
    inline_max_bytes: int = 64 << 10
    inline_backoff: int = 100


class ModelManager:
    """Owns every model this runtime holds; see the module docstring for guarantees."""

    def __init__(self, config: ManagerConfig, backends: BackendRegistry, artifacts: Artifacts,
                 observer: LifecycleObserver | None = None) -> None:
        self.config = config
        self._backends = backends
        self._artifacts = artifacts
        self._observers: list[LifecycleObserver] = [observer] if observer else []
        self._make_room: RoomMaker | None = None
        self._room = asyncio.Lock()  # making room and reserving it happen as one step
        self._entries: dict[str, ModelEntry] = {}
        self._order: dict[str, asyncio.Lock] = {}
        self._load_slots = asyncio.Semaphore(config.max_loading_concurrency)
        self._load_pool = ThreadPoolExecutor(config.max_loading_concurrency, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(config.infer_threads, thread_name_prefix="infer")

    # -- accounting ---------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        return self.config.capacity_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes held or reserved: loaded models plus loads in progress."""
        return sum(e.reserved_bytes for e in self._entries.values())

    def loaded_models(self) -> list[str]:
        return sorted(m for m, e in self._entries.items() if e.state is State.LOADED)

    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._entries)

    def get(self, model_id: str) -> ModelEntry:
        """The loaded model's entry; ModelNotFound if it is absent, loading or unloading."""
        entry = self._entries.get(model_id)
        if entry is None or entry.state is not State.LOADED:
            detail = "is not loaded" if entry is None else f"is {entry.state.value.lower()}"
            raise ModelNotFound(model_id, detail)
        return entry

    def size_of(self, model_id: str) -> int:
        return self.get(model_id).reserved_bytes

    def predict_size(self, model_type: str, model_path: str, model_key: str | None) -> int:
        """Fast, conservative: local files times the size factor; else the key's disk size or a default."""
        key = parse_model_key(model_key)
        resolve_model_type(model_type, key)  # an unsupported type fails here, before any work
        local = Path(model_path) if model_path and "://" not in model_path else None
        if local is not None and local.exists():
            on_disk = disk_size(local)
        else:
            on_disk = int(key.get("disk_size_bytes") or 0)
        if not on_disk:
            return self.config.default_model_size
        return max(int(on_disk * self.config.size_factor), 1)

    def add_observer(self, observer: LifecycleObserver) -> None:
        """Also call `observer` after each load and unload (the instance agent listens here)."""
        self._observers.append(observer)

    def set_room_maker(self, make_room: RoomMaker | None) -> None:
        """Install the hook that frees room before each load reserves it."""
        self._make_room = make_room

    # -- lifecycle ----------------------------------------------------------
    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._order.setdefault(model_id, asyncio.Lock())

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str | None = None) -> int:
        """Load a model and return its measured size; at once if it is already loaded."""
        if not model_id:
            raise InvalidInput("modelId is empty")
        async with self._lock(model_id):
            entry = self._entries.get(model_id)
            if entry is not None and entry.state is State.LOADED:
                return entry.reserved_bytes
            key = parse_model_key(model_key)
            wanted = resolve_model_type(model_type, key)
            predicted = self.predict_size(model_type, model_path, model_key)
            async with self._room:
                if self._make_room is not None:
                    await self._make_room(model_id, predicted)
                self._reserve(model_id, predicted)
            started = time.perf_counter()
            try:
                async with self._load_slots:
                    model, on_disk = await self._fetch_and_load(model_id, wanted.name, model_path, model_key)
                self._settle(model_id, model, on_disk)
            except BaseException as error:
                self._entries.pop(model_id, None)
                for observer in self._observers:
                    observer.model_load_failed(model_id, time.perf_counter() - started, error)
                raise
            entry = self._entries[model_id]
            for observer in self._observers:
                observer.model_loaded(model_id, time.perf_counter() - started, entry.reserved_bytes)
            log.info("loaded %s (%s) in %.3fs", model_id, format_size(entry.reserved_bytes), time.perf_counter() - started)
            return entry.reserved_bytes

    def _reserve(self, model_id: str, size: int) -> None:
        if size > self.capacity_bytes:
            raise ModelTooLarge(f"cannot load '{model_id}': it needs {format_size(size)}, more than this runtime's "
                                f"whole capacity of {format_size(self.capacity_bytes)}")
        free = self.capacity_bytes - self.used_bytes
        if size > free:
            raise CapacityExhausted(
                f"cannot load '{model_id}': needs {format_size(size)}, {format_size(max(free, 0))} free "
                f"of {format_size(self.capacity_bytes)}"
            )
        self._entries[model_id] = ModelEntry(model_id, State.LOADING, size)

    async def _fetch_and_load(self, model_id: str, model_type: str, model_path: str,
                              model_key: str | None) -> tuple[LoadedModel, int]:
        """The loaded model and the bytes its files take on disk."""
        pulled = await self._pull(model_id, model_path, model_key)
        backend, model_file = self._backends.select(model_type, Path(pulled.local_path))
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._load_pool, backend.load, model_file, self.config.device)
        return model, disk_size(model_file)

    async def _pull(self, model_id: str, model_path: str, model_key: str | None):
        try:
            return await self._artifacts.pull(model_id, model_path, model_key)
        except (InvalidStorageUri, UnsafePath) as error:
            raise InvalidInput(str(error)) from error
        except PullError as error:
            raise LoadFailed(f"cannot fetch '{model_id}': {error}", retryable=error.retryable) from error

    def _settle(self, model_id: str, model: LoadedModel, on_disk: int) -> None:
        """Swap the reservation for the measured size, or refuse a model that does not fit.

        A backend that cannot measure (size 0) is charged its bytes on disk times the size factor.
        """
        entry = self._entries[model_id]
        measured = model.size_bytes() or max(int(on_disk * self.config.size_factor), 1)
        others = self.used_bytes - entry.reserved_bytes
        if others + measured > self.capacity_bytes:
            model.unload()
            refusal = ModelTooLarge if measured > self.capacity_bytes else CapacityExhausted
            raise refusal(
                f"'{model_id}' measured {format_size(measured)} after loading (predicted "
                f"{format_size(entry.reserved_bytes)}); it does not fit, so it was unloaded again"
            )
        entry.model = model
        entry.reserved_bytes = measured
        entry.slots = asyncio.Semaphore(self.config.max_concurrency)
        entry.state = State.LOADED

    async def unload(self, model_id: str) -> None:
        """Unload a model once its requests in flight finish; at once if unknown."""
        async with self._lock(model_id):
            entry = self._entries.get(model_id)
            if entry is None:
                return
            entry.state = State.UNLOADING
            started = time.perf_counter()
            await entry.idle.wait()
            model, entry.model = entry.model, None
            if model is not None:
                await asyncio.get_running_loop().run_in_executor(self._load_pool, model.unload)
            del self._entries[model_id]
            await self._artifacts.release(model_id)
            for observer in self._observers:
                observer.model_unloaded(model_id, time.perf_counter() - started)
            log.info("unloaded %s", model_id)
        if not self._lock(model_id).locked() and model_id not in self._entries:
            self._order.pop(model_id, None)

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(m) for m in list(self._entries)))

    # -- requests -----------------------------------------------------------
    async def run(self, model_id: str, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run one request on a loaded model, honouring its concurrency limit."""
        entry = self.get(model_id)
        if entry.in_flight >= self.config.max_concurrency + self.config.max_queue:
            raise Busy(f"model '{model_id}' has {entry.in_flight} requests in flight or queued; retry later")
        entry.in_flight += 1
        entry.idle.clear()
        queued_at = time.perf_counter_ns()
        try:
            # An inline run holds the event loop from start to end, so it cannot add to the
            # concurrency in flight: it needs no slot, only that none is queued before it.
            inline = self._runs_inline(entry, inputs) and not entry.slots.locked()
            if inline:
                started = queued_at
                outputs, cpu_ns, wall_ns = _timed_infer(entry.model, inputs, output_names)
                finished = time.perf_counter_ns()
            else:
                async with entry.slots:
                    started = time.perf_counter_ns()
                    outputs, cpu_ns, wall_ns = await asyncio.get_running_loop().run_in_executor(
                        self._infer_pool, _timed_infer, entry.model, inputs, output_names)
                    finished = time.perf_counter_ns()
            self._note_duration(entry, cpu_ns, wall_ns, inline)
            entry.stats.record_success(queued_at, started, finished)
            return outputs
        except BaseException:
            entry.stats.record_failure(queued_at, time.perf_counter_ns())
            raise
        finally:
            entry.in_flight -= 1
            if entry.in_flight == 0:
                entry.idle.set()

    def _runs_inline(self, entry: ModelEntry, inputs: dict[str, np.ndarray]) -> bool:
        config = self.config
        if entry.fast_runs < config.inline_after:
            return False
        size = 0
        for array in inputs.values():
            size += array.nbytes
        return size <= config.inline_max_bytes

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
        await self.unload_all()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)


def _timed_infer(model: LoadedModel, inputs: dict[str, np.ndarray],
                 output_names: list[str]) -> tuple[dict, int, int]:
    """The model's outputs, and the CPU and wall nanoseconds of its compute (no thread hand-off)."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    outputs = model.infer(inputs, output_names)
    return outputs, time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
