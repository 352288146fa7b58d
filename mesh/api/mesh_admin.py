"""meshserve's admin API, `meshserve.admin.MeshAdmin`: a listing of the models and the
fabric's capacity, the two things ModelMesh's management API has no call for.

Everything is computed from a watched `FabricView`, never from etcd, so a call costs
O(models + copies) in memory and keeps answering (from the last view, `in_sync` false)
while etcd is unreachable. The computation is two pure functions over records
(`summarize_models`, `summarize_fabric`; no etcd, no gRPC, the time passed in), and the
servicer only reads the view and calls them. States are those of `getModelStatus`
(`mesh.domain.model_status`), so `list` and `status` never disagree.

Errors: a server whose view has not read etcd yet answers UNAVAILABLE (the caller retries);
anything unexpected is INTERNAL with an id that is in the log (`mapped_errors`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from mesh.api.status import mapped_errors
from mesh.domain.model_status import model_status
from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.etcd.errors import StoreUnavailable
from mesh.state.fabric_view import FabricView
from mesh.domain.records import HeldCopy, InstanceRecord, ModelRecord, VModelRecord
from protos import mesh_admin_pb2 as admin
from protos import mesh_admin_pb2_grpc as admin_grpc
from protos import model_mesh_pb2 as mm

__all__ = ["MeshAdminServicer", "summarize_fabric", "summarize_models"]

_S = mm.ModelStatusInfo


def _holders(instances: Mapping[str, InstanceRecord]) -> dict[str, dict[str, HeldCopy]]:
    """model id -> instance id -> copy, as the instances publish them (what `FabricView.copies_of` answers)."""
    holders: dict[str, dict[str, HeldCopy]] = {}
    for instance_id, record in instances.items():
        for model_id, copy in record.copies.items():
            holders.setdefault(model_id, {})[instance_id] = copy
    return holders


def _age_s(now_ms: int, then_ms: int | None) -> float:
    return max(0, now_ms - then_ms) / 1000 if then_ms is not None else 0.0


def _summary(record: ModelRecord, copies: Mapping[str, HeldCopy], vmodels: list[str], now_ms: int,
             loading_timeout_ms: int) -> admin.ModelSummary:
    status = model_status(record, copies, now_ms, loading_timeout_ms)
    failures = record.live_failures(now_ms)
    last_failure = ""
    if failures:
        instance_id, failure = max(failures.items(), key=lambda item: (item[1].time_ms, item[0]))
        last_failure = f"{instance_id}: {failure.reason}"
    held = [c.size_bytes for c in copies.values() if not c.loading]
    return admin.ModelSummary(
        id=record.model_id, type=record.model_type, path=record.storage_path, state=status.status,
        copies=[admin.ModelCopy(instance_id=info.location, status=info.copyStatus)
                for info in sorted(status.modelCopyInfos, key=lambda i: i.location)
                if info.copyStatus in (_S.LOADED, _S.LOADING)],
        last_failure=last_failure,
        size_bytes=max(0, max(held) if held else record.size_estimate_bytes),
        request_rate_per_min=sum(c.rate_per_min for c in copies.values()),
        last_used_ms=max(0, record.last_used_ms, *(c.last_used_ms for c in copies.values())),
        vmodels=vmodels,
    )


def summarize_models(models: Mapping[str, ModelRecord], instances: Mapping[str, InstanceRecord],
                     vmodels: Mapping[str, VModelRecord], now_ms: int,
                     loading_timeout_ms: int = DEFAULT_TIMINGS.loading_timeout_ms) -> list[admin.ModelSummary]:
    """One `ModelSummary` per registered model, sorted by id.

    `instances` are the live instance records (their copies say where models are); a
    model's `vmodels` are the aliases whose active or target model it is.
    """
    holders = _holders(instances)
    aliases: dict[str, set[str]] = {}
    for vmodel_id, vmodel in vmodels.items():
        for model_id in (vmodel.active_model_id, vmodel.target_model_id):
            aliases.setdefault(model_id, set()).add(vmodel_id)
    return [_summary(models[m], holders.get(m, {}), sorted(aliases.get(m, ())), now_ms, loading_timeout_ms)
            for m in sorted(models)]


def _instance(record: InstanceRecord, now_ms: int) -> admin.InstanceStatus:
    return admin.InstanceStatus(
        id=record.instance_id, address=record.address, zone=record.zone,
        capacity_bytes=max(0, record.capacity_bytes), used_bytes=max(0, record.used_bytes),
        loading_bytes=max(0, record.loading_bytes), models_total=len(record.copies),
        loads_in_progress=sum(1 for c in record.copies.values() if c.loading),
        request_rate_per_min=record.request_rate_per_min,
        lru_age_seconds=_age_s(now_ms, record.lru_last_used_ms), shutting_down=record.shutting_down,
    )


def summarize_fabric(models: Mapping[str, ModelRecord], instances: Mapping[str, InstanceRecord],
                     vmodels: Mapping[str, VModelRecord], now_ms: int,
                     loading_timeout_ms: int = DEFAULT_TIMINGS.loading_timeout_ms, *, in_sync: bool = True,
                     summaries: Sequence[admin.ModelSummary] | None = None) -> admin.FabricStatus:
    """The fabric's `FabricStatus`: each instance (sorted by id) and the fabric-wide figures.

    `summaries`: `summarize_models` of the same arguments, when the caller has them already
    (the model counts are taken from them instead of computing them again).

    The global LRU age is the age of the least recently used loaded copy on any instance
    that is not shutting down (its copies are leaving anyway); 0 when nothing is loaded.
    Ages never go negative when a clock is behind another.
    """
    if summaries is None:
        summaries = summarize_models(models, instances, vmodels, now_ms, loading_timeout_ms)
    states = [s.state for s in summaries]
    oldest = [r.lru_last_used_ms for r in instances.values() if not r.shutting_down and r.lru_last_used_ms is not None]
    return admin.FabricStatus(
        instances=[_instance(instances[i], now_ms) for i in sorted(instances)],
        global_lru_age_seconds=_age_s(now_ms, min(oldest) if oldest else None),
        models_registered=len(models),
        models_loaded=states.count(_S.LOADED),
        models_failed=states.count(_S.LOADING_FAILED),
        models_loading=states.count(_S.LOADING),
        vmodels=len(vmodels),
        capacity_bytes=sum(max(0, r.capacity_bytes) for r in instances.values()),
        used_bytes=sum(max(0, r.used_bytes) for r in instances.values()),
        time_ms=max(0, now_ms),
        in_sync=in_sync,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class MeshAdminServicer(admin_grpc.MeshAdminServicer):
    """`meshserve.admin.MeshAdmin` over a watched `FabricView` (started by the caller; this
    servicer never closes it). `clock` gives milliseconds since the epoch."""

    def __init__(self, view: FabricView, clock: Callable[[], int] = _now_ms, *,
                 timings: FabricTimings = DEFAULT_TIMINGS) -> None:
        self._view = view
        self._clock = clock
        self._loading_timeout_ms = timings.loading_timeout_ms

    @mapped_errors
    async def listModels(self, request: admin.ListModelsRequest, context) -> admin.ListModelsResponse:
        return self.list_models()

    @mapped_errors
    async def fabricStatus(self, request: admin.FabricStatusRequest, context) -> admin.FabricStatus:
        return self.fabric_status()

    # The replies as plain calls (no gRPC), for other readers of the same figures (the
    # router's dashboard), so they are the very numbers `meshserve top` and `list` print.
    def list_models(self) -> admin.ListModelsResponse:
        """What `listModels` answers; StoreUnavailable before the view has read etcd."""
        models, instances, vmodels = self._records()
        return admin.ListModelsResponse(
            models=summarize_models(models, instances, vmodels, self._clock(), self._loading_timeout_ms),
            in_sync=self._view.in_sync)

    def fabric_status(self) -> admin.FabricStatus:
        """What `fabricStatus` answers; StoreUnavailable before the view has read etcd."""
        models, instances, vmodels = self._records()
        return summarize_fabric(models, instances, vmodels, self._clock(), self._loading_timeout_ms,
                                in_sync=self._view.in_sync)

    def status_and_models(self) -> tuple[admin.FabricStatus, admin.ListModelsResponse]:
        """Both replies from one state of the view and one clock reading (the models summarized once)."""
        models, instances, vmodels = self._records()
        now_ms, in_sync = self._clock(), self._view.in_sync
        summaries = summarize_models(models, instances, vmodels, now_ms, self._loading_timeout_ms)
        status = summarize_fabric(models, instances, vmodels, now_ms, self._loading_timeout_ms, in_sync=in_sync,
                                  summaries=summaries)
        return status, admin.ListModelsResponse(models=summaries, in_sync=in_sync)

    def _records(self) -> tuple[dict[str, ModelRecord], dict[str, InstanceRecord], dict[str, VModelRecord]]:
        view = self._view
        if not view.is_ready():
            raise StoreUnavailable("this server has not read the fabric from etcd yet")
        # No await between the reads: the three come from one state of the view.
        models = {m: r for m in view.model_ids() if (r := view.model(m)) is not None}
        vmodels = {v: r for v in view.vmodel_ids() if (r := view.vmodel(v)) is not None}
        return models, view.all_instances(), vmodels
