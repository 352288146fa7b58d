"""vmodels (aliases) in etcd: set, delete, and the transition from active to target model.

A `VModelRecord` at `vmodels/<id>` names an active model (the one requests go to) and a
target model. ModelMesh's transition rule, kept here and driven by the controller:

- while target != active the active model keeps serving;
- once the target has a loaded copy, `complete_transition` sets active := target in one
  compare-and-set;
- if the target cannot be loaded, `fail_transition` records why (TRANSITION_FAILED) and
  the active model keeps serving until the next `set`;
- `force` switches at once, and a new vmodel starts with active == target.

Every model a vmodel names (active or target) lists the vmodel in its `vmodel_refs`, so
`Registry.unregister` refuses it while in use. Refs are added before the vmodel record
names the model and removed after it stops naming it, so a crash in between can leave a
stale ref (refusing an unregister) but never a missing one; the controller repairs
refs (`add_ref` / `drop_ref`). A model registered through `set` with
`auto_delete_target` is unregistered once no vmodel refers to it any more.

Writes are compare-and-set on the record's mod revision, retried with a fresh read.
Store errors (`StoreUnavailable`...) pass through.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.domain.errors import PreconditionFailed, VModelNotFound
from mesh.domain.records import ModelRecord, VModelRecord, from_document, to_document
from mesh.state.registry import MAX_CAS_ATTEMPTS, ModelInUse, ModelNotRegistered, Registry, RegistryConflict, read_records

__all__ = ["PreconditionFailed", "VModelChange", "VModelNotFound", "VModels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VModelChange:
    """A setVModel request in domain terms (see `VModels.set`)."""

    vmodel_id: str
    target_model_id: str
    update_only: bool = False
    model: ModelRecord | None = None  # register the target with this record first (modelInfo)
    auto_delete_target: bool = False
    force: bool = False
    expected_target_model_id: str = ""
    owner: str = ""


class VModels:
    """vmodel records under `keys.vmodels`; see the module docstring for the guarantees."""

    def __init__(self, client: EtcdClient, keys: Keys, registry: Registry | None = None) -> None:
        self._client = client
        self._keys = keys
        self.registry = registry or Registry(client, keys)

    # -- reads ----------------------------------------------------------------------------
    async def get(self, vmodel_id: str) -> tuple[VModelRecord, int] | None:
        key = self._keys.vmodel(vmodel_id)
        kv = await self._client.get(key)
        if kv is None:
            return None
        return from_document(VModelRecord, kv.value, key), kv.mod_revision

    async def list(self) -> dict[str, VModelRecord]:
        """Every vmodel (a range read; corrupt records are skipped)."""
        return {r.vmodel_id: r for r in await read_records(self._client, self._keys.vmodels, VModelRecord)}

    # -- set / delete ---------------------------------------------------------------------
    async def set(self, change: VModelChange) -> VModelRecord:
        """Create the vmodel or move its target (ModelMesh's setVModel).

        Raises VModelNotFound (`update_only` and no vmodel), PreconditionFailed (owner or
        expected target mismatch), ModelNotRegistered (target unknown and no `model`),
        ModelAlreadyRegistered (`model` differs from the registered one), RegistryConflict.
        """
        target = change.target_model_id
        if change.model is not None:
            if change.model.model_id != target:
                raise ValueError("the model to register must have the target model's id")
            await self.registry.register(dataclasses.replace(change.model, auto_delete=change.auto_delete_target))
        key = self._keys.vmodel(change.vmodel_id)
        # The ref goes on first: from here on the target cannot be unregistered under us.
        await self._add_ref(target, change.vmodel_id)
        written: tuple[VModelRecord | None, VModelRecord] | None = None
        try:
            for _ in range(MAX_CAS_ATTEMPTS):
                current = await self.get(change.vmodel_id)
                if current is None:
                    if change.update_only:
                        raise VModelNotFound(f"vmodel '{change.vmodel_id}' does not exist (updateOnly is set)")
                    if change.expected_target_model_id:
                        raise PreconditionFailed(
                            f"vmodel '{change.vmodel_id}' does not exist, expected target "
                            f"'{change.expected_target_model_id}'")
                    new = VModelRecord(change.vmodel_id, target, target, change.owner, change.auto_delete_target)
                    if (await self._client.create_if_absent(key, to_document(new))).won:
                        written = (None, new)
                        break
                    continue
                record, revision = current
                _check_owner(record, change.owner)
                if change.expected_target_model_id and change.expected_target_model_id != record.target_model_id:
                    raise PreconditionFailed(
                        f"vmodel '{change.vmodel_id}' targets '{record.target_model_id}', "
                        f"not the expected '{change.expected_target_model_id}'")
                active = target if change.force else record.active_model_id
                new = dataclasses.replace(record, active_model_id=active, target_model_id=target, failure="",
                                          auto_delete_target=change.auto_delete_target,
                                          owner=record.owner or change.owner)
                if new == record or (await self._client.put_if_mod_revision(key, to_document(new), revision)).won:
                    written = (record, new)
                    break
            else:
                raise RegistryConflict(f"vmodel '{change.vmodel_id}': {MAX_CAS_ATTEMPTS} concurrent changes in a row")
        finally:
            if written is None:  # refused or failed: take back the ref unless the vmodel names it anyway
                await self._release_unless_named(target, change.vmodel_id)
        old, new = written
        await self._release_dropped(old, new)
        return new

    async def delete(self, vmodel_id: str, owner: str = "") -> bool:
        """Delete the vmodel; False if there was none. PreconditionFailed on an owner mismatch."""
        key = self._keys.vmodel(vmodel_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self.get(vmodel_id)
            if current is None:
                return False
            record, revision = current
            _check_owner(record, owner)
            if (await self._client.delete_if_mod_revision(key, revision)).won:
                await self._release_dropped(record, None)
                return True
        raise RegistryConflict(f"vmodel '{vmodel_id}': {MAX_CAS_ATTEMPTS} concurrent changes in a row")

    # -- transitions (the controller) -----------------------------------------------------------
    async def complete_transition(self, vmodel_id: str, target_model_id: str) -> VModelRecord | None:
        """active := target, if the vmodel still targets `target_model_id`; None if it moved on."""
        def change(record: VModelRecord) -> VModelRecord | None:
            if record.target_model_id != target_model_id or not record.transitioning:
                return None
            return dataclasses.replace(record, active_model_id=target_model_id, failure="")

        return await self._update(vmodel_id, change)

    async def fail_transition(self, vmodel_id: str, target_model_id: str, reason: str) -> VModelRecord | None:
        """Record why the target could not be loaded (TRANSITION_FAILED); the active model stays."""
        def change(record: VModelRecord) -> VModelRecord | None:
            if record.target_model_id != target_model_id or not record.transitioning or record.failure == reason:
                return None
            return dataclasses.replace(record, failure=reason)

        return await self._update(vmodel_id, change)

    async def add_ref(self, model_id: str, vmodel_id: str) -> None:
        """List `vmodel_id` in the model's `vmodel_refs` (ModelNotRegistered if there is no model)."""
        await self._add_ref(model_id, vmodel_id)

    async def drop_ref(self, model_id: str, vmodel_id: str) -> None:
        """Remove `vmodel_id` from the model's refs; auto-delete the model if that was its last one."""
        await self._release(model_id, vmodel_id)

    # -- internals ------------------------------------------------------------------------------
    async def _update(self, vmodel_id, change) -> VModelRecord | None:
        key = self._keys.vmodel(vmodel_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self.get(vmodel_id)
            if current is None:
                return None
            record, revision = current
            new = change(record)
            if new is None:
                return None
            if (await self._client.put_if_mod_revision(key, to_document(new), revision)).won:
                await self._release_dropped(record, new)
                return new
        raise RegistryConflict(f"vmodel '{vmodel_id}': {MAX_CAS_ATTEMPTS} concurrent changes in a row")

    async def _add_ref(self, model_id: str, vmodel_id: str) -> None:
        def change(record: ModelRecord) -> ModelRecord:
            if vmodel_id in record.vmodel_refs:
                return record
            return dataclasses.replace(record, vmodel_refs=tuple(sorted({*record.vmodel_refs, vmodel_id})))

        await self.registry.update(model_id, change)

    async def _release_dropped(self, old: VModelRecord | None, new: VModelRecord | None) -> None:
        if old is None:
            return
        keep = {new.active_model_id, new.target_model_id} if new is not None else set()
        for model_id in sorted({old.active_model_id, old.target_model_id} - keep):
            await self._release(model_id, old.vmodel_id)

    async def _release_unless_named(self, model_id: str, vmodel_id: str) -> None:
        try:
            current = await self.get(vmodel_id)
        except Exception:  # noqa: BLE001 - cleanup after a failure: leave the ref, reconcile fixes it
            log.warning("could not re-read vmodel %s to release model %s", vmodel_id, model_id, exc_info=True)
            return
        if current is not None and model_id in (current[0].active_model_id, current[0].target_model_id):
            return
        await self._release(model_id, vmodel_id)

    async def _release(self, model_id: str, vmodel_id: str) -> None:
        """Drop the vmodel's ref from the model; unregister it if it was auto-delete and unused now."""
        def change(record: ModelRecord) -> ModelRecord:
            return dataclasses.replace(record, vmodel_refs=tuple(r for r in record.vmodel_refs if r != vmodel_id))

        try:
            record = await self.registry.update(model_id, change)
        except ModelNotRegistered:
            return
        if record.auto_delete and not record.vmodel_refs:
            try:
                if await self.registry.unregister(model_id):
                    log.info("auto-deleted model %s (no vmodel refers to it any more)", model_id)
            except ModelInUse:
                pass  # another vmodel took it meanwhile: it stays


def _check_owner(record: VModelRecord, owner: str) -> None:
    if owner and record.owner and owner != record.owner:
        raise PreconditionFailed(f"vmodel '{record.vmodel_id}' belongs to owner '{record.owner}', not '{owner}'")
