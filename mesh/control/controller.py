"""The controller: leader-only background work on the fabric, one round at a time.

One round (`run_once`), from the watched view and the placement engine:

(a) scaling: `plan_scaling` -> more copies of hot models (`CacheMiss.add_copy`), fewer
    copies of cold ones while space is short (`unloadModel` on the instance), bounded
    per round;
(b) re-homing: claims on instances whose record is gone (lease expired) are removed
    from the model records (compare-and-set), and recently used models that lost
    copies get new ones (`plan_rehoming`: `ensure_loaded` when no copy is left, else
    `add_copy` where the plan says);
(c) hygiene: failure records past `expires_ms` and `loading` claims older than the
    loading timeout are removed;
(d) vmodel transitions: a target with a loaded copy becomes active; a target that fails
    to load marks the vmodel TRANSITION_FAILED (the active model keeps serving); a
    target with nothing loaded, loading or failed is loaded; models' `vmodel_refs` are
    repaired;
(e) copies of models that are no longer registered are unloaded.

Each step, and each model's work within a step, is isolated: an error is logged and
counted and the round goes on. Loads and unloads run as owned background tasks, at most
one piece of work per model at a time, so a slow load never holds up a round. Decisions
that race with other writers (routers' cache misses, the management API) are settled by
compare-and-set in etcd; orphan unloads and ref removals wait for a second round that
sees the same thing, so the view's lag never causes them.

The controller does not know about leadership: the caller (`mesh.cli.controller`) runs
`run()` only while it leads and closes the controller when leadership ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from mesh.control.cache_miss import CacheMiss
from mesh.domain.errors import LoadingFailed, ModelNotRegistered, NoCapacity
from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.domain.model_status import model_status
from mesh.domain.placement import Choice, PlacementConfig, plan_rehoming, plan_scaling
from mesh.domain.records import ModelRecord
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from mesh.state.vmodels import VModels
from protos import model_mesh_pb2 as mm

__all__ = ["Controller", "ControllerConfig", "ControllerMetrics", "RoundReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerConfig:
    interval_s: float = 5.0
    """Seconds between rounds when nothing changes (also the longest a change waits)."""
    debounce_s: float = 0.5
    """After a view change wakes the controller, wait this long for more changes (a burst of
    instance records after a restart is one round, not hundreds)."""
    max_adds_per_round: int = 8
    """Scale-up loads started per round; bounds the load storm after a spike or a restart."""
    max_removes_per_round: int = 8
    """Cold copies unloaded per round."""
    max_rehomes_per_round: int = 16
    """Re-homing loads started per round (the most recently used models first)."""
    load_timeout_s: float = 120.0
    """How long one background load may take before the controller gives up waiting for it."""
    unload_timeout_s: float = 30.0
    """Deadline of one unloadModel call."""
    timings: FabricTimings = DEFAULT_TIMINGS
    """The fabric's timings: a `loading` claim older than the loading timeout no longer counts and is removed."""
    scaling: bool = True
    """Add copies of hot models and trim cold ones (step a). Off: copies come only from cache
    misses and re-homing, and only the instances' LRU evicts."""
    claim_grace_ms: int = 5_000
    """A `loading` claim on an instance this controller does not see yet is kept this long
    (the instance may have joined an instant ago and the view lags)."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)


class ControllerMetrics:
    """The leader's metrics, on a registry passed in (created once per process).

    The fleet-wide gauges (`modelmesh_models_{managed,loaded,with_failure}_total`, ModelMesh's
    names) are exported only while this replica's term has set them and not closed, so one
    process in the fleet publishes them (dashboards take `max()`). The counters are meshserve's.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fleet: dict[str, float] | None = None  # None: not leading
        registry.register(_FleetGauges(self))
        self.copies_added = Counter("meshserve_controller_copies_added", "Copies added by scale-up.",
                                    registry=registry)
        self.copies_removed = Counter("meshserve_controller_copies_removed",
                                      "Copies removed (cold, or model unregistered).", registry=registry)
        self.copies_rehomed = Counter("meshserve_controller_copies_rehomed",
                                      "Copies loaded again after their instance left.", registry=registry)
        self.round_errors = Counter("meshserve_controller_errors", "Controller steps that failed.", registry=registry)

    def set_fleet(self, managed: int, loaded: int, with_failure: int) -> None:
        self.fleet = {"managed": managed, "loaded": loaded, "with_failure": with_failure}

    def stop_leading(self) -> None:
        self.fleet = None


_FLEET_GAUGES = {
    "managed": ("modelmesh_models_managed_total", "Models registered in the fabric."),
    "loaded": ("modelmesh_models_loaded_total", "Models with at least one loaded copy."),
    "with_failure": ("modelmesh_models_with_failure_total", "Models with a live load-failure record."),
}


class _FleetGauges:
    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return [GaugeMetricFamily(name, doc) for name, doc in _FLEET_GAUGES.values()]

    def collect(self):
        fleet = self._metrics.fleet
        if fleet is None:
            return
        for key, (name, doc) in _FLEET_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=fleet[key])


@dataclass
class RoundReport:
    """What one round decided (the background work it started may still be running)."""

    adds_started: int = 0
    removes_started: int = 0
    rehomes_started: int = 0
    claims_dropped: int = 0
    failures_expired: int = 0
    transitions_completed: int = 0
    transitions_failed: int = 0
    orphans_unloaded: int = 0
    refs_fixed: int = 0
    errors: int = 0
    skipped: bool = False  # the view was not in sync with etcd: nothing was decided


def _now_ms() -> int:
    return int(time.time() * 1000)


class Controller(AsyncClosing):
    """Background work for one fabric while its caller holds leadership.

    `run()` loops until cancelled: a round every `interval_s`, or sooner (debounced) when
    the view changes. `close()` cancels the loop and every load/unload it started (a load
    already running on an instance finishes there; its claim expires if nobody records it).
    """

    def __init__(self, client: EtcdClient, keys: Keys, view: FabricView, cache_miss: CacheMiss,
                 runtimes: RuntimeClients, registry: Registry, vmodels: VModels,
                 config: ControllerConfig = ControllerConfig(), *, metrics: ControllerMetrics | None = None,
                 clock: Callable[[], int] = _now_ms) -> None:
        self._client = client
        self._keys = keys
        self._view = view
        self._miss = cache_miss
        self._runtimes = runtimes
        self._registry = registry
        self._vmodels = vmodels
        self.config = config
        self._metrics = metrics
        self._clock = clock
        self._tasks = TaskSupervisor("controller")
        self._busy: dict[str, asyncio.Task] = {}  # work key (model id, or model@instance) -> task
        self._wake = asyncio.Event()
        self._unsubscribe = view.subscribe(self._wake.set)
        self._suspect_orphans: set[tuple[str, str]] = set()
        self._suspect_refs: set[tuple[str, str]] = set()
        self.rounds = 0
        self.totals: Tally[str] = Tally()

    async def close(self) -> None:
        if self._metrics is not None:
            self._metrics.stop_leading()  # the next leader publishes the fleet gauges
        self._unsubscribe()
        await self._tasks.close()

    # -- loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Rounds until cancelled; an unexpected error in a round is logged and the loop goes on."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            skipped = False
            try:
                skipped = (await self.run_once()).skipped
            except Exception:  # noqa: BLE001 - a bad round must not end leadership work
                log.exception("controller round failed")
                self._count_error()
            deadline = loop.time() + self.config.interval_s
            if skipped:  # right after a (re)connect: go as soon as the watches run again
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._view.wait_in_sync(None)
                    continue
                except TimeoutError:
                    continue
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                continue
            # Debounce: a burst of changes makes one round (a pause, not synchronisation).
            await asyncio.sleep(min(self.config.debounce_s, max(0.0, deadline - loop.time())))

    async def idle(self, timeout: float | None = None) -> None:
        """Wait until the background work started so far has finished (for tests and shutdown)."""
        async with asyncio.timeout(timeout):
            while self._busy:
                await asyncio.wait(list(self._busy.values()))

    @property
    def busy(self) -> frozenset[str]:
        return frozenset(self._busy)

    async def run_once(self) -> RoundReport:
        """One round of every step; returns what it decided."""
        report = RoundReport()
        if not self._view.in_sync:
            log.info("controller: view not in sync with etcd; skipping this round")
            report.skipped = True
            return report
        now = self._clock()
        snapshot = self._view.snapshot(now)
        # Re-homing decisions come from the claims before hygiene removes them.
        rehomes = plan_rehoming(snapshot, (), self._view.placement(self.config.placement))
        await self._step("hygiene", self._hygiene(now, report))
        await self._step("rehoming", self._rehome(rehomes, report))
        if self.config.scaling:
            await self._step("scaling", self._scale(report))
        await self._step("vmodels", self._transitions(now, report))
        await self._step("orphans", self._orphans(report))
        self._update_gauges(now)
        self.rounds += 1
        for name, value in dataclasses.asdict(report).items():
            self.totals[name] += value
        if report.errors and self._metrics:
            self._metrics.round_errors.inc(report.errors)
        return report

    async def _step(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:  # noqa: BLE001 - each step is isolated from the others
            log.exception("controller step %s failed", name)
            self._count_error()

    def _count_error(self) -> None:
        self.totals["errors"] += 1
        if self._metrics:
            self._metrics.round_errors.inc()

    def _start(self, key: str, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` in the background unless work under `key` is still running."""
        running = self._busy.get(key)
        if running is not None and not running.done():
            work.close()
            return False
        task = self._tasks.spawn(self._isolated(key, work), name=key)
        self._busy[key] = task
        task.add_done_callback(lambda t, k=key: self._busy.pop(k, None) if self._busy.get(k) is t else None)
        return True

    async def _isolated(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (LoadingFailed, NoCapacity, ModelNotRegistered, TimeoutError) as error:
            log.info("controller work %s did not complete: %s", key, error)
        except grpc.aio.AioRpcError as error:
            log.info("controller work %s: %s %s", key, error.code().name, error.details())
        except Exception:  # noqa: BLE001 - one model's failure must not affect others
            log.exception("controller work %s failed", key)
            self._count_error()

    def _model_busy(self, model_id: str) -> bool:
        return any(k == model_id or k.startswith(model_id + "@") for k in self._busy)

    # -- (c) hygiene and (b) stale claims ------------------------------------------------------
    async def _hygiene(self, now: int, report: RoundReport) -> None:
        live = self._view.all_instances()
        for model_id in self._view.model_ids():
            record = self._view.model(model_id)
            if record is None:
                continue
            stale = {i for i, claim in record.copies.items() if self._stale_claim(i, claim, live, model_id, now)}
            expired = {i for i, f in record.failures.items() if f.expires_ms <= now}
            if not stale and not expired:
                continue

            def change(r: ModelRecord, stale=stale, expired=expired) -> ModelRecord:
                return dataclasses.replace(
                    r, copies={i: c for i, c in r.copies.items() if i not in stale},
                    failures={i: f for i, f in r.failures.items() if not (i in expired and f.expires_ms <= now)})

            try:
                await self._registry.update(model_id, change)
            except ModelNotRegistered:
                continue
            except Exception:  # noqa: BLE001 - one model's record must not stop the others
                log.exception("controller: cleaning the record of %s failed", model_id)
                report.errors += 1
                continue
            report.claims_dropped += len(stale)
            report.failures_expired += len(expired)
            if stale:
                log.info("controller: dropped claims of %s on %s", model_id, ", ".join(sorted(stale)))

    def _stale_claim(self, instance_id: str, claim, live, model_id: str, now: int) -> bool:
        instance = live.get(instance_id)
        if instance is None:
            # Gone (lease expired), unless it is a fresh claim on an instance our view may not show yet.
            return claim.state != "loading" or now - claim.since_ms > self.config.claim_grace_ms
        if claim.state == "loading" and model_id not in instance.copies:
            return now - claim.since_ms > self.config.timings.loading_timeout_ms
        return False

    # -- (b) re-homing --------------------------------------------------------------------------
    async def _rehome(self, rehomes, report: RoundReport) -> None:
        started = 0
        for rehome in rehomes:
            if started >= self.config.max_rehomes_per_round:
                break
            if not isinstance(rehome.choice, Choice):
                log.warning("controller: no new home for %s (lost on %s): %s", rehome.model_id,
                            ", ".join(rehome.lost_from), rehome.choice.reason)
                continue
            model_id = rehome.model_id
            if self._model_busy(model_id):
                continue
            if self._view.loaded_on(model_id):
                work = self._add(model_id, rehome.choice.instance_id, rehomed=True)
            else:
                work = self._ensure(model_id, rehomed=True)
            if self._start(model_id, work):
                started += 1
                report.rehomes_started += 1

    async def _ensure(self, model_id: str, rehomed: bool = False) -> None:
        await self._miss.ensure_loaded(model_id, self.config.load_timeout_s)
        if rehomed and self._metrics:
            self._metrics.copies_rehomed.inc()

    async def _add(self, model_id: str, instance_id: str, rehomed: bool = False) -> None:
        if await self._miss.add_copy(model_id, instance_id, self.config.load_timeout_s) and self._metrics:
            (self._metrics.copies_rehomed if rehomed else self._metrics.copies_added).inc()

    # -- (a) scaling ----------------------------------------------------------------------------
    async def _scale(self, report: RoundReport) -> None:
        plan = plan_scaling(self._view.snapshot(self._clock()), self._view.placement(self.config.placement))
        for add in plan.adds:
            if report.adds_started >= self.config.max_adds_per_round:
                break
            if self._model_busy(add.model_id):
                continue
            if self._start(add.model_id, self._add(add.model_id, add.instance_id)):
                report.adds_started += 1
                log.info("controller: adding a copy of %s on %s (%s)", add.model_id, add.instance_id, add.reason)
        for remove in plan.removes:
            if report.removes_started >= self.config.max_removes_per_round:
                break
            if self._model_busy(remove.model_id):
                continue
            if self._start(f"{remove.model_id}@{remove.instance_id}", self._unload(remove.model_id, remove.instance_id)):
                report.removes_started += 1
                log.info("controller: removing the copy of %s on %s (%s)", remove.model_id, remove.instance_id,
                         remove.reason)

    async def _unload(self, model_id: str, instance_id: str) -> None:
        instance = self._view.instance(instance_id)
        if instance is None:
            return
        await self._runtimes.unload(instance.address, model_id, self.config.unload_timeout_s)
        if self._metrics:
            self._metrics.copies_removed.inc()

    # -- (d) vmodels ----------------------------------------------------------------------------
    async def _transitions(self, now: int, report: RoundReport) -> None:
        vmodels = {}
        for vmodel_id in self._view.vmodel_ids():
            vm = self._view.vmodel(vmodel_id)
            if vm is None:
                continue
            vmodels[vmodel_id] = vm
            if not vm.transitioning:
                continue
            try:
                vmodels[vmodel_id] = await self._transition(vm, now, report) or vm
            except Exception:  # noqa: BLE001 - one vmodel must not stop the others
                log.exception("controller: transition of vmodel %s failed", vmodel_id)
                report.errors += 1
        await self._repair_refs(vmodels, report)

    async def _repair_refs(self, vmodels: dict, report: RoundReport) -> None:
        """Make models' `vmodel_refs` match the vmodels that name them.

        A fix is made only when two rounds in a row saw the same mismatch: setVModel adds a
        ref just before it writes the vmodel and removes one just after, and our view lags
        etcd, so a single sighting may be a write in progress, not damage."""
        named: dict[str, set[str]] = {}
        for vm in vmodels.values():
            for model_id in {vm.active_model_id, vm.target_model_id}:
                named.setdefault(model_id, set()).add(vm.vmodel_id)
        suspects: set[tuple[str, str]] = set()
        for model_id in self._view.model_ids():
            record = self._view.model(model_id)
            if record is None:
                continue
            want, have = named.get(model_id, set()), set(record.vmodel_refs)
            mismatches = [("add", v) for v in sorted(want - have)]
            mismatches += [("drop", v) for v in sorted(have - want) if v not in vmodels]
            try:
                for kind, vmodel_id in mismatches:
                    key = (f"{kind}:{model_id}", vmodel_id)
                    if key not in self._suspect_refs:
                        suspects.add(key)
                    elif kind == "add":
                        await self._vmodels.add_ref(model_id, vmodel_id)
                        report.refs_fixed += 1
                    else:
                        await self._vmodels.drop_ref(model_id, vmodel_id)
                        report.refs_fixed += 1
            except ModelNotRegistered:
                continue
            except Exception:  # noqa: BLE001
                log.exception("controller: repairing the vmodel refs of %s failed", model_id)
                report.errors += 1
        self._suspect_refs = suspects

    async def _transition(self, vm, now: int, report: RoundReport):
        """Move the vmodel on if it can; returns its new record when it wrote one."""
        target = vm.target_model_id
        if self._view.loaded_on(target):
            done = await self._vmodels.complete_transition(vm.vmodel_id, target)
            if done is not None:
                report.transitions_completed += 1
                log.info("controller: vmodel %s now serves %s", vm.vmodel_id, target)
            return done
        record = self._view.model(target)
        if record is None:
            failed = await self._vmodels.fail_transition(vm.vmodel_id, target, f"target model '{target}' is not registered")
            if failed:
                report.transitions_failed += 1
            return failed
        status = model_status(record, self._view.copies_of(target), now, self.config.timings.loading_timeout_ms)
        if status.status == mm.ModelStatusInfo.LOADING_FAILED:
            reason = f"target model '{target}' failed to load: " + "; ".join(status.errors)
            failed = await self._vmodels.fail_transition(vm.vmodel_id, target, reason)
            if failed:
                report.transitions_failed += 1
                log.warning("controller: vmodel %s: %s", vm.vmodel_id, reason)
            return failed
        if status.status == mm.ModelStatusInfo.NOT_LOADED and not vm.failure and not self._model_busy(target):
            self._start(target, self._ensure(target))
        return None

    # -- (e) orphans ----------------------------------------------------------------------------
    async def _orphans(self, report: RoundReport) -> None:
        registered = set(self._view.model_ids())
        seen: set[tuple[str, str]] = set()
        for instance_id, instance in self._view.all_instances().items():
            for model_id, copy in instance.copies.items():
                if model_id in registered or copy.loading:
                    continue
                pair = (model_id, instance_id)
                seen.add(pair)
                if pair in self._suspect_orphans and self._start(f"{model_id}@{instance_id}",
                                                                 self._unload(model_id, instance_id)):
                    report.orphans_unloaded += 1
                    log.info("controller: unloading %s from %s (not registered)", model_id, instance_id)
        self._suspect_orphans = seen

    # -- metrics --------------------------------------------------------------------------------
    def _update_gauges(self, now: int) -> None:
        if self._metrics is None:
            return
        ids = self._view.model_ids()
        failed = 0
        for m in ids:
            record = self._view.model(m)
            if record is not None and record.live_failures(now):
                failed += 1
        self._metrics.set_fleet(len(ids), sum(1 for m in ids if self._view.loaded_on(m)), failed)
