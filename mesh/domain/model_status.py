"""ModelMesh's status semantics for models and vmodels (pure: records in, proto messages out).

`model_status` answers "what state is this model in" from its registry record and the
copies live instances publish; `vmodel_status` does the same for an alias. No etcd, no
gRPC, no clock: the caller passes `now_ms`, so these are deterministic and cheap to test.

Model states, strongest first (ModelMesh's order):
  NOT_FOUND       no record;
  LOADED          some live instance publishes a loaded copy;
  LOADING         a copy is loading, or a `loading` claim is younger than the loading timeout;
  LOADING_FAILED  live (unexpired) failure records and nothing loaded or loading; `errors`
                  holds one line per failed instance;
  NOT_LOADED      otherwise (registered, loads on first use).
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.domain.records import HeldCopy, ModelRecord, VModelRecord
from mesh.domain.timings import DEFAULT_TIMINGS
from protos import model_mesh_pb2 as mm

__all__ = ["model_status", "vmodel_status"]

_S = mm.ModelStatusInfo
_V = mm.VModelStatusInfo


def model_status(record: ModelRecord | None, copies: Mapping[str, HeldCopy], now_ms: int,
                 loading_timeout_ms: int = DEFAULT_TIMINGS.loading_timeout_ms) -> mm.ModelStatusInfo:
    """The model's ModelStatusInfo; `copies` is `FabricView.copies_of(model_id)` (live instances)."""
    if record is None:
        return _S(status=_S.NOT_FOUND)
    infos: list[tuple[int, str, int]] = []  # (time, location, status)
    loaded = loading = False
    for instance_id, copy in copies.items():
        if copy.loading:
            loading = True
            since = record.copies[instance_id].since_ms if instance_id in record.copies else copy.last_used_ms
            infos.append((since, instance_id, _S.LOADING))
        else:
            loaded = True
            infos.append((copy.last_used_ms, instance_id, _S.LOADED))
    for instance_id, claim in record.copies.items():
        # A claim the instance does not publish yet: the load was asked for and has not shown
        # up. It counts while younger than the loading timeout (the controller drops it after).
        if instance_id in copies or claim.state != "loading":
            continue
        if now_ms - claim.since_ms < loading_timeout_ms:
            loading = True
            infos.append((claim.since_ms, instance_id, _S.LOADING))
    failures = record.live_failures(now_ms)
    for instance_id, failure in failures.items():
        if instance_id not in copies and not any(i == instance_id for _, i, _ in infos):
            infos.append((failure.time_ms, instance_id, _S.LOADING_FAILED))
    if loaded:
        status = _S.LOADED
    elif loading:
        status = _S.LOADING
    elif failures:
        status = _S.LOADING_FAILED
    else:
        status = _S.NOT_LOADED
    errors = ([f"{instance_id}: {failure.reason}" for instance_id, failure in sorted(failures.items())]
              if status == _S.LOADING_FAILED else [])
    infos.sort(key=lambda info: (-info[0], info[1]))  # newest first; ties by location
    return _S(status=status, errors=errors,
              modelCopyInfos=[_S.ModelCopyInfo(location=loc, copyStatus=st, time=max(0, t)) for t, loc, st in infos])


def vmodel_status(record: VModelRecord | None, active: mm.ModelStatusInfo | None = None,
                  target: mm.ModelStatusInfo | None = None) -> mm.VModelStatusInfo:
    """The vmodel's VModelStatusInfo from its record and its models' statuses.

    DEFINED: active == target; TRANSITIONING: target differs and has not failed;
    TRANSITION_FAILED: the controller recorded why the target could not be loaded (the
    active model keeps serving until a new setVModel).
    """
    if record is None:
        return _V(status=_V.NOT_FOUND)
    if record.failure and record.transitioning:
        status = _V.TRANSITION_FAILED
    elif record.transitioning:
        status = _V.TRANSITIONING
    else:
        status = _V.DEFINED
    info = _V(status=status, activeModelId=record.active_model_id, targetModelId=record.target_model_id,
              owner=record.owner)
    if active is not None:
        info.activeModelStatus.CopyFrom(active)
    if target is not None:
        info.targetModelStatus.CopyFrom(target if record.transitioning or active is None else active)
    return info
