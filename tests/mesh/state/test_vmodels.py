"""vmodels against a real etcd: create/move, CAS and owner checks, refs, auto-delete, transitions."""

from __future__ import annotations

import asyncio

import pytest

from mesh.domain.records import ModelRecord
from mesh.state.registry import ModelInUse, ModelNotRegistered, Registry
from mesh.state.vmodels import PreconditionFailed, VModelChange, VModelNotFound, VModels

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture
def registry(etcd, keys) -> Registry:
    return Registry(etcd, keys)


@pytest.fixture
def vmodels(etcd, keys, registry) -> VModels:
    return VModels(etcd, keys, registry)


def _model(model_id: str) -> ModelRecord:
    return ModelRecord(model_id, "onnx", f"s3://b/{model_id}", registered_ms=1)


async def _refs(registry: Registry, model_id: str) -> tuple[str, ...]:
    found = await registry.get(model_id)
    return found[0].vmodel_refs if found else None


async def test_create_then_move_keeps_the_active_model_until_the_transition(vmodels, registry):
    await registry.register(_model("m1"))
    created = await vmodels.set(VModelChange("v", "m1", owner="team"))
    assert (created.active_model_id, created.target_model_id, created.transitioning) == ("m1", "m1", False)
    assert await _refs(registry, "m1") == ("v",)

    moved = await vmodels.set(VModelChange("v", "m2", model=_model("m2")))
    assert (moved.active_model_id, moved.target_model_id, moved.owner) == ("m1", "m2", "team")
    assert await _refs(registry, "m1") == ("v",) and await _refs(registry, "m2") == ("v",)
    with pytest.raises(ModelInUse):
        await registry.unregister("m1")

    done = await vmodels.complete_transition("v", "m2")
    assert (done.active_model_id, done.transitioning) == ("m2", False)
    assert await _refs(registry, "m1") == () and await _refs(registry, "m2") == ("v",)
    assert await vmodels.complete_transition("v", "m2") is None  # nothing left to do
    assert await registry.unregister("m1") is True


async def test_refusals(vmodels, registry):
    with pytest.raises(ModelNotRegistered):
        await vmodels.set(VModelChange("v", "ghost"))
    assert await vmodels.get("v") is None
    await registry.register(_model("m1"))
    with pytest.raises(VModelNotFound, match="updateOnly"):
        await vmodels.set(VModelChange("v", "m1", update_only=True))
    with pytest.raises(PreconditionFailed, match="does not exist"):
        await vmodels.set(VModelChange("v", "m1", expected_target_model_id="m0"))
    assert await _refs(registry, "m1") == ()  # refused: no ref left behind

    await vmodels.set(VModelChange("v", "m1", owner="alice"))
    await registry.register(_model("m2"))
    with pytest.raises(PreconditionFailed, match="owner 'alice'"):
        await vmodels.set(VModelChange("v", "m2", owner="bob"))
    with pytest.raises(PreconditionFailed, match="targets 'm1', not the expected 'm0'"):
        await vmodels.set(VModelChange("v", "m2", expected_target_model_id="m0"))
    assert await _refs(registry, "m2") == ()
    with pytest.raises(PreconditionFailed):
        await vmodels.delete("v", owner="bob")
    ok = await vmodels.set(VModelChange("v", "m2", expected_target_model_id="m1", owner="alice", update_only=True))
    assert ok.target_model_id == "m2"


async def test_concurrent_expected_target_changes_let_one_win(vmodels, registry):
    for m in ("m0", "a", "b", "c"):
        await registry.register(_model(m))
    await vmodels.set(VModelChange("v", "m0"))
    results = await asyncio.gather(*(vmodels.set(VModelChange("v", m, expected_target_model_id="m0"))
                                     for m in ("a", "b", "c")), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, PreconditionFailed) for r in results if isinstance(r, Exception))
    target = winners[0].target_model_id
    for m in ("a", "b", "c"):
        assert await _refs(registry, m) == (("v",) if m == target else ())


async def test_force_switches_at_once_and_auto_delete_follows_the_last_ref(vmodels, registry):
    await vmodels.set(VModelChange("v", "m1", model=_model("m1"), auto_delete_target=True))
    switched = await vmodels.set(VModelChange("v", "m2", model=_model("m2"), auto_delete_target=True, force=True))
    assert (switched.active_model_id, switched.target_model_id) == ("m2", "m2")
    assert await registry.get("m1") is None  # auto-deleted: no vmodel refers to it
    assert await vmodels.delete("v") is True
    assert await registry.get("m2") is None
    assert await vmodels.delete("v") is False


async def test_failed_transition_is_recorded_and_cleared_by_the_next_set(vmodels, registry):
    await registry.register(_model("m1"))
    await registry.register(_model("m2"))
    await vmodels.set(VModelChange("v", "m1"))
    await vmodels.set(VModelChange("v", "m2"))
    failed = await vmodels.fail_transition("v", "m2", "m2: bad file")
    assert failed.failure == "m2: bad file" and failed.active_model_id == "m1"
    assert await vmodels.fail_transition("v", "other", "x") is None  # not its target: ignored
    again = await vmodels.set(VModelChange("v", "m2"))
    assert again.failure == "" and again.transitioning
    back = await vmodels.set(VModelChange("v", "m1"))  # moving back to the active model ends it
    assert not back.transitioning
    assert await _refs(registry, "m2") == ()
