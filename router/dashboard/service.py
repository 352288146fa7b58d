"""`Dashboard`: the router's live snapshot of the fabric, its last hour, and who waits for both.

It reads only what the router already has in memory: the watched `FabricView` (through the
admin API's own computation, `StatusSource`) and the router's `TrafficCounters`. It never
reads etcd and never scrapes metrics.

- Live: a listener on the view marks the snapshot stale after each batch of watched
  changes (and counts loads and evictions from the instance records that changed); a
  pusher task builds one new document for all waiting streams, then pauses `min_push_s`
  (or four times what the build took, if longer), so a burst of changes becomes one push
  (at most 1 / `min_push_s` per second) and a big fabric's pushes leave the router's loop
  mostly to requests. Nothing is built while nobody waits.
- History: a sampler task takes one `Sample` every `sample_s` seconds into a ring buffer
  of an hour, and marks the snapshot stale (ages and charts move even in a quiet fabric).

Fails: `current()` raises StoreUnavailable until the view has read etcd; `next_document`
raises `DashboardClosed` once `close()` was called (streams end then, so the REST server
can stop without waiting for them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from mesh.domain.records import InstanceRecord
from mesh.state.fabric_view import FabricView
from protos import mesh_admin_pb2 as admin
from router.dashboard.history import History, copy_churn, history_length, make_sample
from router.dashboard.snapshot import snapshot_document
from router.traffic import TrafficCounters

__all__ = ["Dashboard", "DashboardClosed", "StatusSource"]

log = logging.getLogger(__name__)

#: The pause after a push is at least this many times what building it took.
BUSY_FACTOR = 4.0


class StatusSource(Protocol):
    """The admin API's figures as plain calls (`mesh.api.mesh_admin.MeshAdminServicer`)."""

    def status_and_models(self) -> tuple[admin.FabricStatus, admin.ListModelsResponse]: ...


class DashboardClosed(Exception):
    """The dashboard was closed: streams stop."""


class Dashboard(AsyncClosing):
    def __init__(self, view: FabricView, source: StatusSource, traffic: TrafficCounters, *, sample_s: float = 10.0,
                 window_s: float = 3600.0, min_push_s: float = 0.25,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 pause: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._view = view
        self._source = source
        self._traffic = traffic
        self.sample_s = sample_s
        self._min_push_s = min_push_s
        self._clock = clock
        self._monotonic = monotonic
        self._pause = pause  # between pushes (tests hold it to see the coalescing)
        self.history = History(history_length(sample_s, window_s))
        self._tasks = TaskSupervisor("dashboard")
        self._stale = asyncio.Event()
        self._published = asyncio.Event()
        self._version = 0
        self._encoded = b""
        self._waiting = 0
        self._closed = False
        self._instances: dict[str, InstanceRecord] = {}
        self._loads = self._evictions = 0
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        self._instances = self._view.all_instances()
        self._unsubscribe = self._view.subscribe(self._on_change)
        self._tasks.spawn(self._push(), name="push")
        self._tasks.spawn(self._sample(), name="sample")

    async def close(self) -> None:
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._wake()
        await self._tasks.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reading ------------------------------------------------------------------------
    def document(self) -> dict:
        """A fresh document (StoreUnavailable before the view has read etcd)."""
        status, models = self._source.status_and_models()
        return snapshot_document(status, models, self.history.as_json(), sample_s=self.sample_s,
                                 length=self.history.length, version=self._version)

    def current(self) -> tuple[int, bytes]:
        """(version, JSON) of a document built now for one reader (streams are not woken:
        a script polling the JSON does not make every open page redraw)."""
        return self._version, _encode(self.document())

    async def next_document(self, seen: int, timeout: float | None) -> tuple[int, bytes] | None:
        """The first document newer than version `seen`; None after `timeout` seconds
        without one; DashboardClosed once closed."""
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while self._version <= seen:
                    if self._closed:
                        raise DashboardClosed()
                    await self._published.wait()
        except TimeoutError:
            return None
        finally:
            self._waiting -= 1
        if self._closed:
            raise DashboardClosed()
        return self._version, self._encoded

    # -- keeping it current ---------------------------------------------------------------
    def _on_change(self) -> None:
        after = self._view.all_instances()
        if not self._view.is_ready():  # the first read of the fabric: what is there is not news
            self._instances = after
            return
        loads, evictions = copy_churn(self._instances, after, lambda m: self._view.model(m) is not None)
        self._instances = after
        self._loads += loads
        self._evictions += evictions
        self._stale.set()

    def _publish(self) -> None:
        document = self.document()
        self._version += 1
        document["version"] = self._version
        self._encoded = _encode(document)
        self._wake()

    def _wake(self) -> None:
        published, self._published = self._published, asyncio.Event()
        published.set()

    async def _push(self) -> None:
        await self._view.wait_ready(None)
        while True:
            await self._stale.wait()
            self._stale.clear()
            took = 0.0
            if self._waiting:
                started = time.perf_counter()
                try:
                    self._publish()
                except Exception:  # noqa: BLE001 - one bad build must not end the live view
                    log.exception("dashboard: building the live document failed")
                took = time.perf_counter() - started
            # Coalesces the changes that arrive meanwhile; a big fabric's document (tens of
            # ms per thousand models) waits longer, so pushes take at most ~1/5 of the loop.
            await self._pause(max(self._min_push_s, BUSY_FACTOR * took))

    async def _sample(self) -> None:
        await self._view.wait_ready(None)
        before, started = self._traffic.totals(), self._monotonic()
        while True:
            await asyncio.sleep(self.sample_s)  # the sampling period, not a wait for a condition
            after, now = self._traffic.totals(), self._monotonic()
            loads, evictions, self._loads, self._evictions = self._loads, self._evictions, 0, 0
            try:
                status, _ = self._source.status_and_models()
            except Exception:  # noqa: BLE001 - a gap in the chart, not a dead sampler
                log.exception("dashboard: taking a sample failed")
            else:
                self.history.add(make_sample(int(self._clock() * 1000), now - started, status, before, after,
                                             loads, evictions))
            before, started = after, now
            self._stale.set()


def _encode(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()  # one line: an SSE data field
