"""The management API, `mmesh.ModelMesh`, over the registry, vmodels and the cache miss.

Every replica of the controller serves it (any replica answers; writes are
compare-and-set in etcd, so replicas never need to agree among themselves). Handlers
validate and convert at this edge, call the domain objects, and convert back; errors are
mapped to status codes once, by `mesh.api.status` (`mapped_errors`).

A load that fails is not an error of the call: registerModel/ensureLoaded answer with
the model's status (LOADING_FAILED and its reasons), as ModelMesh does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import grpc

from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from mesh.api.status import mapped_errors
from mesh.control.cache_miss import CacheMiss
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.errors import InvalidRequest, LoadingFailed, ModelNotRegistered, NoCapacity, PreconditionFailed
from mesh.domain.model_status import model_status, vmodel_status
from mesh.domain.names import check_id, check_label, check_reference, check_storage_path
from mesh.domain.records import ModelRecord, parse_model_key
from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.etcd.errors import StoreUnavailable
from mesh.state.fabric_view import FabricView
from mesh.state.registry import Registry
from mesh.state.vmodels import VModelChange, VModels
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from puller.spec import URI_SCHEMES

__all__ = ["ModelMeshServicer"]

log = logging.getLogger(__name__)

def _model_record(model_id: str, info: mm.ModelInfo, now_ms: int, last_used_ms: int = 0) -> ModelRecord:
    """The record a registration writes, its fields checked (`mesh.domain.names`); the
    caller has checked `model_id` under its own field name."""
    if not info.type:
        raise InvalidRequest("modelInfo.type is required (the model type, e.g. onnx or pytorch)")
    check_label("modelInfo.type", info.type)
    check_storage_path("modelInfo.path", info.path, URI_SCHEMES)
    if info.key:
        try:
            parse_model_key(info.key)
        except ValueError as error:
            raise InvalidRequest(f"modelInfo.key must be a JSON object: {error}") from None
    return ModelRecord(model_id, info.type, info.path, info.key, registered_ms=now_ms, last_used_ms=last_used_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


class ModelMeshServicer(mm_grpc.ModelMeshServicer, AsyncClosing):
    """`mmesh.ModelMesh`. Owns the background loads it starts (`loadNow` without `sync`);
    `close()` cancels them. A `sync` wait of a call without a deadline is bounded by the
    fabric's loading timeout (a load that takes longer no longer counts as loading)."""

    def __init__(self, registry: Registry, view: FabricView, cache_miss: CacheMiss, vmodels: VModels,
                 runtimes: RuntimeClients, *, timings: FabricTimings = DEFAULT_TIMINGS,
                 clock: Callable[[], int] = _now_ms) -> None:
        self._registry = registry
        self._view = view
        self._miss = cache_miss
        self._vmodels = vmodels
        self._runtimes = runtimes
        self._default_timeout = timings.loading_timeout_ms / 1000
        self._loading_timeout_ms = timings.loading_timeout_ms
        self._clock = clock
        self._tasks = TaskSupervisor("management")
        self._loading: dict[str, asyncio.Task] = {}

    async def close(self) -> None:
        await self._tasks.close()

    # -- models -------------------------------------------------------------------------------
    @mapped_errors
    async def registerModel(self, request: mm.RegisterModelRequest, context) -> mm.ModelStatusInfo:
        model_id = check_id("modelId", request.modelId)
        if not request.HasField("modelInfo"):
            raise InvalidRequest("modelInfo is required (type, path and optional key of the model)")
        # ModelMesh: lastUsedTime 0 means "now" (a new model counts as just used; an older
        # time registers it at a lower priority for keeping and re-homing).
        now = self._clock()
        record = _model_record(model_id, request.modelInfo, now, request.lastUsedTime or now)
        record = await self._registry.register(record)
        if request.loadNow:
            await self._load(model_id, request.sync, context)
        return await self._status(model_id)

    @mapped_errors
    async def unregisterModel(self, request: mm.UnregisterModelRequest, context) -> mm.UnregisterModelResponse:
        model_id = check_reference("modelId", request.modelId)
        current = await self._registry.get(model_id)
        if current is None:
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        holders = set(self._view.copies_of(model_id)) | set(current[0].copies)
        if not await self._registry.unregister(model_id):
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        for instance_id in sorted(holders):
            self._tasks.spawn(self._unload(instance_id, model_id), name=f"unload-{model_id}@{instance_id}")
        return mm.UnregisterModelResponse()

    @mapped_errors
    async def getModelStatus(self, request: mm.GetStatusRequest, context) -> mm.ModelStatusInfo:
        return await self._status(check_reference("modelId", request.modelId))

    @mapped_errors
    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context) -> mm.ModelStatusInfo:
        model_id = check_reference("modelId", request.modelId)
        current = await self._registry.get(model_id)
        if current is None:
            raise ModelNotRegistered(f"model '{model_id}' is not registered")
        if request.lastUsedTime and request.lastUsedTime > current[0].last_used_ms:
            used = int(request.lastUsedTime)
            await self._registry.update(model_id, lambda r: r if r.last_used_ms >= used else
                                        dataclasses.replace(r, last_used_ms=used))
        await self._load(model_id, request.sync, context)
        return await self._status(model_id)

    # -- vmodels ------------------------------------------------------------------------------
    @mapped_errors
    async def setVModel(self, request: mm.SetVModelRequest, context) -> mm.VModelStatusInfo:
        vmodel_id = check_id("vModelId", request.vModelId)
        # A target registered by this call is a new name; otherwise it names an existing model.
        check_target = check_id if request.HasField("modelInfo") else check_reference
        target = check_target("targetModelId", request.targetModelId)
        if request.expectedTargetModelId:
            check_reference("expectedTargetModelId", request.expectedTargetModelId)
        check_label("owner", request.owner)
        model = _model_record(target, request.modelInfo, self._clock()) if request.HasField("modelInfo") else None
        if request.autoDeleteTargetModel and model is None:
            raise InvalidRequest("autoDeleteTargetModel needs modelInfo (it applies to a model registered by this call)")
        record = await self._vmodels.set(VModelChange(
            vmodel_id, target, update_only=request.updateOnly, model=model,
            auto_delete_target=request.autoDeleteTargetModel, force=request.force,
            expected_target_model_id=request.expectedTargetModelId, owner=request.owner))
        if record.transitioning or request.loadNow or request.sync:
            # The target must be loaded for the transition; the controller would start
            # it too, this only saves it a round.
            loaded = await self._load(target, request.sync, context)
            if loaded and record.transitioning:
                await self._vmodels.complete_transition(vmodel_id, target)
        return await self._vstatus(vmodel_id, "")

    @mapped_errors
    async def deleteVModel(self, request: mm.DeleteVModelRequest, context) -> mm.DeleteVModelResponse:
        await self._vmodels.delete(check_reference("vModelId", request.vModelId), request.owner)
        return mm.DeleteVModelResponse()

    @mapped_errors
    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context) -> mm.VModelStatusInfo:
        return await self._vstatus(check_reference("vModelId", request.vModelId), request.owner)

    # -- helpers ------------------------------------------------------------------------------
    async def _status(self, model_id: str) -> mm.ModelStatusInfo:
        # Read from etcd, not the view: a client that just registered must see its model.
        current = await self._registry.get(model_id)
        record = current[0] if current else None
        return model_status(record, self._view.copies_of(model_id), self._clock(), self._loading_timeout_ms)

    async def _vstatus(self, vmodel_id: str, owner: str) -> mm.VModelStatusInfo:
        current = await self._vmodels.get(vmodel_id)
        if current is None:
            return vmodel_status(None)
        record = current[0]
        if owner and record.owner and owner != record.owner:
            raise PreconditionFailed(f"vmodel '{vmodel_id}' belongs to owner '{record.owner}', not '{owner}'")
        active = await self._status(record.active_model_id)
        target = await self._status(record.target_model_id) if record.transitioning else active
        return vmodel_status(record, active, target)

    def _timeout(self, context) -> float:
        remaining = context.time_remaining() if context is not None else None
        # Leave a little of the caller's deadline to send the answer back.
        return self._default_timeout if remaining is None else max(0.0, remaining - 0.05)

    async def _load(self, model_id: str, sync: bool, context) -> bool:
        """Start (or, with `sync`, finish within the call's deadline) a load; True if loaded."""
        if not sync:
            running = self._loading.get(model_id)
            if running is None or running.done():
                task = self._tasks.spawn(self._ensure(model_id, self._default_timeout), name=f"load-{model_id}")
                self._loading[model_id] = task
                task.add_done_callback(lambda t, m=model_id: self._loading.pop(m, None) if self._loading.get(m) is t else None)
            return False
        try:
            await self._ensure(model_id, self._timeout(context), quiet=False)
            return True
        except (LoadingFailed, TimeoutError):
            return False  # the status answer says what happened

    async def _ensure(self, model_id: str, timeout: float, quiet: bool = True) -> None:
        try:
            async with asyncio.timeout(timeout):
                # The view lags etcd by the watch latency: wait until it has the record.
                await self._view.wait_for(lambda: self._view.model(model_id) is not None, None)
                await self._miss.ensure_loaded(model_id, timeout)
        except (LoadingFailed, NoCapacity, TimeoutError, ModelNotRegistered, StoreUnavailable) as error:
            if not quiet:
                raise
            log.info("background load of %s did not complete: %s", model_id, error)

    async def _unload(self, instance_id: str, model_id: str) -> None:
        instance = self._view.instance(instance_id)
        if instance is None:
            return
        try:
            await self._runtimes.unload(instance.address, model_id, timeout=30)
        except grpc.aio.AioRpcError as error:
            log.info("unload of unregistered %s on %s failed (%s); the controller will retry",
                     model_id, instance_id, error.code().name)
