"""The cache-miss protocol: get a registered model loaded somewhere, exactly once.

`ensure_loaded(model_id, timeout)` returns the instances that hold a loaded copy. When
there is none:

1. run the placement engine on the watched view (no etcd read);
2. claim the load with a compare-and-set on the model record's revision, writing
   `copies[instance] = loading`; of any number of concurrent callers, in any number of
   processes, one wins, and the others see the claim and wait;
3. the winner asks the chosen instance to load (its agent evicts LRU copies to make
   room); the loadModel call returns when the copy is loaded;
4. waiters are woken by the watch (the instance publishes the copy, or the claim
   changes), never by polling;
5. a failed load is recorded in the model record (reason, expiry) and another instance
   is tried, at most `max_load_attempts` per call; instances with a live failure record
   are not tried again until it expires, so a broken model is not retried in a loop;
6. a model whose type needs runtime labels that no live instance advertises fails at once
   with `NoSupportingRuntime` (naming the labels), rather than waiting for room; with no
   live instance at all, with `NoLiveInstance` (UNAVAILABLE: a runtime must join).

A claim whose instance is gone (lease expired) or that is older than the loading
timeout no longer counts; the controller removes such claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc

from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.domain.errors import LoadingFailed, ModelNotRegistered, NoCapacity, NoLiveInstance, NoSupportingRuntime
from mesh.domain.placement import NoFit, PlacementConfig, choose_instance
from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.domain.records import CopyClaim, LoadFailure, ModelRecord, to_document
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.aio.tasks import AsyncClosing, TaskSupervisor

__all__ = ["CacheMiss", "LoadingFailed", "MissConfig", "NoCapacity", "NoLiveInstance", "NoSupportingRuntime"]

log = logging.getLogger(__name__)

_NOT_THE_MODELS_FAULT = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                                   grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

#: How long a successful claimer waits for the instance's record to show the new copy.
_PUBLISH_WAIT_S = 2.0


@dataclass(frozen=True)
class MissConfig:
    max_load_attempts: int = 3
    timings: FabricTimings = DEFAULT_TIMINGS
    placement: PlacementConfig = field(default_factory=PlacementConfig)


def _now_ms() -> int:
    return int(time.time() * 1000)


class CacheMiss(AsyncClosing):
    """Loads models on demand; one per process, shared by every caller."""

    def __init__(self, client: EtcdClient, keys: Keys, view: FabricView, runtimes: RuntimeClients,
                 config: MissConfig = MissConfig(), *, clock: Callable[[], int] = _now_ms) -> None:
        self._client = client
        self._keys = keys
        self._view = view
        self._runtimes = runtimes
        self._registry = Registry(client, keys)
        self.config = config
        self._clock = clock
        self._tasks = TaskSupervisor("cache-miss")
        self._loads: dict[tuple[str, str], asyncio.Task[tuple[str, bool] | None]] = {}

    async def close(self) -> None:
        """Cancel loads still running (their instances finish or drop them on their own)."""
        await self._tasks.close()

    # -- the protocol --------------------------------------------------------------------
    async def ensure_loaded(self, model_id: str, timeout: float) -> list[str]:
        """Ids of instances holding a loaded copy, loading one first if there is none.

        Raises ModelNotRegistered, LoadingFailed, NoLiveInstance (the fabric has none),
        NoSupportingRuntime (no live instance has the labels its type needs), NoCapacity, or TimeoutError when `timeout` seconds pass
        first (a load already started goes on).
        """
        loaded = self._view.loaded_on(model_id)
        if loaded:
            return loaded
        async with asyncio.timeout(timeout):
            return await self._ensure(model_id)

    async def _ensure(self, model_id: str) -> list[str]:
        await self._view.wait_ready(None)
        tried: dict[str, str] = {}  # instances whose load failed this call: the model's fault
        refused: set[str] = set()  # full or unreachable just now: try others, then wait for room
        attempts = 0
        while True:
            record = self._view.model(model_id) or await self._catch_up(model_id)
            revision = self._view.model_revision(model_id)
            loaded = self._view.loaded_on(model_id)
            if loaded:
                return loaded
            now = self._clock()
            pending = self.pending_claims(record, now)
            if pending:
                await self._wait_for_change(model_id, revision, pending)
                continue
            failures = {i: f.reason for i, f in record.live_failures(now).items()}
            failures.update(tried)
            if attempts >= self.config.max_load_attempts:
                raise LoadingFailed(model_id, failures)
            model = self._view.model_view(record)
            choice = choose_instance(model, self._live_instance_views(), self._view.placement(self.config.placement),
                                     exclude=failures.keys() | refused)
            if isinstance(choice, NoFit):
                if choice.no_instances:
                    raise NoLiveInstance(model_id)
                if choice.unsupported:
                    raise NoSupportingRuntime(model_id, model.labels)
                if refused or choice.for_room:
                    # Every instance is busy or full just now: wait for one of them to change
                    # (a request finishing, a copy going), bounded by the caller's deadline.
                    await self._wait_for_instances(model_id)
                    refused.clear()
                    continue
                if failures:
                    raise LoadingFailed(model_id, failures)
                raise NoCapacity(f"cannot load '{model_id}': {choice.reason}")
            if not await self._claim(record, revision, choice.instance_id, now):
                await self._view.wait_for(lambda: self._view.model_revision(model_id) != revision, None)
                continue
            outcome = await self._load(record, choice.instance_id)
            if outcome is None:
                return await self._published(model_id, choice.instance_id)
            reason, blameless = outcome
            if blameless:
                refused.add(choice.instance_id)
            else:
                tried[choice.instance_id] = reason
                attempts += 1

    async def add_copy(self, model_id: str, instance_id: str, timeout: float) -> bool:
        """Claim and load one more copy on `instance_id` (scale-up, re-homing).

        False if the claim was lost (the record changed, or the instance already has a
        copy or claim); raises LoadingFailed if the load fails, TimeoutError.
        """
        async with asyncio.timeout(timeout):
            record = self._view.model(model_id) or await self._catch_up(model_id)
            if instance_id in record.copies or instance_id in self._view.copies_of(model_id):
                return False
            if not await self._claim(record, self._view.model_revision(model_id), instance_id, self._clock()):
                return False
            outcome = await self._load(record, instance_id)
            if outcome is not None:
                raise LoadingFailed(model_id, {instance_id: outcome[0]})
            return True

    async def scale_up(self, model_id: str) -> str | None:
        """One more copy of a model whose copies refuse requests (backpressure, reported by a
        router): on the instance placement chooses among those without one (LRU eviction
        allowed, as for a scale-up by rate). Nothing when a load of it is under way, it has
        no copy (the next call loads one), it has `max_copies_per_model`, or nothing fits.
        The instance that got the copy, or None; LoadingFailed, TimeoutError (the loading
        timeout)."""
        record = self._view.model(model_id)
        holders = self._view.loaded_on(model_id)
        if record is None or not holders or self.pending_claims(record, self._clock()):
            return None
        placement = self._view.placement(self.config.placement)
        if placement.max_copies_per_model is not None and len(holders) >= placement.max_copies_per_model:
            return None
        failures = record.live_failures(self._clock())
        choice = choose_instance(self._view.model_view(record), self._live_instance_views(), placement,
                                 exclude=failures.keys())
        if isinstance(choice, NoFit):
            log.info("model %s is saturated but gets no copy more: %s", model_id, choice.reason)
            return None
        log.info("model %s is saturated: one copy more on %s", model_id, choice.instance_id)
        added = await self.add_copy(model_id, choice.instance_id, self.config.timings.loading_timeout_ms / 1000)
        return choice.instance_id if added else None

    def pending_claims(self, record: ModelRecord, now_ms: int) -> frozenset[str]:
        """Instances that are loading the model now: a fresh `loading` claim on a live
        instance, a copy the instance itself publishes as loading, or a `loaded` claim the
        instance has not published yet."""
        pending = {i for i, copy in self._view.copies_of(record.model_id).items() if copy.loading}
        for instance_id, claim in record.copies.items():
            instance = self._view.instance(instance_id)
            if instance is None or instance.shutting_down:
                continue
            if claim.state == "loading" and now_ms - claim.since_ms < self.config.timings.loading_timeout_ms:
                pending.add(instance_id)
            elif claim.state == "loaded" and instance.published_ms <= claim.since_ms:
                # Loaded, but the instance has not published since (both times are its own
                # clock): its record will show the copy in a moment.
                pending.add(instance_id)
        return frozenset(pending)

    async def _drop_claim(self, model_id: str, instance_id: str, failure_reason: str | None) -> None:
        """Drop the instance's `loading` claim after a failed load, recording why when the
        model was at fault (the failure expires later). A no-op when the claim is already
        gone: the instance's agent, which saw the failure too, got there first."""
        now = self._clock()

        def change(record: ModelRecord) -> ModelRecord:
            claim = record.copies.get(instance_id)
            if claim is None or claim.state != "loading":
                return record
            copies = {i: c for i, c in record.copies.items() if i != instance_id}
            if failure_reason is None:
                return replace(record, copies=copies)
            failure = LoadFailure(failure_reason, now, now + self.config.timings.failure_expiry_ms)
            return replace(record, copies=copies, failures={**record.failures, instance_id: failure})

        try:
            await self._registry.update(model_id, change)
        except ModelNotRegistered:
            pass

    # -- steps ---------------------------------------------------------------------------
    async def _catch_up(self, model_id: str) -> ModelRecord:
        """The record of a model the view does not show: maybe registered a moment ago, so
        ask etcd once and wait for the view to reach that revision (read-your-writes)."""
        found = await self._registry.get(model_id)
        if found is None:
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        await self._view.models.wait_for_revision(found[1], None)
        record = self._view.model(model_id)
        if record is None:  # unregistered again meanwhile
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        return record

    def _live_instance_views(self):
        return [record.to_view() for record in self._view.all_instances().values()]

    async def _claim(self, record: ModelRecord, revision: int, instance_id: str, now_ms: int) -> bool:
        claimed = replace(record, copies={**record.copies, instance_id: CopyClaim("loading", now_ms)})
        result = await self._client.put_if_mod_revision(self._keys.model(record.model_id),
                                                        to_document(claimed), revision)
        return result.won

    async def _load(self, record: ModelRecord, instance_id: str) -> tuple[str, bool] | None:
        """Ask the instance to load; None on success, else why and whether it was not the
        model's fault (full, unreachable: no failure record) or was (recorded).

        The load runs as an owned task, so a caller whose deadline passes stops waiting
        but the load goes on and serves the next call (it is not torn down half way).
        """
        key = (record.model_id, instance_id)
        task = self._loads.get(key)
        if task is None:
            task = self._tasks.spawn(self._load_now(record, instance_id), name=f"load {record.model_id} on {instance_id}")
            self._loads[key] = task
            task.add_done_callback(lambda _: self._loads.pop(key, None))
        return await asyncio.shield(task)

    async def _load_now(self, record: ModelRecord, instance_id: str) -> tuple[str, bool] | None:
        instance = self._view.instance(instance_id)
        if instance is None:  # not the model's fault: try another instance
            await self._drop_claim(record.model_id, instance_id, None)
            return "the instance left the fabric before the load began", True
        started = time.perf_counter()
        try:
            # Bounded by the loading timeout, not by any caller's deadline.
            await self._runtimes.load(instance.address, record, self.config.timings.loading_timeout_ms / 1000)
            log.info("loaded %s on %s in %.3fs", record.model_id, instance_id, time.perf_counter() - started)
            return None
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
            if error.code() in _NOT_THE_MODELS_FAULT:
                # The instance was full or unreachable: try another, but leave no failure
                # record that would keep this model off the instance for minutes.
                log.info("load of %s on %s refused: %s", record.model_id, instance_id, reason)
                await self._drop_claim(record.model_id, instance_id, None)
                return reason, True
        log.warning("load of %s on %s failed: %s", record.model_id, instance_id, reason)
        await self._drop_claim(record.model_id, instance_id, reason)
        return reason, False

    async def _wait_for_instances(self, model_id: str) -> None:
        """Until any instance record changes or the model is loaded somewhere (watch-driven)."""
        revision = self._view.instances.revision
        await self._view.wait_for(lambda: self._view.instances.revision != revision or self._view.loaded_on(model_id),
                                  None)

    async def _published(self, model_id: str, instance_id: str) -> list[str]:
        """After a successful load: the holders once the view shows the copy (briefly waited for)."""
        try:
            return await self._view.wait_for(lambda: self._view.loaded_on(model_id), _PUBLISH_WAIT_S)
        except TimeoutError:
            return [instance_id]

    async def _wait_for_change(self, model_id: str, revision: int, pending: frozenset[str]) -> None:
        def changed() -> bool:
            if self._view.loaded_on(model_id) or self._view.model_revision(model_id) != revision:
                return True
            record = self._view.model(model_id)
            return record is None or self.pending_claims(record, self._clock()) != pending

        # A claim older than the loading timeout stops counting even if nothing changes.
        record = self._view.model(model_id)
        oldest = min((c.since_ms for i, c in record.copies.items() if i in pending), default=self._clock())
        expires_in = max(0.0, (oldest + self.config.timings.loading_timeout_ms - self._clock()) / 1000) + 0.01
        try:
            await self._view.wait_for(changed, expires_in)
        except TimeoutError:
            pass
