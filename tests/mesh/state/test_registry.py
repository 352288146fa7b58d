"""The registry against a real etcd: idempotent registration, no lost updates, refusals."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mesh.domain.records import CopyClaim, ModelRecord, RecordError
from mesh.state.registry import ModelAlreadyRegistered, ModelInUse, ModelNotRegistered, Registry

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture
def registry(etcd, keys) -> Registry:
    return Registry(etcd, keys)


def _model(model_id="m", path="s3://bucket/m") -> ModelRecord:
    return ModelRecord(model_id, "onnx", path, registered_ms=1)


async def test_register_is_idempotent_and_refuses_a_different_model(registry):
    assert await registry.register(_model()) == _model()
    assert await registry.register(_model()) == _model()
    with pytest.raises(ModelAlreadyRegistered, match="already registered as onnx at s3://bucket/m"):
        await registry.register(_model(path="s3://bucket/other"))
    record, revision = await registry.get("m")
    assert record == _model() and revision > 0


async def test_concurrent_updates_are_all_applied(registry):
    await registry.register(_model())

    def claim(instance):
        return lambda r: dataclasses.replace(r, copies={**r.copies, instance: CopyClaim("loading", 5)})

    await asyncio.gather(*(registry.update("m", claim(f"i{n}")) for n in range(8)))
    record, _ = await registry.get("m")
    assert set(record.copies) == {f"i{n}" for n in range(8)}


async def test_unregister_refused_while_a_vmodel_refers_to_it(registry):
    await registry.register(_model())
    await registry.update("m", lambda r: dataclasses.replace(r, vmodel_refs=("v1",)))
    with pytest.raises(ModelInUse, match="vmodel\\(s\\) v1"):
        await registry.unregister("m")
    await registry.update("m", lambda r: dataclasses.replace(r, vmodel_refs=()))
    assert await registry.unregister("m") is True
    assert await registry.unregister("m") is False
    assert await registry.get("m") is None


async def test_update_of_unknown_model(registry):
    with pytest.raises(ModelNotRegistered, match="'ghost'"):
        await registry.update("ghost", lambda r: r)


async def test_corrupt_record_is_reported_by_get_and_skipped_by_list(registry, etcd, keys):
    await registry.register(_model("good"))
    await etcd.put(keys.model("bad"), {"model_id": 5})
    with pytest.raises(RecordError, match="models/bad"):
        await registry.get("bad")
    assert list(await registry.list()) == ["good"]
