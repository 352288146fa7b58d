"""The model registry in etcd: register, unregister, read and change model records.

Every change is a compare-and-set on the record's mod revision, retried on a lost race
with a fresh read, so concurrent writers (CLI, management API, operator, controller)
never lose each other's updates. Reads on the request path use a `Mirror`, not this.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.domain.errors import ModelAlreadyRegistered, ModelInUse, ModelNotRegistered, RecordError, RegistryConflict
from mesh.domain.records import ModelRecord, Record, from_document, to_document

__all__ = ["ModelAlreadyRegistered", "ModelInUse", "ModelNotRegistered", "Registry", "RegistryConflict"]

MAX_CAS_ATTEMPTS = 32  # lost races in a row before giving up: only under pathological contention


async def read_records(client: EtcdClient, prefix: str, kind: type[Record]) -> list[Record]:
    """Every valid record under `prefix` (one paged range read). Corrupt records are skipped,
    not fatal: one bad document must not hide the rest."""
    _, kvs = await client.get_prefix(prefix)
    found = []
    for kv in kvs:
        try:
            found.append(from_document(kind, kv.value, kv.key))
        except (RecordError, ValueError):
            continue
    return found


class Registry:
    """Model records under `keys.models`. Store errors (StoreUnavailable...) pass through."""

    def __init__(self, client: EtcdClient, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    async def get(self, model_id: str) -> tuple[ModelRecord, int] | None:
        """The record and its mod revision, or None. RecordError if the stored document is corrupt."""
        key = self._keys.model(model_id)
        kv = await self._client.get(key)
        if kv is None:
            return None
        return from_document(ModelRecord, kv.value, key), kv.mod_revision

    async def register(self, record: ModelRecord) -> ModelRecord:
        """Create the record; registering the same model again returns the stored one.

        Raises ModelAlreadyRegistered when the id holds a model with another type, path or key.
        """
        key = self._keys.model(record.model_id)
        result = await self._client.create_if_absent(key, to_document(record))
        if result.won:
            return record
        existing = from_document(ModelRecord, result.current.value, key) if result.current else None
        if existing is None:  # deleted between our try and the read: try once more
            return await self.register(record)
        if (existing.model_type, existing.storage_path, existing.storage_key) != (
                record.model_type, record.storage_path, record.storage_key):
            raise ModelAlreadyRegistered(
                f"model '{record.model_id}' is already registered as {existing.model_type} at {existing.storage_path}")
        return existing

    async def update(self, model_id: str, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        """Apply `change` to the current record with compare-and-set, re-reading after each lost race.

        `change` must be a pure function of the record (it may run more than once).
        """
        key = self._keys.model(model_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self.get(model_id)
            if current is None:
                raise ModelNotRegistered(f"model '{model_id}' is not registered")
            record, revision = current
            updated = change(record)
            if updated == record:
                return record
            result = await self._client.put_if_mod_revision(key, to_document(updated), revision)
            if result.won:
                return updated
        raise RegistryConflict(f"model '{model_id}': {MAX_CAS_ATTEMPTS} concurrent changes in a row; try again")

    async def unregister(self, model_id: str) -> bool:
        """Delete the record; False if there was none. ModelInUse while a vmodel refers to it."""
        key = self._keys.model(model_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await self.get(model_id)
            if current is None:
                return False
            record, revision = current
            if record.vmodel_refs:
                raise ModelInUse(f"model '{model_id}' is used by vmodel(s) {', '.join(record.vmodel_refs)}")
            if (await self._client.delete_if_mod_revision(key, revision)).won:
                return True
        raise RegistryConflict(f"model '{model_id}': {MAX_CAS_ATTEMPTS} concurrent changes in a row; try again")

    async def list(self) -> dict[str, ModelRecord]:
        """Every registered model (a range read: for tools, not the request path).

        Corrupt records are skipped, not fatal: one bad document must not hide the rest.
        """
        return {r.model_id: r for r in await read_records(self._client, self._keys.models, ModelRecord)}
