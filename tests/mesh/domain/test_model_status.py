"""ModelMesh status semantics, pure: records and published copies in, proto messages out."""

from __future__ import annotations

from mesh.domain.model_status import model_status, vmodel_status
from mesh.domain.records import CopyClaim, HeldCopy, LoadFailure, ModelRecord, VModelRecord
from protos import model_mesh_pb2 as mm

S = mm.ModelStatusInfo
V = mm.VModelStatusInfo
NOW = 1_000_000


def _record(**kw) -> ModelRecord:
    return ModelRecord("m", "onnx", "s3://b/m", **kw)


def test_not_found_without_a_record():
    assert model_status(None, {}, NOW).status == S.NOT_FOUND


def test_registered_and_idle_is_not_loaded():
    info = model_status(_record(), {}, NOW)
    assert info.status == S.NOT_LOADED and not info.errors and not info.modelCopyInfos


def test_loaded_wins_over_loading_and_failures_and_copies_are_newest_first():
    record = _record(copies={"c": CopyClaim("loading", NOW - 10)},
                     failures={"d": LoadFailure("OOM", NOW - 5, NOW + 1000)})
    copies = {"a": HeldCopy(10, NOW - 300), "b": HeldCopy(10, NOW - 100)}
    info = model_status(record, copies, NOW)
    assert info.status == S.LOADED
    assert not info.errors  # errors only explain LOADING_FAILED
    assert [(c.location, c.copyStatus, c.time) for c in info.modelCopyInfos] == [
        ("d", S.LOADING_FAILED, NOW - 5), ("c", S.LOADING, NOW - 10),
        ("b", S.LOADED, NOW - 100), ("a", S.LOADED, NOW - 300)]


def test_loading_from_a_published_copy_or_a_fresh_claim_only():
    assert model_status(_record(), {"a": HeldCopy(10, NOW, loading=True)}, NOW).status == S.LOADING
    fresh = _record(copies={"a": CopyClaim("loading", NOW - 1000)})
    assert model_status(fresh, {}, NOW, loading_timeout_ms=5000).status == S.LOADING
    stale = _record(copies={"a": CopyClaim("loading", NOW - 6000)})
    assert model_status(stale, {}, NOW, loading_timeout_ms=5000).status == S.NOT_LOADED
    # A "loaded" claim the instance no longer publishes (evicted, instance gone) is not a copy.
    gone = _record(copies={"a": CopyClaim("loaded", NOW - 10)})
    assert model_status(gone, {}, NOW).status == S.NOT_LOADED


def test_live_failures_make_loading_failed_with_reasons_expired_ones_do_not():
    record = _record(failures={"a": LoadFailure("bad file", NOW - 10, NOW + 10),
                               "b": LoadFailure("old", NOW - 100, NOW - 1)})
    info = model_status(record, {}, NOW)
    assert info.status == S.LOADING_FAILED
    assert list(info.errors) == ["a: bad file"]
    assert [c.location for c in info.modelCopyInfos] == ["a"]
    expired = _record(failures={"b": LoadFailure("old", NOW - 100, NOW - 1)})
    assert model_status(expired, {}, NOW).status == S.NOT_LOADED


def test_failure_with_a_load_in_progress_is_loading():
    record = _record(copies={"b": CopyClaim("loading", NOW - 1)},
                     failures={"a": LoadFailure("bad", NOW - 10, NOW + 10)})
    assert model_status(record, {}, NOW).status == S.LOADING


def test_vmodel_states():
    assert vmodel_status(None).status == V.NOT_FOUND
    loaded, loading = S(status=S.LOADED), S(status=S.LOADING)
    defined = vmodel_status(VModelRecord("v", "m1", "m1", owner="o"), loaded, loaded)
    assert (defined.status, defined.activeModelId, defined.targetModelId, defined.owner) == (V.DEFINED, "m1", "m1", "o")
    assert defined.targetModelStatus.status == S.LOADED
    moving = vmodel_status(VModelRecord("v", "m1", "m2"), loaded, loading)
    assert moving.status == V.TRANSITIONING
    assert (moving.activeModelStatus.status, moving.targetModelStatus.status) == (S.LOADED, S.LOADING)
    failed = vmodel_status(VModelRecord("v", "m1", "m2", failure="m2 failed"), loaded, S(status=S.LOADING_FAILED))
    assert failed.status == V.TRANSITION_FAILED and failed.activeModelId == "m1"
