"""Predictors and InferenceServices into the fabric: the vmodel and its concrete model.

Idempotent: the vmodel is set only when it does not already target the resource's concrete
model, so a resync (operator restart, kopf's resume) writes nothing, and a transition the
controller marked failed is not reset by a repeat of the same spec. A changed spec is a new
concrete id: the vmodel's target moves to it, the old model keeps serving until the new one
is loaded, and is auto-deleted once nothing refers to it (modelmesh-serving's
`autoDeleteTargetModel`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from mesh.operator.fabrics import NamespaceFabric
from mesh.operator.predictor import MeshModel
from mesh.state.vmodels import VModelChange

__all__ = ["apply_model", "remove_model"]

log = logging.getLogger(__name__)


async def apply_model(fabric: NamespaceFabric, model: MeshModel) -> bool:
    """Make the fabric serve `model` under its vmodel; True if anything was written."""
    current = await fabric.vmodels.get(model.vmodel_id)
    registered = await fabric.registry.get(model.model_id)
    if current is not None and current[0].target_model_id == model.model_id and registered is not None:
        return False
    now = int(time.time() * 1000)
    record = dataclasses.replace(model.record, registered_ms=now, last_used_ms=now)
    await fabric.vmodels.set(VModelChange(model.vmodel_id, model.model_id, model=record,
                                          auto_delete_target=model.auto_delete_target, owner=model.owner))
    log.info("%s %s/%s -> vmodel %s targets %s", model.kind, model.namespace, model.vmodel_id, model.vmodel_id,
             model.model_id)
    return True


async def remove_model(fabric: NamespaceFabric, vmodel_id: str, owner: str) -> bool:
    """Delete the resource's vmodel; its auto-delete models go with it. False if it was gone."""
    removed = await fabric.vmodels.delete(vmodel_id, owner)
    if removed:
        log.info("vmodel %s (owner %s) deleted; its models are unregistered", vmodel_id, owner)
    return removed
