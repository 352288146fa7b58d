"""The lifecycle every holder of models shares, wherever the models live.

`ModelLifecycle` is the part of a model manager that does not care how a model is
brought in:

- Capacity: the bytes of loaded models plus the reservations of loads in progress (plus
  `backend_overhead_bytes`, what serving their formats took for good) never exceed
  `capacity_bytes`. A load reserves its predicted size first; after loading, the
  measured size replaces it, and a model that turns out not to fit is let go again and
  refused (CapacityExhausted, or ModelTooLarge when it exceeds the whole capacity).
- Device memory, apart: a holder with a GPU (`device_capacity_bytes` set) accounts the
  bytes models hold on it the same way, next to host memory: a size is a `Footprint`
  (host bytes, device bytes), and a load must fit both. A holder without one
  (`device_capacity_bytes` None) checks host memory only.
- Ordering: loads and unloads of one model id run one at a time, in order; different ids
  run in parallel.
- In flight: a model being unloaded is UNLOADING (it takes no new requests) and its
  unload waits until its entry is `idle`.
- Hooks: a room maker runs before a load reserves its bytes (the placement layer's
  instance agent evicts least recently used copies there); observers hear of every load,
  failed load and unload (metrics, the agent's model records); probes hear how long a load
  waited and sizing took, and of a failed unload attempt (metrics).

Subclasses say how a model is sized (`_predict`), brought in (`_bring_in`) and let go
(`_discard` after a refusal, `_release` on unload): `runtimes.model_manager.ModelManager`
holds models in this process; the instance agent's `mesh.instance.remote.RemoteModels`
drives a runtime in another process over the model-runtime SPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from runtimes.errors import CapacityExhausted, InvalidInput, ModelNotFound, ModelTooLarge
from runtimes.sizes import format_size
from runtimes.stats import ModelStats

if TYPE_CHECKING:
    from runtimes.backends import LoadedModel
    from runtimes.batching import Batcher

__all__ = ["Footprint", "LifecycleObserver", "LifecycleProbe", "ModelEntry", "ModelLifecycle", "RoomMaker", "State"]

log = logging.getLogger(__name__)


class LifecycleObserver(Protocol):
    """Hooks called after each load and unload (metrics, the instance agent)."""

    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None: ...

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None: ...

    def model_unloaded(self, model_id: str, seconds: float) -> None: ...


class LifecycleProbe(Protocol):
    """Finer hooks for metrics (`runtimes.metrics.LifecycleMetrics`); each must be quick."""

    def load_queued(self, model_id: str, seconds: float) -> None:
        """A load waited this long before it started: its turn, room, a loading slot (not sizing)."""

    def model_sized(self, model_id: str, seconds: float) -> None:
        """Predicting the model's size before its load took this long."""

    def unload_failed(self, model_id: str, error: BaseException) -> None:
        """Letting go of a model raised `error` (the unload fails with it)."""


#: Called with (model_id, predicted host bytes, predicted device bytes) before a load
#: reserves its room; it may unload other models to make room (the placement layer's
#: instance agent evicts LRU copies).
RoomMaker = Callable[[str, int, int], Awaitable[None]]


@dataclass(frozen=True)
class Footprint:
    """What a model takes: `host` bytes of the process's memory, `device` bytes of its GPU's."""

    host: int
    device: int = 0

    @classmethod
    def of(cls, size: "int | Footprint") -> "Footprint":
        """A footprint as given, or an int's host bytes (a holder without a device says only those)."""
        return size if isinstance(size, Footprint) else cls(size)


class State(enum.Enum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    UNLOADING = "UNLOADING"


@dataclass
class ModelEntry:
    """One model held (or being loaded or unloaded), with its bytes and its use.

    `model`, `slots`, `batcher` and `fast_runs` are the in-process manager's (the backend's
    loaded model, its concurrency slots, its dynamic batcher, its inline-run streak); a holder whose models live in
    another process leaves them unset and keeps `stats` from that process's counters.
    """

    model_id: str
    state: State
    reserved_bytes: int
    model: LoadedModel | None = None
    device_bytes: int = 0  # held or reserved on the GPU, apart from reserved_bytes
    stats: ModelStats = field(default_factory=ModelStats)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    slots: asyncio.Semaphore | None = None
    batcher: Batcher | None = None  # None: each request runs alone
    fast_runs: int = 0  # consecutive runs under ManagerConfig.inline_below_ns (negative: backing off)
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def last_used_ms(self) -> int:
        """The last request's time, or when the load began: a fresh copy counts as just used."""
        return max(self.stats.last_inference_ms, self.since_ms)


class ModelLifecycle:
    """Capacity accounting and ordered loads and unloads; see the module docstring."""

    def __init__(self, capacity_bytes: int, observer: LifecycleObserver | None = None, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._capacity_bytes = capacity_bytes
        self._clock = clock  # times the observers' load, queue and sizing figures
        self._observers: list[LifecycleObserver] = [observer] if observer else []
        self._probes: list[LifecycleProbe] = []
        self._make_room: RoomMaker | None = None
        self._room = asyncio.Lock()  # making room and reserving it happen as one step
        self._entries: dict[str, ModelEntry] = {}
        self._order: dict[str, asyncio.Lock] = {}
        #: Bytes the holder's process took for good to serve its formats (a backend's library
        #: and setup, `runtimes.backend_setup`): counted as used, so models get less room.
        self.backend_overhead_bytes = 0
        #: Bytes of models the GPU may hold; None: no GPU, device bytes are not checked.
        self._device_capacity_bytes: int | None = None
        #: Device bytes the backends took for good (CUDA context, library handles).
        self.device_overhead_bytes = 0

    # -- accounting ---------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    def set_capacity(self, capacity_bytes: int) -> None:
        """Change the capacity (a runtime that derives it does so once its baseline is in)."""
        self._capacity_bytes = capacity_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes held or reserved: loaded models plus loads in progress, plus the backends' overhead."""
        return sum(e.reserved_bytes for e in self._entries.values()) + self.backend_overhead_bytes

    @property
    def device_capacity_bytes(self) -> int | None:
        return self._device_capacity_bytes

    def set_device_capacity(self, capacity_bytes: int | None) -> None:
        """The GPU memory models may hold (None: no GPU)."""
        self._device_capacity_bytes = capacity_bytes

    @property
    def device_used_bytes(self) -> int:
        """GPU bytes held or reserved, as `used_bytes`, plus the backends' device overhead."""
        return sum(e.device_bytes for e in self._entries.values()) + self.device_overhead_bytes

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

    def device_size_of(self, model_id: str) -> int:
        return self.get(model_id).device_bytes

    def add_observer(self, observer: LifecycleObserver) -> None:
        """Also call `observer` after each load and unload (the instance agent listens here)."""
        self._observers.append(observer)

    def add_probe(self, probe: LifecycleProbe) -> None:
        """Also tell `probe` how long loads wait and sizing takes, and of failed unloads."""
        self._probes.append(probe)

    def set_room_maker(self, make_room: RoomMaker | None) -> None:
        """Install the hook that frees room before each load reserves it."""
        self._make_room = make_room

    # -- what a holder provides -----------------------------------------------
    async def _predict(self, model_id: str, model_type: str, model_path: str,
                       model_key: str | None) -> int | Footprint:
        """Bytes to reserve before loading (an int: host bytes only); raises for a load that
        cannot be (a type not served)."""
        raise NotImplementedError

    async def _bring_in(self, model_id: str, model_type: str, model_path: str,
                        model_key: str | None) -> tuple[Any, int | Footprint]:
        """Load the model: its handle (kept as `entry.model`) and its measured bytes (an int:
        host bytes only; host 0: unknown, the reservation stands)."""
        raise NotImplementedError

    async def _discard(self, model_id: str, handle: Any) -> None:
        """Let go of a model just brought in that does not fit after all."""
        raise NotImplementedError

    async def _release(self, model_id: str, handle: Any) -> None:
        """Let go of a loaded model (its requests in flight are done)."""
        raise NotImplementedError

    def _loaded(self, entry: ModelEntry) -> None:
        """Called once an entry is LOADED, before the observers hear of it."""

    def _load_slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held while a model is brought in (a holder that bounds concurrent loads returns its
        semaphore); the wait for it counts as the load's queueing."""
        return contextlib.nullcontext()

    # -- lifecycle ----------------------------------------------------------
    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._order.setdefault(model_id, asyncio.Lock())

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str | None = None) -> int:
        """Load a model and return its measured size; at once if it is already loaded."""
        if not model_id:
            raise InvalidInput("modelId is empty")
        entered = self._clock()
        async with self._lock(model_id):
            entry = self._entries.get(model_id)
            if entry is not None and entry.state is State.LOADED:
                return entry.reserved_bytes
            sizing = self._clock()
            predicted = Footprint.of(await self._predict(model_id, model_type, model_path, model_key))
            sized = self._clock()
            for probe in self._probes:
                probe.model_sized(model_id, sized - sizing)
            async with self._room:
                if self._make_room is not None:
                    await self._make_room(model_id, predicted.host, predicted.device)
                self._reserve(model_id, predicted)
            started = self._clock()
            try:
                async with self._load_slot():
                    started = self._clock()
                    for probe in self._probes:
                        probe.load_queued(model_id, started - entered - (sized - sizing))
                    handle, measured = await self._bring_in(model_id, model_type, model_path, model_key)
                    await self._settle(model_id, handle, Footprint.of(measured))
            except BaseException as error:
                self._entries.pop(model_id, None)
                for observer in self._observers:
                    observer.model_load_failed(model_id, self._clock() - started, error)
                raise
            entry = self._entries[model_id]
            for observer in self._observers:
                observer.model_loaded(model_id, self._clock() - started, entry.reserved_bytes)
            on_device = f", {format_size(entry.device_bytes)} on the GPU" if entry.device_bytes else ""
            log.info("loaded %s (%s%s) in %.3fs", model_id, format_size(entry.reserved_bytes), on_device,
                     self._clock() - started)
            return entry.reserved_bytes

    def _reserve(self, model_id: str, size: Footprint) -> None:
        for what, needed, capacity, used in self._memories(size):
            if needed > capacity:
                raise ModelTooLarge(f"cannot load '{model_id}': it needs {format_size(needed)}{what}, more than this "
                                    f"runtime's whole capacity of {format_size(capacity)}")
            free = capacity - used
            if needed > free:
                raise CapacityExhausted(
                    f"cannot load '{model_id}': needs {format_size(needed)}{what}, {format_size(max(free, 0))} free "
                    f"of {format_size(capacity)}"
                )
        self._entries[model_id] = ModelEntry(model_id, State.LOADING, size.host, device_bytes=size.device)

    def _memories(self, size: Footprint, leaving_out: ModelEntry | None = None):
        """(how to name it, bytes needed, capacity, bytes used by others) of host memory, and
        of the GPU's when there is one."""
        host_used = self.used_bytes - (leaving_out.reserved_bytes if leaving_out else 0)
        yield "", size.host, self.capacity_bytes, host_used
        if self._device_capacity_bytes is not None:
            device_used = self.device_used_bytes - (leaving_out.device_bytes if leaving_out else 0)
            yield " on the GPU", size.device, self._device_capacity_bytes, device_used

    async def _settle(self, model_id: str, handle: Any, measured: Footprint) -> None:
        """Swap the reservation for the measured size, or refuse a model that does not fit."""
        entry = self._entries[model_id]
        if not measured.host:  # unknown: the reservation stands
            measured = Footprint(entry.reserved_bytes, measured.device or entry.device_bytes)
        for what, needed, capacity, others in self._memories(measured, leaving_out=entry):
            if others + needed > capacity:
                await self._discard(model_id, handle)
                refusal = ModelTooLarge if needed > capacity else CapacityExhausted
                raise refusal(
                    f"'{model_id}' measured {format_size(needed)}{what} after loading (predicted "
                    f"{format_size(entry.device_bytes if what else entry.reserved_bytes)}); it does not fit, "
                    f"so it was unloaded again"
                )
        entry.model = handle
        entry.reserved_bytes = measured.host
        entry.device_bytes = measured.device
        entry.state = State.LOADED
        self._loaded(entry)

    async def unload(self, model_id: str) -> None:
        """Unload a model once its requests in flight finish; at once if unknown."""
        async with self._lock(model_id):
            entry = self._entries.get(model_id)
            if entry is None:
                return
            entry.state = State.UNLOADING
            started = self._clock()
            await entry.idle.wait()
            handle, entry.model = entry.model, None
            try:
                await self._release(model_id, handle)
            except Exception as error:
                for probe in self._probes:
                    probe.unload_failed(model_id, error)
                raise
            del self._entries[model_id]
            for observer in self._observers:
                observer.model_unloaded(model_id, self._clock() - started)
            log.info("unloaded %s", model_id)
        if not self._lock(model_id).locked() and model_id not in self._entries:
            self._order.pop(model_id, None)

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(m) for m in list(self._entries)))
