"""The instance agent: one runtime process's seat in the fabric.

It wraps the in-process `ModelManager` (mesh may import runtimes; never the reverse) and
does four things for it:

- **registration**: an `InstanceRecord` at `instances/<id>`, bound to a lease; when the
  lease is lost (etcd down for longer than its TTL, or restarted without it) the agent
  keeps serving and registers again under a new lease, with backoff, until closed;
- **room**: before each load reserves its bytes, it evicts the least recently used
  loaded copies that have no request in flight, just enough to fit (`mesh.domain.lru`);
  when nothing fits it evicts nothing and the manager refuses the load;
- **model records**: after each load, failed load and unload it updates the model's
  registry record (the copy claim, the measured size, the load failure, the last use);
  the lifecycle hooks are synchronous, so the writes go through a queue drained by one
  writer task, in order, off the request path;
- **publishing**: the instance record (capacity, used, loading, copies with last use,
  in-flight counts and request rates) on significant change, coalesced, and otherwise at
  most every `publish_max_interval_s`. Request rates come from the manager's per-model
  counters read on the publish tick: nothing per request touches etcd or the agent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.etcd.client import EtcdClient
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError, StoreUnavailable
from mesh.etcd.session import LeaseSession
from mesh.etcd.keys import Keys
from mesh.domain.lru import choose_victims
from mesh.domain.records import CopyClaim, HeldCopy, InstanceRecord, LoadFailure, ModelRecord, RecordError, to_document
from mesh.state.registry import ModelNotRegistered, Registry, RegistryConflict
from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from runtimes.errors import CapacityExhausted, LoadFailed
from runtimes.model_manager import ModelEntry, ModelManager, State

__all__ = ["AgentMetrics", "InstanceAgent"]

log = logging.getLogger(__name__)

#: Buckets of the age of a copy when it was evicted (milliseconds: 1 s .. 1 day).
EVICTION_AGE_BUCKETS_MS = (1_000, 10_000, 60_000, 300_000, 900_000, 3_600_000, 4 * 3_600_000, 86_400_000)

Change = Callable[[ModelRecord], ModelRecord]
_RESYNC = object()  # queue item: retry the writes kept while etcd was unreachable


def _now_ms() -> int:
    return int(time.time() * 1000)


class AgentMetrics:
    """ModelMesh's instance metrics, on a registry that is passed in.

    Gauges are set on the agent's publish tick (from the event loop), not read from the
    manager at scrape time: the scrape runs on another thread.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.capacity = Gauge("modelmesh_instance_capacity_bytes", "Bytes of models this instance may hold",
                              registry=registry)
        self.used = Gauge("modelmesh_instance_used_bytes",
                          "Bytes held by loaded models and reserved by loads in progress", registry=registry)
        self.lru_age = Gauge("modelmesh_instance_lru_age_seconds",
                             "Seconds since the least recently used loaded model was last used", registry=registry)
        self.models = Gauge("modelmesh_instance_models_total", "Models loaded or loading on this instance",
                            registry=registry)
        self.evictions = Counter("modelmesh_evictions", "Copies unloaded to make room for a load",
                                 registry=registry)
        self.age_at_eviction = Histogram("modelmesh_age_at_eviction_milliseconds",
                                         "Time since a copy's last use when it was evicted",
                                         buckets=EVICTION_AGE_BUCKETS_MS, registry=registry)


@dataclass(frozen=True)
class _Candidate:
    """A manager entry as `mesh.domain.lru.choose_victims` sees it."""

    size_bytes: int
    last_used_ms: int
    in_flight: int
    loading: bool


async def _first_of(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of `events` is set, or `timeout` seconds pass (a fresh copy's grace ending,
    or the room wait running out: the caller re-checks either way)."""
    if not events:
        await asyncio.sleep(timeout)  # a deadline of the policy, not a synchronization
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class InstanceAgent(AsyncClosing):
    """Registers a runtime in the fabric, makes room for its loads and publishes what it holds.

    Guarantees:
    - `start()` returns at once; registration runs in the background and is retried with
      backoff (forever, until `close()`) while etcd is unreachable or the lease is lost.
      The runtime serves meanwhile; `registered` is set while a lease holds the record;
    - eviction never picks a copy with requests in flight or a load in progress, evicts
      least recently used first and no more than needed (see `mesh.domain.lru`); a copy loaded
      less than `fresh_copy_grace_s` ago that has not served yet is spared (the call that
      asked for it is on its way); when nothing can go, a load waits up to `room_wait_s`
      for a request to finish before the manager refuses it (RESOURCE_EXHAUSTED);
    - no lifecycle hook blocks or raises: model record writes are queued, applied in order
      by one writer task; `StoreUnavailable` is retried a few times, then the write is kept
      and replayed after the next successful registration; a model that is not registered
      (loaded through the bare SPI) is skipped;
    - `drain()` publishes `shutting_down=True` at once; `close()` flushes queued record
      writes (bounded), stops the background tasks and revokes the lease, so the record
      goes at once.

    The caller owns `client` and `manager`: close the agent before closing the client.
    Shut down in the order `drain()`, stop the runtime, `close()`.
    """

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        manager: ModelManager,
        *,
        instance_id: str,
        address: str,
        zone: str = "",
        model_types: tuple[str, ...] = ("onnx", "pytorch"),
        version: str = "",
        lease_ttl_s: int = 10,
        publish_min_interval_s: float = 0.1,
        publish_max_interval_s: float = 5.0,
        failure_expiry_ms: int = 600_000,
        metrics_registry: CollectorRegistry | None = None,
        rate_window_s: float = 60.0,
        register_backoff_s: tuple[float, float] = (0.2, 10.0),
        record_write_attempts: int = 3,
        flush_timeout_s: float = 5.0,
        room_wait_s: float = 10.0,
        fresh_copy_grace_s: float = 2.0,
    ) -> None:
        self.instance_id = instance_id
        self.address = address
        self.zone = zone
        self.model_types = tuple(model_types)
        self.version = version
        self._client = client
        self._keys = keys
        self._key = keys.instance(instance_id)  # validates the id before anything starts
        self._manager = manager
        self._registry = Registry(client, keys)
        self._lease_ttl_s = lease_ttl_s
        self._min_interval = publish_min_interval_s
        self._max_interval = publish_max_interval_s
        self._failure_expiry_ms = failure_expiry_ms
        self._rate_window_s = rate_window_s
        self._backoff_initial, self._backoff_max = register_backoff_s
        self._write_attempts = max(1, record_write_attempts)
        self._flush_timeout_s = flush_timeout_s
        self._room_wait_s = room_wait_s
        self._fresh_grace_ms = int(fresh_copy_grace_s * 1000)
        self.metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        self.metrics = AgentMetrics(self.metrics_registry)
        self.metrics.capacity.set(manager.capacity_bytes)

        self.registered = asyncio.Event()
        self.shutting_down = False
        self._tasks = TaskSupervisor(f"agent-{instance_id}")
        self._session: LeaseSession | None = None
        self._put_lock = asyncio.Lock()  # one snapshot-and-put at a time, so puts land in order
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._writes: asyncio.Queue[Any] = asyncio.Queue()  # (model id, change) or _RESYNC
        self._unsynced: list[tuple[str, Change]] = []  # writes that failed, replayed after reconnecting
        self._unsynced_ids: set[str] = set()
        self._seen: dict[str, ModelEntry] = {}  # loaded entries, to read the last use at unload
        self._counts: dict[str, tuple[Any, int]] = {}  # model id -> (its stats object, requests seen)
        self._rates: dict[str, float] = {}  # model id -> requests per minute, smoothed
        self._rate_at: float | None = None  # monotonic time of the last rate update
        self._register_task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Hook into the manager and start registering and publishing in the background."""
        if self._started:
            return
        self._started = True
        self._manager.set_room_maker(self._make_room)
        self._manager.add_observer(self)
        self._register_task = self._tasks.spawn(self._keep_registered(), name="register")
        self._tasks.spawn(self._publish_loop(), name="publish")
        self._tasks.spawn(self._write_records(), name="model-records")

    async def __aenter__(self) -> InstanceAgent:
        await self.start()
        return self

    async def wait_registered(self, timeout: float | None) -> None:
        """Wait until the record is in etcd under a live lease; TimeoutError."""
        async with asyncio.timeout(timeout):
            await self.registered.wait()

    async def drain(self, timeout: float = 5.0) -> None:
        """Mark the instance shutting down and publish that now, so routers stop sending.

        Bounded by `timeout`: an unreachable etcd must not hold up the shutdown.
        """
        self.shutting_down = True
        try:
            async with asyncio.timeout(timeout):
                published = await self.publish()
        except TimeoutError:
            published = False
        if not published:
            log.warning("instance %s: could not publish shutting_down (etcd unreachable?)", self.instance_id)

    async def close(self) -> None:
        """Flush queued model record writes, stop the background tasks, revoke the lease. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._manager.set_room_maker(None)
        if self._started:
            try:
                async with asyncio.timeout(self._flush_timeout_s):
                    await self._writes.join()
            except TimeoutError:
                log.warning("instance %s: %d model record updates not written at shutdown",
                            self.instance_id, self._writes.qsize())
            self._stop.set()
            # Let the registration task leave its session itself (that revokes the lease);
            # cancelling it could cut the revoke short and leave the record until the TTL.
            if self._register_task is not None:
                await asyncio.wait({self._register_task}, timeout=self._client.call_timeout + 1.0)
        await self._tasks.close()

    # -- registration ---------------------------------------------------------------------
    async def _keep_registered(self) -> None:
        delay = self._backoff_initial
        failures = 0
        while not self._stop.is_set():
            try:
                async with LeaseSession(self._client, self._lease_ttl_s, name=f"instance-{self.instance_id}") as session:
                    async with self._put_lock:
                        await session.put(self._key, self._document())
                    self._session = session
                    self.registered.set()
                    log.info("instance %s registered at %s (lease %x, ttl %ds)%s", self.instance_id,
                             self._key, session.lease_id, session.ttl,
                             f" after {failures} failed attempts" if failures else "")
                    failures, delay = 0, self._backoff_initial
                    self._replay_unsynced()
                    await session.run(self._stop.wait())  # LeaseLost when the lease goes
            except StoreClosed:
                log.info("instance %s: etcd client closed; no longer registered", self.instance_id)
                return
            except StoreError as error:
                failures += 1
                if isinstance(error, LeaseLost):
                    log.warning("instance %s: lease lost (%s); serving on, registering again", self.instance_id, error)
                else:
                    # Loud at first and then every tenth try: an outage must not flood the log.
                    level = logging.WARNING if failures <= 3 or failures % 10 == 0 else logging.DEBUG
                    log.log(level, "instance %s: cannot register with etcd at %s (attempt %d): %s; serving on, "
                            "retrying in %.1fs", self.instance_id, ",".join(self._client.endpoints),
                            failures, error, delay)
            finally:
                self._session = None
                self.registered.clear()
            if self._stop.is_set():
                return
            try:  # backoff, ended early by close()
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                    await self._stop.wait()
            except TimeoutError:
                pass
            delay = min(self._backoff_max, delay * 2)

    # -- publishing -------------------------------------------------------------------------
    def mark_changed(self) -> None:
        """Publish soon (coalesced by `publish_min_interval_s`)."""
        self._dirty.set()

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last: float | None = None
        while True:
            try:
                async with asyncio.timeout(self._max_interval):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            if last is not None:
                pause = last + self._min_interval - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)  # rate limit: changes in the pause share one write
            self._dirty.clear()
            last = loop.time()
            if not await self.publish():
                self._refresh_metrics(_now_ms())  # keep the gauges live while unregistered

    async def publish(self) -> bool:
        """Write the current record now; False if not registered or etcd failed (retried later)."""
        session = self._session
        if session is None or session.is_lost:
            return False
        async with self._put_lock:
            if session is not self._session:
                return False
            try:
                await session.put(self._key, self._document())
            except LeaseLost:
                return False  # the registration task opens a new session and publishes then
            except StoreUnavailable as error:
                log.debug("instance %s: publish failed: %s", self.instance_id, error)
                self._dirty.set()
                return False
            except StoreClosed:
                return False
        return True

    def snapshot(self, now_ms: int | None = None) -> InstanceRecord:
        """The record as it would be published now (updates the smoothed rates)."""
        now_ms = _now_ms() if now_ms is None else now_ms
        entries = self._manager.entries()
        rates = self._update_rates(entries)
        copies: dict[str, HeldCopy] = {}
        used = loading = 0
        for model_id, entry in entries.items():
            if entry.state is State.LOADING:
                loading += entry.reserved_bytes
            else:
                used += entry.reserved_bytes  # an unloading copy holds its memory until it is gone
            if entry.state is State.UNLOADING:
                continue  # takes no requests: routers must not see it
            copies[model_id] = HeldCopy(entry.reserved_bytes, entry.last_used_ms, entry.in_flight,
                                        entry.state is State.LOADING, round(rates.get(model_id, 0.0), 3))
        self._refresh_metrics(now_ms, entries)
        return InstanceRecord(
            instance_id=self.instance_id,
            address=self.address,
            capacity_bytes=self._manager.capacity_bytes,
            used_bytes=used,
            loading_bytes=loading,
            zone=self.zone,
            model_types=self.model_types,
            version=self.version,
            shutting_down=self.shutting_down,
            request_rate_per_min=round(sum(c.rate_per_min for c in copies.values()), 3),
            copies=copies,
            published_ms=now_ms,
        )

    def _document(self) -> dict[str, Any]:
        return to_document(self.snapshot())

    def _update_rates(self, entries: dict[str, ModelEntry]) -> dict[str, float]:
        """EWMA of requests per minute per model, from the counters' growth since the last tick.

        The weight of a new sample grows with the time it covers (1 - e^(-dt/window)), so
        ticks at irregular intervals (a change publishes early) are weighed fairly.
        """
        now = time.monotonic()
        dt = None if self._rate_at is None else now - self._rate_at
        if dt is not None and dt <= 0:
            return self._rates
        self._rate_at = now
        alpha = 1.0 if dt is None else 1.0 - math.exp(-dt / self._rate_window_s)
        counts: dict[str, tuple[Any, int]] = {}
        rates: dict[str, float] = {}
        for model_id, entry in entries.items():
            stats = entry.stats
            count = stats.success.count + stats.fail.count
            counts[model_id] = (stats, count)
            before = self._counts.get(model_id)
            if dt is None or before is None or before[0] is not stats:
                rates[model_id] = 0.0  # a new copy (or first tick): no interval to measure over yet
                continue
            instant = max(0, count - before[1]) * 60.0 / dt
            rates[model_id] = alpha * instant + (1.0 - alpha) * self._rates.get(model_id, 0.0)
        self._counts, self._rates = counts, rates
        return rates

    def _refresh_metrics(self, now_ms: int, entries: dict[str, ModelEntry] | None = None) -> None:
        entries = self._manager.entries() if entries is None else entries
        self.metrics.capacity.set(self._manager.capacity_bytes)
        self.metrics.used.set(sum(e.reserved_bytes for e in entries.values()))
        self.metrics.models.set(len(entries))
        loaded = [e.last_used_ms for e in entries.values() if e.state is State.LOADED]
        self.metrics.lru_age.set(max(0, now_ms - min(loaded)) / 1000 if loaded else 0)

    # -- making room ----------------------------------------------------------------------------
    async def _make_room(self, model_id: str, predicted_bytes: int) -> None:
        """The manager's room maker: evict LRU idle copies so `predicted_bytes` fit.

        Runs under the manager's room lock, right before it reserves the bytes. When no
        copy can go now (all busy, or fresh), waits for a request to finish or a fresh
        copy's grace to end, up to `room_wait_s`. Never raises (but cancellation): if there
        is still no room it evicts nothing and lets the manager refuse the load.
        """
        self._dirty.set()  # a copy is about to be added (loading)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._room_wait_s
        try:
            while True:
                victims, wake, grace_ends_s = self._victims(model_id, predicted_bytes)
                if victims is None:
                    return  # fits already
                if victims:
                    await self._evict(model_id, victims)
                    return
                remaining = give_up_at - loop.time()
                if remaining <= 0:
                    log.info("no room for %s (%d bytes): every copy that could go is busy or fresh", model_id,
                             predicted_bytes)
                    return
                await _first_of(wake, min(remaining, grace_ends_s))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed eviction must not fail the load by itself
            log.exception("making room for %s failed", model_id)

    def _victims(self, model_id: str, predicted_bytes: int) -> tuple[list[str] | None, list[asyncio.Event], float]:
        """(None if it fits, else the LRU victims, [] when none can go now; events that
        signal a busy copy going idle; seconds until the first fresh copy's grace ends)."""
        manager = self._manager
        needed = predicted_bytes - (manager.capacity_bytes - manager.used_bytes)
        if needed <= 0 or predicted_bytes > manager.capacity_bytes:
            return None, [], 0.0  # fits, or never will (the manager refuses it: ModelTooLarge)
        now_ms = _now_ms()
        entries = manager.entries()
        candidates = {
            m: _Candidate(e.reserved_bytes, e.last_used_ms, e.in_flight, e.state is not State.LOADED)
            for m, e in entries.items()
        }
        fresh = [m for m, e in entries.items() if e.state is State.LOADED and e.stats.inference_count == 0
                 and e.stats.fail.count == 0 and now_ms - e.since_ms < self._fresh_grace_ms]
        victims = choose_victims(candidates, needed, protect=(model_id, *fresh))
        if victims:
            return victims, [], 0.0
        busy = [e.idle for e in entries.values() if e.state is State.LOADED and e.in_flight > 0]
        grace_ends_ms = min((entries[m].since_ms + self._fresh_grace_ms - now_ms for m in fresh), default=None)
        return [], busy, max(grace_ends_ms, 1) / 1000 if grace_ends_ms is not None else self._room_wait_s

    async def _evict(self, model_id: str, victims: list[str]) -> None:
        now_ms = _now_ms()
        entries = self._manager.entries()
        for victim in victims:
            entry = entries.get(victim)
            last_used = entry.last_used_ms if entry is not None else now_ms
            age_ms = max(0, now_ms - last_used)
            self.metrics.evictions.inc()
            self.metrics.age_at_eviction.observe(age_ms)
            log.info("evicting %s (%d bytes, last used %.1fs ago) to load %s", victim,
                     entry.reserved_bytes if entry is not None else 0, age_ms / 1000, model_id)
        # A request that started on a victim since we chose it is waited for by unload.
        await asyncio.gather(*(self._manager.unload(v) for v in victims))

    # -- lifecycle hooks (LifecycleObserver) -------------------------------------------------------
    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None:
        entry = self._manager.entries().get(model_id)
        if entry is not None:
            self._seen[model_id] = entry
        now = _now_ms()
        me = self.instance_id

        def change(record: ModelRecord) -> ModelRecord:
            failures = {i: f for i, f in record.failures.items() if i != me}
            return replace(record, copies={**record.copies, me: CopyClaim("loaded", now)},
                           size_estimate_bytes=size_bytes, failures=failures)

        self._enqueue(model_id, change)

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None:
        now = _now_ms()
        me = self.instance_id
        # A load cut off by shutdown or cancellation, or refused for want of room (or a
        # transient fetch error), says nothing about the model: no failure record that would
        # keep it off this instance for minutes.
        blameless = not isinstance(error, Exception) or isinstance(error, CapacityExhausted) or (
            isinstance(error, LoadFailed) and error.retryable)
        failure = None if blameless else LoadFailure(str(error) or type(error).__name__, now,
                                                     now + self._failure_expiry_ms)

        def change(record: ModelRecord) -> ModelRecord:
            copies = {i: c for i, c in record.copies.items() if i != me}
            failures = {**record.failures, me: failure} if failure is not None else record.failures
            return replace(record, copies=copies, failures=failures)

        self._enqueue(model_id, change)

    def model_unloaded(self, model_id: str, seconds: float) -> None:
        entry = self._seen.pop(model_id, None)
        last_used = entry.last_used_ms if entry is not None else 0
        me = self.instance_id

        def change(record: ModelRecord) -> ModelRecord:
            copies = {i: c for i, c in record.copies.items() if i != me}
            return replace(record, copies=copies, last_used_ms=max(record.last_used_ms, last_used))

        self._enqueue(model_id, change)

    def _enqueue(self, model_id: str, change: Change) -> None:
        self._dirty.set()
        if not self._started or self._tasks.closed:
            return
        self._writes.put_nowait((model_id, change))

    def _replay_unsynced(self) -> None:
        """Ask the writer to retry the kept writes; it does so in order, before what follows."""
        if self._unsynced:
            self._writes.put_nowait(_RESYNC)

    async def _write_records(self) -> None:
        """The one writer of this instance's model record changes, in the order they happened."""
        while True:
            item = await self._writes.get()
            try:
                if item is _RESYNC:
                    pending, self._unsynced, self._unsynced_ids = self._unsynced, [], set()
                    for model_id, change in pending:
                        await self._apply(model_id, change)
                else:
                    await self._apply(*item)
            finally:
                self._writes.task_done()

    async def _apply(self, model_id: str, change: Change) -> None:
        if model_id in self._unsynced_ids:  # an earlier change of this model is still unwritten
            self._keep(model_id, change)
            return
        for attempt in range(1, self._write_attempts + 1):
            try:
                await self._registry.update(model_id, change)
                return
            except ModelNotRegistered:
                log.debug("model %s is not registered; its record is not updated", model_id)
                return
            except StoreUnavailable as error:
                if attempt == self._write_attempts:
                    # Kept, and written again once the agent reaches etcd (next registration).
                    log.warning("model %s: record update failed %d times (%s); will retry after reconnecting",
                                model_id, attempt, error)
                    self._keep(model_id, change)
                    return
                log.info("model %s: record update failed (%s); retrying", model_id, error)
                await asyncio.sleep(min(2.0, 0.2 * 2 ** attempt))  # backoff, not synchronisation
            except StoreClosed:
                return
            except (StoreError, RegistryConflict, RecordError) as error:
                log.error("model %s: cannot update its record: %s", model_id, error)
                return

    def _keep(self, model_id: str, change: Change) -> None:
        self._unsynced.append((model_id, change))
        self._unsynced_ids.add(model_id)
