"""`FabricView`: typed, watched copies of a fabric's models, vmodels, instances and config.

Every process that decides something about placement (instance agents, the controller,
routers, the management API) reads the fabric through one of these: reads never touch
etcd and never block; records are decoded once per change, and an index from model id to
the instances holding it is kept up to date as instance records change, so "where is
model X loaded" costs a dict lookup, not a scan.

Dynamic config: `config/placement` holds overrides of `PlacementConfig` fields (JSON
object, e.g. `{"scale_up_rate_per_copy": 600}`); `placement(defaults)` applies them, so
the controller and cache misses pick a change up on their next decision, without a
restart. An invalid document is logged and ignored (the defaults stay in force).

A stored document that is not a valid record is logged and treated as absent (one bad
record must not take a process down). Views lag etcd by the watch latency; decisions
that must be exact are confirmed by compare-and-set on the revision (`model_revision`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import TypeVar

from mesh.etcd.client import EtcdClient
from mesh.etcd.errors import StoreClosed
from mesh.etcd.mirror import Change, Mirror
from mesh.etcd.keys import Keys
from mesh.domain.placement import ModelView, PlacementConfig, Snapshot
from mesh.domain.records import HeldCopy, InstanceRecord, ModelRecord, RecordError, VModelRecord, from_document
from mesh.aio.tasks import AsyncClosing

__all__ = ["PLACEMENT_CONFIG", "FabricView", "placement_with"]

#: Name under `config/` of the placement overrides.
PLACEMENT_CONFIG = "placement"

log = logging.getLogger(__name__)

T = TypeVar("T")


class FabricView(AsyncClosing):
    """Mirrors of `models/`, `vmodels/` and `instances/` with decoded records.

    Use `async with FabricView(client, keys) as view: await view.wait_ready(10)`.
    `wait_for(predicate, timeout)` re-evaluates `predicate()` after every change in any
    of the three mirrors (woken by the watches, no polling).
    """

    def __init__(self, client: EtcdClient, keys: Keys) -> None:
        self.keys = keys
        self.models = Mirror(client, keys.models, name="models")
        self.vmodels = Mirror(client, keys.vmodels, name="vmodels")
        self.instances = Mirror(client, keys.instances, name="instances")
        self.config = Mirror(client, keys.config, name="config")
        self._placement: tuple[int, PlacementConfig, PlacementConfig] | None = None  # (revision, defaults, result)
        self._models: dict[str, tuple[ModelRecord, int]] = {}
        self._vmodels: dict[str, tuple[VModelRecord, int]] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._holders: dict[str, dict[str, HeldCopy]] = {}  # model id -> instance id -> copy
        self._changed = asyncio.Event()
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self.models.subscribe(self._on_models)
        self.vmodels.subscribe(self._on_vmodels)
        self.instances.subscribe(self._on_instances)
        self._mirrors = (self.models, self.vmodels, self.instances, self.config)
        for mirror in self._mirrors:
            mirror.subscribe(self._wake)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        for mirror in self._mirrors:
            await mirror.start()

    async def __aenter__(self):
        await self.start()
        return self

    async def close(self) -> None:
        self._closed = True
        for mirror in self._mirrors:
            await mirror.close()
        self._wake(())

    async def wait_ready(self, timeout: float | None) -> None:
        """Wait for the first sync of all three mirrors; raises TimeoutError."""
        async with asyncio.timeout(timeout):
            for mirror in self._mirrors:
                await mirror.ready.wait()

    @property
    def in_sync(self) -> bool:
        """Every mirror is watching (False while one re-syncs after a break)."""
        return all(mirror.in_sync for mirror in self._mirrors)

    def is_ready(self) -> bool:
        """Every mirror has read etcd at least once (stays true while etcd is away)."""
        return all(mirror.ready.is_set() for mirror in self._mirrors)

    async def wait_in_sync(self, timeout: float | None) -> None:
        """Until every mirror is watching again; TimeoutError."""
        async with asyncio.timeout(timeout):
            for mirror in self._mirrors:
                await mirror.wait_for(lambda m: m.in_sync, None)

    # -- reads --------------------------------------------------------------------------
    def model(self, model_id: str) -> ModelRecord | None:
        found = self._models.get(model_id)
        return found[0] if found else None

    def model_revision(self, model_id: str) -> int:
        """The mod revision of the model's record as mirrored (0: absent)."""
        found = self._models.get(model_id)
        return found[1] if found else 0

    def model_ids(self) -> list[str]:
        return list(self._models)

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        found = self._vmodels.get(vmodel_id)
        return found[0] if found else None

    def vmodel_revision(self, vmodel_id: str) -> int:
        found = self._vmodels.get(vmodel_id)
        return found[1] if found else 0

    def vmodel_ids(self) -> list[str]:
        return list(self._vmodels)

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    def all_instances(self) -> dict[str, InstanceRecord]:
        return dict(self._instances)

    def resolve(self, name: str) -> str:
        """The concrete model id for `name`: a vmodel's active model, else `name` itself."""
        found = self._vmodels.get(name)
        return found[0].active_model_id if found else name

    def copies_of(self, model_id: str) -> dict[str, HeldCopy]:
        """instance id -> copy, for every live instance that holds or is loading the model."""
        return dict(self._holders.get(model_id, {}))

    def loaded_on(self, model_id: str) -> list[str]:
        """Instances with a loaded copy that take requests (not loading, not shutting down)."""
        holders = self._holders.get(model_id)
        if not holders:
            return []
        return [i for i, copy in holders.items()
                if not copy.loading and not self._instances[i].shutting_down]

    def rate_per_min(self, model_id: str) -> float:
        """The model's request rate summed over its copies, as the instances last published it."""
        return sum(copy.rate_per_min for copy in self._holders.get(model_id, {}).values())

    def model_view(self, record: ModelRecord) -> ModelView:
        """The model as the placement engine sees it, with live rate and last-used time."""
        last_used = max([record.last_used_ms, *(c.last_used_ms for c in self._holders.get(record.model_id, {}).values())])
        return replace(record.to_view(self.rate_per_min(record.model_id)), last_used_ms=last_used or None)

    def snapshot(self, now_ms: int) -> Snapshot:
        """The whole fabric for the placement engine (O(models + copies); not for the request path)."""
        return Snapshot(now_ms, tuple(r.to_view() for r in self._instances.values()),
                        {m: self.model_view(r) for m, (r, _) in self._models.items()})

    def placement(self, defaults: PlacementConfig) -> PlacementConfig:
        """`defaults` with the overrides stored at `config/placement` (decoded once per change)."""
        entry = self.config.get(PLACEMENT_CONFIG)
        revision = entry.mod_revision if entry is not None else 0
        cached = self._placement
        if cached is not None and cached[0] == revision and cached[1] is defaults:
            return cached[2]
        result = defaults
        if entry is not None:
            try:
                result = placement_with(defaults, entry.value)
            except ValueError as error:
                log.warning("ignoring %s%s: %s", self.keys.config, PLACEMENT_CONFIG, error)
        self._placement = (revision, defaults, result)
        return result

    # -- waiting ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` after every batch of changes (quick, non-blocking)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_for(self, predicate: Callable[[], T], timeout: float | None) -> T:
        """Wait until `predicate()` is truthy and return it; TimeoutError, or StoreClosed
        if the view closes."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                if self._closed:
                    raise StoreClosed("fabric view closed")
                await self._changed.wait()

    def _wake(self, _changes: Sequence[Change]) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - one bad listener must not stop the others
                log.exception("fabric view listener %r failed", listener)

    # -- keeping the decoded records ------------------------------------------------------
    def _on_models(self, changes: Sequence[Change]) -> None:
        _apply(changes, self._models, ModelRecord, self.keys.models)

    def _on_vmodels(self, changes: Sequence[Change]) -> None:
        _apply(changes, self._vmodels, VModelRecord, self.keys.vmodels)

    def _on_instances(self, changes: Sequence[Change]) -> None:
        for change in changes:
            old = self._instances.pop(change.name, None)
            if old is not None:
                for model_id in old.copies:
                    holders = self._holders.get(model_id)
                    if holders is not None:
                        holders.pop(change.name, None)
                        if not holders:
                            del self._holders[model_id]
            if change.entry is None:
                continue
            record = _decode(InstanceRecord, change.entry.value, self.keys.instances + change.name)
            if record is None:
                continue
            self._instances[change.name] = record
            for model_id, copy in record.copies.items():
                self._holders.setdefault(model_id, {})[change.name] = copy


def placement_with(defaults: PlacementConfig, overrides: object) -> PlacementConfig:
    """`defaults` with `overrides` (a JSON object of PlacementConfig fields); ValueError
    naming what is wrong (not an object, an unknown field, a bad value)."""
    if not isinstance(overrides, dict):
        raise ValueError("must be a JSON object of placement settings")
    known = {f.name: f for f in fields(PlacementConfig)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in overrides.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or (value is None and name == "max_copies_per_model")):
            raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return replace(defaults, **overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error)) from None


def _decode(kind, document, key: str):
    try:
        return from_document(kind, document, key)
    except (RecordError, ValueError) as error:
        log.warning("ignoring a malformed record: %s", error)
        return None


def _apply(changes: Sequence[Change], into: dict, kind, prefix: str) -> None:
    """Keep `into[name] = (record, mod_revision)` in step with the mirror's changes."""
    for change in changes:
        if change.entry is None:
            into.pop(change.name, None)
            continue
        record = _decode(kind, change.entry.value, prefix + change.name)
        if record is None:
            into.pop(change.name, None)
        else:
            into[change.name] = (record, change.entry.mod_revision)
