"""The instance agent: one runtime's seat in the fabric.

It wraps a `ModelHolder` (`mesh.instance.holder`): the in-process `ModelManager` of
`meshserve runtime --etcd` (mesh may import runtimes; never the reverse), or the
`RemoteModels` of `meshserve agent`, a runtime in another process driven over the
model-runtime SPI (`mesh.instance.remote`). It composes the four things it does for it,
each in its own module:

- **registration** (`registration`): the `InstanceRecord` at `instances/<id>`, bound to a
  lease, registered again under a new lease whenever the lease is lost, until closed;
- **room** (`room`): before each load reserves its bytes, the least recently used idle
  copies are evicted, just enough to fit;
- **model records** (`record_writer`): after each load, failed load and unload the model's
  registry record is updated, through a queue drained in order by one writer task;
- **publishing** (`publisher`): the instance record on significant change, coalesced, and
  otherwise at most every `publish_max_interval_s`.

Once registered, it also drops the `loading` claims on its id made before it started: an
earlier run under the same id was killed mid-load, and callers would otherwise wait on
those claims for the whole loading timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from mesh.aio.backoff import Backoff
from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from mesh.domain.records import InstanceRecord
from mesh.domain.timings import DEFAULT_TIMINGS
from mesh.etcd.client import EtcdClient
from mesh.etcd.errors import StoreError
from mesh.etcd.keys import Keys
from mesh.instance.metrics import AgentMetrics
from mesh.instance.publisher import Publisher, RecordBuilder
from mesh.instance.record_writer import (Change, ModelRecordWriter, earlier_run_claim_change, has_earlier_runs_claim,
                                         load_failed_change, loaded_change, unloaded_change)
from mesh.instance.registration import Registration
from mesh.instance.room import LruRoomMaker
from mesh.state.registry import Registry
from mesh.instance.holder import ModelEntry, ModelHolder

__all__ = ["AgentMetrics", "InstanceAgent"]

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class InstanceAgent(AsyncClosing):
    """Registers a runtime in the fabric, makes room for its loads and publishes what it holds.

    Guarantees:
    - `start()` returns at once; registration runs in the background and is retried with
      backoff (forever, until `close()`) while etcd is unreachable or the lease is lost.
      The runtime serves meanwhile; `registered` is set while a lease holds the record;
    - eviction never picks a copy with requests in flight (as the holder counts them: a remote
      holder sees none, and its runtime's unload waits for them) or a load in progress, evicts
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

    `address` is where the fabric calls the model-runtime SPI, `data_address` where routers
    send V2 inference (empty: `address`); `labels` are the runtime labels placement matches.
    `refresh`, when given, is awaited before each publish tick (a remote holder polls the
    runtime's statistics there).

    The caller owns `client` and `manager`: close the agent before closing the client.
    Shut down in the order `drain()`, stop the runtime, `close()`.
    """

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        manager: ModelHolder,
        *,
        instance_id: str,
        address: str,
        data_address: str = "",
        zone: str = "",
        labels: tuple[str, ...] = ("mt:onnx", "mt:pytorch"),
        version: str = "",
        lease_ttl_s: int = 10,
        publish_min_interval_s: float = 0.1,
        publish_max_interval_s: float = 5.0,
        failure_expiry_ms: int = DEFAULT_TIMINGS.failure_expiry_ms,
        metrics_registry: CollectorRegistry | None = None,
        rate_window_s: float = 60.0,
        register_backoff_s: tuple[float, float] = (0.2, 10.0),
        record_write_attempts: int = 3,
        flush_timeout_s: float = 5.0,
        room_wait_s: float = 10.0,
        fresh_copy_grace_s: float = 2.0,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.address = address
        self.data_address = data_address
        self.zone = zone
        self.labels = tuple(labels)
        self.version = version
        key = keys.instance(instance_id)  # validates the id before anything starts
        self._client = client
        self._manager = manager
        self._failure_expiry_ms = failure_expiry_ms
        self._flush_timeout_s = flush_timeout_s
        self.metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        self.metrics = AgentMetrics(self.metrics_registry)
        self.metrics.capacity.set(manager.capacity_bytes)

        self._builder = RecordBuilder(manager, self.metrics, _now_ms, instance_id=instance_id, address=address,
                                      data_address=data_address, zone=zone, labels=self.labels, version=version,
                                      rate_window_s=rate_window_s)
        self._registry = Registry(client, keys)
        self._writer = ModelRecordWriter(self._registry, attempts=record_write_attempts)
        backoff_initial, backoff_max = register_backoff_s
        self._registration = Registration(client, key, self._builder.document, instance_id=instance_id,
                                          lease_ttl_s=lease_ttl_s,
                                          backoff=Backoff(backoff_initial, backoff_max, factor=2.0, jitter=0.5),
                                          on_registered=self._writer.resync)
        self.registered = self._registration.registered
        self._publisher = Publisher(self._builder, self._registration, instance_id=instance_id,
                                    min_interval_s=publish_min_interval_s, max_interval_s=publish_max_interval_s,
                                    refresh=refresh)
        self._room = LruRoomMaker(manager, self.metrics, _now_ms, self._publisher.mark_changed,
                                  room_wait_s=room_wait_s, fresh_copy_grace_s=fresh_copy_grace_s)
        self._tasks = TaskSupervisor(f"agent-{instance_id}")
        self._seen: dict[str, ModelEntry] = {}  # loaded entries, to read the last use at unload
        self._register_task: asyncio.Task[None] | None = None
        self._started = False
        self._started_ms = 0
        self._closed = False

    @property
    def shutting_down(self) -> bool:
        """Published in the record: routers send no new requests to an instance shutting down."""
        return self._builder.shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self._builder.shutting_down = value

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Hook into the manager and start registering and publishing in the background."""
        if self._started:
            return
        self._started = True
        self._started_ms = _now_ms()
        self._manager.set_room_maker(self._room.make_room)
        self._manager.add_observer(self)
        self._register_task = self._tasks.spawn(self._registration.run(), name="register")
        self._tasks.spawn(self._publisher.run(), name="publish")
        self._tasks.spawn(self._writer.run(), name="model-records")
        self._tasks.spawn(self._drop_earlier_runs_claims(), name="earlier-claims")

    async def _drop_earlier_runs_claims(self) -> None:
        """Once registered: drop the `loading` claims on this id that an earlier run left
        (killed mid-load, then restarted under the same id before the controller saw it
        gone). Best effort: if etcd fails, the controller drops them at the loading timeout."""
        await self.registered.wait()
        try:
            records = await self._registry.list()
        except StoreError as error:
            log.warning("instance %s: could not read the model records for earlier runs' claims: %s",
                        self.instance_id, error)
            return
        held = self._manager.entries()
        for model_id, record in records.items():
            if model_id not in held and has_earlier_runs_claim(record, self.instance_id, self._started_ms):
                log.info("instance %s: dropping the loading claim on %s an earlier run left", self.instance_id,
                         model_id)
                self._writer.submit(model_id, earlier_run_claim_change(self.instance_id, self._started_ms))

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
                    await self._writer.flush()
            except TimeoutError:
                log.warning("instance %s: %d model record updates not written at shutdown",
                            self.instance_id, self._writer.queued)
            self._registration.stop()
            # Let the registration task leave its session itself (that revokes the lease);
            # cancelling it could cut the revoke short and leave the record until the TTL.
            if self._register_task is not None:
                await asyncio.wait({self._register_task}, timeout=self._client.call_timeout + 1.0)
        await self._tasks.close()

    # -- publishing -------------------------------------------------------------------------
    def mark_changed(self) -> None:
        """Publish soon (coalesced by `publish_min_interval_s`)."""
        self._publisher.mark_changed()

    async def publish(self) -> bool:
        """Write the current record now; False if not registered or etcd failed (retried later)."""
        return await self._publisher.publish()

    def snapshot(self, now_ms: int | None = None) -> InstanceRecord:
        """The record as it would be published now (updates the smoothed rates)."""
        return self._builder.snapshot(now_ms)

    # -- lifecycle hooks (LifecycleObserver) -------------------------------------------------------
    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None:
        entry = self._manager.entries().get(model_id)
        if entry is not None:
            self._seen[model_id] = entry
        device_bytes = entry.device_bytes if entry is not None else 0
        self._record_change(model_id, loaded_change(self.instance_id, _now_ms(), size_bytes, device_bytes))

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None:
        self._record_change(model_id, load_failed_change(self.instance_id, _now_ms(), error,
                                                         self._failure_expiry_ms))

    def model_unloaded(self, model_id: str, seconds: float) -> None:
        entry = self._seen.pop(model_id, None)
        last_used = entry.last_used_ms if entry is not None else 0
        self._record_change(model_id, unloaded_change(self.instance_id, last_used))

    def _record_change(self, model_id: str, change: Change) -> None:
        self._publisher.mark_changed()
        if self._started and not self._tasks.closed:
            self._writer.submit(model_id, change)
