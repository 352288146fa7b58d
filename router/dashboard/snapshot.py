"""The dashboard's JSON document, from the admin API's own replies (pure).

Every figure comes from `MeshAdmin.fabricStatus` and `listModels` as the router computes
them (`MeshAdminServicer.status_and_models`), so the page, the JSON endpoint and
`meshserve top --once` show the same numbers; this module only renames fields to JSON
and regroups the models' copies by instance (which models each instance holds).

Shape (units: bytes, ms since the epoch, seconds for ages, requests per minute):
  {"version", "time_ms", "in_sync",
   "fleet": {instances, capacity_bytes, used_bytes, loading_bytes, copies, request_rate_per_min,
             global_lru_age_seconds, models_registered, models_loaded, models_loading,
             models_failed, vmodels},
   "instances": [{id, address, zone, capacity_bytes, used_bytes, loading_bytes, models_total,
                  loads_in_progress, request_rate_per_min, lru_age_seconds, shutting_down,
                  models: [{id, state, size_bytes}]}],
   "models": [{id, type, path, state, copies: [{instance_id, state}], size_bytes,
               request_rate_per_min, last_used_ms, last_failure, vmodels}],
   "history": {"sample_s", "length", "samples": [Sample...]}}
"""

from __future__ import annotations

from collections.abc import Sequence

from protos import mesh_admin_pb2 as admin
from protos import model_mesh_pb2 as mm

__all__ = ["snapshot_document", "state_name"]

_S = mm.ModelStatusInfo


def state_name(value: int) -> str:
    try:
        return _S.ModelStatus.Name(value)
    except ValueError:
        return f"UNKNOWN({value})"


def _model(m: admin.ModelSummary) -> dict:
    return {
        "id": m.id, "type": m.type, "path": m.path, "state": state_name(m.state),
        "copies": [{"instance_id": c.instance_id, "state": state_name(c.status)} for c in m.copies],
        "size_bytes": m.size_bytes, "request_rate_per_min": m.request_rate_per_min,
        "last_used_ms": m.last_used_ms, "last_failure": m.last_failure, "vmodels": list(m.vmodels),
    }


def _instance(i: admin.InstanceStatus, held: list[dict]) -> dict:
    return {
        "id": i.id, "address": i.address, "zone": i.zone, "capacity_bytes": i.capacity_bytes,
        "used_bytes": i.used_bytes, "loading_bytes": i.loading_bytes, "models_total": i.models_total,
        "loads_in_progress": i.loads_in_progress, "request_rate_per_min": i.request_rate_per_min,
        "lru_age_seconds": i.lru_age_seconds, "shutting_down": i.shutting_down, "models": held,
    }


def snapshot_document(status: admin.FabricStatus, models: admin.ListModelsResponse, samples: Sequence[dict],
                      *, sample_s: float, length: int, version: int = 0) -> dict:
    """The whole document; `samples` are `Sample.to_json()` objects (`History.as_json`);
    `version` grows with each document a router pushes."""
    held: dict[str, list[dict]] = {i.id: [] for i in status.instances}
    for m in models.models:
        for copy in m.copies:
            if copy.instance_id in held:
                held[copy.instance_id].append({"id": m.id, "state": state_name(copy.status), "size_bytes": m.size_bytes})
    return {
        "version": version,
        "time_ms": status.time_ms,
        "in_sync": status.in_sync,
        "fleet": {
            "instances": len(status.instances),
            "capacity_bytes": status.capacity_bytes,
            "used_bytes": status.used_bytes,
            "loading_bytes": sum(i.loading_bytes for i in status.instances),
            "copies": sum(i.models_total - i.loads_in_progress for i in status.instances),  # as top counts them
            "request_rate_per_min": sum(i.request_rate_per_min for i in status.instances),
            "global_lru_age_seconds": status.global_lru_age_seconds,
            "models_registered": status.models_registered,
            "models_loaded": status.models_loaded,
            "models_loading": status.models_loading,
            "models_failed": status.models_failed,
            "vmodels": status.vmodels,
        },
        "instances": [_instance(i, held[i.id]) for i in status.instances],
        "models": [_model(m) for m in models.models],
        "history": {"sample_s": sample_s, "length": length, "samples": list(samples)},
    }
