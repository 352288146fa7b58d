"""The instance record: what this instance holds, built from the manager and published.

Guarantees:
- `RecordBuilder.snapshot()` reflects the manager at that moment: capacity, used and
  loading bytes, and with a GPU its device capacity and used bytes (an unloading copy still counts as used until it is gone, but is not listed:
  it takes no requests), the copies with their last use and in-flight count, and request
  rates smoothed per model; it also sets the instance gauges;
- request rates come from the manager's per-model counters read on each snapshot, so
  nothing on the request path touches etcd or the agent;
- `Publisher` writes the record on significant change (`mark_changed()`), with changes that
  come within `min_interval_s` of the last write sharing one write, and otherwise at most
  every `max_interval_s`; a write that fails for want of etcd is retried on the next tick.
  When given, `refresh` is awaited before a write once `max_interval_s` has passed since the
  last one (a holder whose counters live in another process reads them there): on the
  periodic tick, and not ahead of a change's write; `refresh` must not raise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.domain.records import HeldCopy, InstanceRecord, formats_of, to_document
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreUnavailable
from mesh.instance.metrics import AgentMetrics
from mesh.instance.registration import Registration
from mesh.instance.holder import ModelEntry, ModelHolder, State

__all__ = ["Publisher", "RecordBuilder"]

log = logging.getLogger(__name__)


class RecordBuilder:
    """Builds this instance's `InstanceRecord` from the manager's entries.

    `shutting_down` is published as set; the identity fields are fixed at construction.
    """

    def __init__(self, manager: ModelHolder, metrics: AgentMetrics, clock: Callable[[], int], *,
                 instance_id: str, address: str, zone: str, labels: tuple[str, ...], version: str,
                 rate_window_s: float, data_address: str = "") -> None:
        self.shutting_down = False
        self._manager = manager
        self._metrics = metrics
        self._clock = clock
        self._instance_id = instance_id
        self._address = address
        self._data_address = data_address
        self._zone = zone
        self._labels = labels
        self._version = version
        self._rate_window_s = rate_window_s
        self._counts: dict[str, tuple[Any, int]] = {}  # model id -> (its stats object, requests seen)
        self._rates: dict[str, float] = {}  # model id -> requests per minute, smoothed
        self._rate_at: float | None = None  # monotonic time of the last rate update

    def snapshot(self, now_ms: int | None = None) -> InstanceRecord:
        """The record as it would be published now (updates the smoothed rates)."""
        now_ms = self._clock() if now_ms is None else now_ms
        entries = self._manager.entries()
        rates = self._update_rates(entries)
        copies: dict[str, HeldCopy] = {}
        used, loading = self._manager.backend_overhead_bytes, 0  # what serving its formats took for good
        for model_id, entry in entries.items():
            if entry.state is State.LOADING:
                loading += entry.reserved_bytes
            else:
                used += entry.reserved_bytes  # an unloading copy holds its memory until it is gone
            if entry.state is State.UNLOADING:
                continue  # takes no requests: routers must not see it
            copies[model_id] = HeldCopy(entry.reserved_bytes, entry.last_used_ms, entry.in_flight,
                                        entry.state is State.LOADING, round(rates.get(model_id, 0.0), 3),
                                        entry.device_bytes)
        self.refresh_metrics(now_ms, entries)
        device_capacity = self._manager.device_capacity_bytes
        return InstanceRecord(
            instance_id=self._instance_id,
            address=self._address,
            capacity_bytes=self._manager.capacity_bytes,
            used_bytes=used,
            loading_bytes=loading,
            zone=self._zone,
            model_types=formats_of(self._labels),  # for readers older than labels
            version=self._version,
            shutting_down=self.shutting_down,
            request_rate_per_min=round(sum(c.rate_per_min for c in copies.values()), 3),
            copies=copies,
            published_ms=now_ms,
            labels=self._labels,
            data_address=self._data_address,
            device_capacity_bytes=device_capacity or 0,
            device_used_bytes=self._manager.device_used_bytes if device_capacity is not None else 0,
        )

    def document(self) -> dict[str, Any]:
        """The snapshot as the JSON document stored in etcd."""
        return to_document(self.snapshot())

    def refresh_metrics(self, now_ms: int | None = None, entries: dict[str, ModelEntry] | None = None) -> None:
        """Set the instance gauges from the manager's entries (read now unless given)."""
        now_ms = self._clock() if now_ms is None else now_ms
        entries = self._manager.entries() if entries is None else entries
        self._metrics.set_usage(self._manager.capacity_bytes, self._manager.backend_overhead_bytes
                                + sum(e.reserved_bytes for e in entries.values()))
        device_capacity = self._manager.device_capacity_bytes  # None: no GPU, the gauges stay 0
        if device_capacity is not None:
            self._metrics.set_device_usage(device_capacity, self._manager.device_overhead_bytes
                                           + sum(e.device_bytes for e in entries.values()))
        self._metrics.models.set(len(entries))
        self._metrics.loading.set(sum(1 for e in entries.values() if e.state is State.LOADING))
        loaded = [e.last_used_ms for e in entries.values() if e.state is State.LOADED]
        self._metrics.lru.set(min(loaded) / 1000 if loaded else 0)
        self._metrics.lru_age.set(max(0, now_ms - min(loaded)) / 1000 if loaded else 0)

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


class Publisher:
    """Writes the record through `registration`, coalesced; `run()` is the publish loop."""

    def __init__(self, builder: RecordBuilder, registration: Registration, *, instance_id: str,
                 min_interval_s: float, max_interval_s: float,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self._builder = builder
        self._refresh = refresh
        self._registration = registration
        self._instance_id = instance_id
        self._min_interval = min_interval_s
        self._max_interval = max_interval_s
        self._dirty = asyncio.Event()

    def mark_changed(self) -> None:
        """Publish soon (coalesced by `min_interval_s`)."""
        self._dirty.set()

    async def publish(self) -> bool:
        """Write the current record now; False if not registered or etcd failed (retried later)."""
        try:
            return await self._registration.put()
        except LeaseLost:
            return False  # the registration opens a new session and publishes then
        except StoreUnavailable as error:
            log.debug("instance %s: publish failed: %s", self._instance_id, error)
            self._dirty.set()
            return False
        except StoreClosed:
            return False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last: float | None = None
        refreshed = loop.time()
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
            if self._refresh is not None and last - refreshed >= self._max_interval:
                refreshed = last
                await self._refresh()
            if not await self.publish():
                self._builder.refresh_metrics()  # keep the gauges live while unregistered
