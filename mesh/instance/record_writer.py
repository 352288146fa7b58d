"""This instance's changes to model records: what each lifecycle event changes, and the one
writer that applies the changes in order.

Guarantees:
- `submit()` never blocks or raises (the lifecycle hooks call it on the request path);
  `ModelRecordWriter.run()` applies the changes one at a time, in the order submitted;
- a `StoreUnavailable` write is retried `attempts` times with backoff, then kept; every
  later change of that model is kept behind it, and `resync()` (called once etcd is
  reachable again) replays the kept changes in order, ahead of anything submitted after;
- a model that is not registered (loaded through the bare SPI) is skipped; a write that
  cannot succeed (a conflict, a corrupt record) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mesh.aio.backoff import Backoff
from mesh.domain.records import CopyClaim, LoadFailure, ModelRecord, RecordError
from mesh.etcd.errors import StoreClosed, StoreError, StoreUnavailable
from mesh.state.registry import ModelNotRegistered, Registry, RegistryConflict
from runtimes.errors import CapacityExhausted, LoadFailed

__all__ = ["Change", "ModelRecordWriter", "earlier_run_claim_change", "has_earlier_runs_claim", "load_failed_change",
           "loaded_change", "unloaded_change"]

log = logging.getLogger(__name__)

Change = Callable[[ModelRecord], ModelRecord]
_RESYNC = object()  # queue item: retry the writes kept while etcd was unreachable
# Short: a write that still fails after a few tries is kept for the replay, so these retries
# only ride out a blip (0.4 s doubling up to 2 s, jittered so that instances that lost etcd
# together do not retry in lockstep).
_BACKOFF = Backoff(initial_s=0.4, max_s=2.0)


def loaded_change(instance_id: str, now_ms: int, size_bytes: int, device_bytes: int = 0) -> Change:
    """The instance claims a loaded copy, with its measured size (host and GPU bytes), and its
    failure is forgotten."""

    def change(record: ModelRecord) -> ModelRecord:
        failures = {i: f for i, f in record.failures.items() if i != instance_id}
        return replace(record, copies={**record.copies, instance_id: CopyClaim("loaded", now_ms)},
                       size_estimate_bytes=size_bytes, device_size_estimate_bytes=device_bytes, failures=failures)

    return change


def load_failed_change(instance_id: str, now_ms: int, error: BaseException, failure_expiry_ms: int) -> Change:
    """The instance drops its claim and, when the model is to blame, records the failure."""
    # A load cut off by shutdown or cancellation, or refused for want of room (or a
    # transient fetch error), says nothing about the model: no failure record that would
    # keep it off this instance for minutes.
    blameless = not isinstance(error, Exception) or isinstance(error, CapacityExhausted) or (
        isinstance(error, LoadFailed) and error.retryable)
    failure = None if blameless else LoadFailure(str(error) or type(error).__name__, now_ms,
                                                 now_ms + failure_expiry_ms)

    def change(record: ModelRecord) -> ModelRecord:
        copies = {i: c for i, c in record.copies.items() if i != instance_id}
        failures = {**record.failures, instance_id: failure} if failure is not None else record.failures
        return replace(record, copies=copies, failures=failures)

    return change


def unloaded_change(instance_id: str, last_used_ms: int) -> Change:
    """The instance drops its claim; the model's last use keeps the later of the two."""

    def change(record: ModelRecord) -> ModelRecord:
        copies = {i: c for i, c in record.copies.items() if i != instance_id}
        return replace(record, copies=copies, last_used_ms=max(record.last_used_ms, last_used_ms))

    return change


def has_earlier_runs_claim(record: ModelRecord, instance_id: str, started_ms: int) -> bool:
    """Whether the record holds a `loading` claim on the instance's id made before it started."""
    claim = record.copies.get(instance_id)
    return claim is not None and claim.state == "loading" and claim.since_ms < started_ms


def earlier_run_claim_change(instance_id: str, started_ms: int) -> Change:
    """The instance drops a `loading` claim on its id made before it started: an earlier run
    under the same id died mid-load and no one will finish it (callers would wait on it for
    the whole loading timeout). A claim made since is left alone."""

    def change(record: ModelRecord) -> ModelRecord:
        if not has_earlier_runs_claim(record, instance_id, started_ms):
            return record
        return replace(record, copies={i: c for i, c in record.copies.items() if i != instance_id})

    return change


class ModelRecordWriter:
    """The one writer of this instance's model record changes, in the order they happened."""

    def __init__(self, registry: Registry, *, attempts: int) -> None:
        self._registry = registry
        self._attempts = max(1, attempts)
        self._writes: asyncio.Queue[Any] = asyncio.Queue()  # (model id, change) or _RESYNC
        self._unsynced: list[tuple[str, Change]] = []  # writes that failed, replayed after reconnecting
        self._unsynced_ids: set[str] = set()

    @property
    def queued(self) -> int:
        """Submitted items not taken by the writer yet."""
        return self._writes.qsize()

    def submit(self, model_id: str, change: Change) -> None:
        self._writes.put_nowait((model_id, change))

    def resync(self) -> None:
        """Ask the writer to retry the kept writes; it does so in order, before what follows."""
        if self._unsynced:
            self._writes.put_nowait(_RESYNC)

    async def flush(self) -> None:
        """Until everything submitted so far has been written, kept or dropped."""
        await self._writes.join()

    async def run(self) -> None:
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
        for attempt in range(1, self._attempts + 1):
            try:
                await self._registry.update(model_id, change)
                return
            except ModelNotRegistered:
                log.debug("model %s is not registered; its record is not updated", model_id)
                return
            except StoreUnavailable as error:
                if attempt == self._attempts:
                    # Kept, and written again once the agent reaches etcd (next registration).
                    log.warning("model %s: record update failed %d times (%s); will retry after reconnecting",
                                model_id, attempt, error)
                    self._keep(model_id, change)
                    return
                log.info("model %s: record update failed (%s); retrying", model_id, error)
                await _BACKOFF.pause(attempt)
            except StoreClosed:
                return
            except (StoreError, RegistryConflict, RecordError) as error:
                log.error("model %s: cannot update its record: %s", model_id, error)
                return

    def _keep(self, model_id: str, change: Change) -> None:
        self._unsynced.append((model_id, change))
        self._unsynced_ids.add(model_id)
