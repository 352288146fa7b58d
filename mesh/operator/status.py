"""The status modelmesh-serving writes on Predictors and ModelMesh-mode InferenceServices (pure).

Input: the fabric's `VModelStatusInfo` for the resource's vmodel, carrying the active and target
models' `ModelStatusInfo` (build it with `mesh.domain.model_status.vmodel_status(record, active,
target)`), a `StatusContext` (Service, ports, TLS, whether a runtime serves the target's type),
the resource's previous status and the time. Output: the status dict to write.

Every function is a pure function of its arguments: the same fabric state and previous status
give the same dict, timestamps included (a time is kept from the previous status unless what it
dates changed), so an operator that writes only when the dict differs never rewrites a status on
resync.

Upstream sources (kserve/modelmesh-serving): `controllers/predictor_controller.go`
(`ReconcilePredictor`, `updatePredictorStatusFromVModel`, `decodeModelState`, `modelStateMap`,
`transitionStatusMap`, `countModelCopyStates`, `setStatusFailureInfo`), `apis/serving/v1alpha1/
predictor_types.go` (`PredictorStatus`, `FailureInfo`, `WaitingForRuntime`), `pkg/mmesh/
modelmesh_service.go` (`ConnectIfNeeded`: the endpoints), `pkg/predictor_source/
inferenceservice_registry.go` (`Get`, `UpdateStatus`: the InferenceService mapping); knative.dev/pkg
`apis/condition_set.go` (`SetCondition`, `MarkTrue`, `MarkFalse`: the conditions).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from protos import model_mesh_pb2 as mm

__all__ = [
    "BLOCKED_BY_FAILED_LOAD", "FAILED_TO_LOAD", "IN_PROGRESS", "INVALID_PREDICTOR_SPEC", "INVALID_SPEC", "LOADED",
    "LOADING", "MODEL_LOAD_FAILED", "NO_SUPPORTING_RUNTIME", "PENDING", "RUNTIME_NOT_RECOGNIZED", "RUNTIME_UNHEALTHY",
    "RuntimeState", "STANDBY", "StatusContext", "UP_TO_DATE", "fabric_unavailable_status",
    "inference_service_status", "invalid_resource_status", "invalid_spec_status", "owner_conflict_status",
    "predictor_status", "predictor_status_from_inference_service", "resource_status", "rfc3339", "runtime_state",
    "should_load_now", "status_patch",
]

# apis/serving/v1alpha1/predictor_types.go: ModelState, TransitionStatus, FailureReason
PENDING, STANDBY, LOADING, LOADED, FAILED_TO_LOAD = "Pending", "Standby", "Loading", "Loaded", "FailedToLoad"
UP_TO_DATE, IN_PROGRESS, BLOCKED_BY_FAILED_LOAD, INVALID_SPEC = "UpToDate", "InProgress", "BlockedByFailedLoad", "InvalidSpec"
MODEL_LOAD_FAILED = "ModelLoadFailed"
RUNTIME_UNHEALTHY = "RuntimeUnhealthy"
NO_SUPPORTING_RUNTIME = "NoSupportingRuntime"
RUNTIME_NOT_RECOGNIZED = "RuntimeNotRecognized"
INVALID_PREDICTOR_SPEC = "InvalidPredictorSpec"

_S = mm.ModelStatusInfo
_V = mm.VModelStatusInfo
# predictor_controller.go modelStateMap: NOT_FOUND and UNKNOWN have no state (upstream then
# leaves activeModelState as it was).
_MODEL_STATES = {_S.NOT_LOADED: STANDBY, _S.LOADING: LOADING, _S.LOADED: LOADED, _S.LOADING_FAILED: FAILED_TO_LOAD}
_TRANSITIONS = {_V.DEFINED: UP_TO_DATE, _V.TRANSITIONING: IN_PROGRESS, _V.TRANSITION_FAILED: BLOCKED_BY_FAILED_LOAD}

# decodeModelState's messages for the "no running instance meets the label requirements" error.
_WAITING_FOR_RUNTIME = "Waiting for supporting runtime Pod to become available"
_NOT_RECOGNIZED_MESSAGE = "Specified runtime name not recognized"
_NO_SUPPORTING_MESSAGE = "No ServingRuntime supports specified model type and/or protocol"
# ReconcilePredictor's messages when SetVModel fails.
_NO_FABRIC_MESSAGE = "Waiting for runtime Pod to become available"
_OWNER_CONFLICT_MESSAGE = "Predictor already exists with the same name from a different source"

_PREDICTOR_READY, _READY = "PredictorReady", "Ready"


class RuntimeState(str, Enum):
    """Whether a runtime can hold the vmodel's target model (its type label, see
    `mesh.operator.predictor.model_type_label`)."""

    UP = "Up"  # an enabled multi-model runtime serves the label and an instance of it is up
    NOT_UP = "NotUp"  # such a runtime exists but no instance of it is up yet
    NO_SUPPORTING = "NoSupportingRuntime"  # no runtime serves the model type (mt: label)
    NOT_RECOGNIZED = "RuntimeNotRecognized"  # the named runtime (rt: label) is not an enabled multi-model runtime


def runtime_state(type_label: str, supported: bool, up: bool) -> RuntimeState:
    """The `RuntimeState` for a type label: `supported` when some enabled multi-model runtime
    advertises all of the label's parts, `up` when an instance of one is up. Whether an
    unsupported label is "not recognized" or "no supporting runtime" depends, as upstream, only on
    whether it names a runtime (`rt:`)."""
    if not supported:
        return RuntimeState.NOT_RECOGNIZED if type_label.startswith("rt:") else RuntimeState.NO_SUPPORTING
    return RuntimeState.UP if up else RuntimeState.NOT_UP


@dataclass(frozen=True)
class StatusContext:
    """What the status needs besides the fabric's state (defaults: model-serving-config's)."""

    namespace: str
    service_name: str = "modelmesh-serving"  # inferenceServiceName
    grpc_port: int = 8033  # inferenceServicePort
    http_port: int | None = 8008  # restProxy.port (None or 0: no REST proxy)
    rest_enabled: bool = True  # restProxy.enabled
    tls: bool = False  # tls.secretName is set
    runtime: RuntimeState = RuntimeState.UP

    @property
    def grpc_endpoint(self) -> str:
        """`grpc://<service>.<namespace>:<port>`, also with TLS (upstream's `ConnectIfNeeded`)."""
        return f"grpc://{self.service_name}.{self.namespace}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """`http(s)://<service>.<namespace>:<port>`; "" without the REST proxy."""
        if not self.rest_enabled or not self.http_port:
            return ""
        return f"{'https' if self.tls else 'http'}://{self.service_name}.{self.namespace}:{self.http_port}"


def rfc3339(ms: int) -> str:
    """A time as Kubernetes writes a `metav1.Time`: UTC, whole seconds (`2024-01-02T03:04:05Z`)."""
    return datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Predictor status ------------------------------------------------------------------------------

def predictor_status(vmodel: mm.VModelStatusInfo | None, context: StatusContext,
                     previous: Mapping[str, Any] | None = None, *, now_ms: int) -> dict[str, Any]:
    """The Predictor `status` after the vmodel was set (upstream's `updatePredictorStatusFromVModel`).

    - `activeModelState` / `targetModelState`: NOT_LOADED Standby, LOADING Loading, LOADED Loaded,
      LOADING_FAILED FailedToLoad, no model status Pending; `targetModelState` is "" unless the
      vmodel's target differs from its active model. A NOT_FOUND or UNKNOWN active model keeps the
      previous `activeModelState`.
    - `context.runtime` applies to the target model (the active one too when they are the same)
      while it is not loaded: NOT_UP gives Loading with `RuntimeUnhealthy`, NO_SUPPORTING and
      NOT_RECOGNIZED give FailedToLoad with `NoSupportingRuntime` / `RuntimeNotRecognized`.
    - `transitionStatus`: DEFINED UpToDate, TRANSITIONING InProgress, TRANSITION_FAILED
      BlockedByFailedLoad (InProgress again while the target is LOADING); NOT_FOUND keeps the
      previous one.
    - `lastFailureInfo`: none once the target is loaded; for a failed load the newest failed copy's
      instance (`location`), the loader's message and the failure's time; for the runtime reasons
      the time it was first seen (kept while the same failure lasts). A previous `RuntimeUnhealthy`
      is kept while the target is loading again without a failure.
    - `totalCopies` / `failedCopies`: the copies (loaded, loading, failed) of the active and, when
      different, the target model, not counted while a runtime reason applies to that model.
    - `available`: an active state that is neither "" nor FailedToLoad, and no `RuntimeUnhealthy`.
    - `grpcEndpoint` / `httpEndpoint` from `context`.
    """
    status = _previous(previous)
    _apply_vmodel(status, vmodel or _V(status=_V.NOT_FOUND), context, True, now_ms)
    return _ordered(status)


def invalid_spec_status(message: str, model_id: str, context: StatusContext,
                        previous: Mapping[str, Any] | None = None,
                        vmodel: mm.VModelStatusInfo | None = None) -> dict[str, Any]:
    """The status of a resource whose spec is refused (`InvalidPredictorSpec.message`, `.model_id`).

    Upstream leaves the vmodel as it was but still reads it: with `vmodel` the model states,
    copies, availability and endpoints follow it as in `predictor_status` (without touching the
    transition or failure); then `transitionStatus` is InvalidSpec and `lastFailureInfo`
    `{reason: InvalidPredictorSpec, message, modelId}` (no time, as upstream). Without `vmodel`
    (the fabric not reachable) the rest stays as it was.
    """
    status = _previous(previous)
    if vmodel is not None:
        _apply_vmodel(status, vmodel, context, False, 0)
    status["lastFailureInfo"] = _failure(INVALID_PREDICTOR_SPEC, message, model_id)
    status["transitionStatus"] = INVALID_SPEC
    return _ordered(status)


def fabric_unavailable_status(model_id: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status when the vmodel could not be set because no mesh instance answers (upstream's
    "produced zero addresses" case): `lastFailureInfo {RuntimeUnhealthy, "Waiting for runtime Pod
    to become available", modelId}`, everything else as it was."""
    status = _previous(previous)
    status["lastFailureInfo"] = _failure(RUNTIME_UNHEALTHY, _NO_FABRIC_MESSAGE, model_id)
    return _ordered(status)


def owner_conflict_status(previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status when a vmodel of this name belongs to the other source (`ksp` vs `isvc`;
    upstream's AlreadyExists case): `lastFailureInfo {InvalidPredictorSpec, "Predictor already
    exists with the same name from a different source"}`, everything else as it was."""
    status = _previous(previous)
    status["lastFailureInfo"] = _failure(INVALID_PREDICTOR_SPEC, _OWNER_CONFLICT_MESSAGE, "")
    return _ordered(status)


def should_load_now(previous: Mapping[str, Any] | None, deleting: bool = False) -> bool:
    """Upstream's `loadNow` for SetVModel: not being deleted, and the previous status shows a new,
    failed or transitioning predictor, or one loading while waiting for its runtime."""
    status = _previous(previous)
    active = status["activeModelState"]
    return not deleting and (active in (PENDING, FAILED_TO_LOAD) or status["targetModelState"] != ""
                             or (active == LOADING and _waiting_for_runtime(status)))


def _apply_vmodel(status: dict[str, Any], vmodel: mm.VModelStatusInfo, context: StatusContext,
                  transition_and_failure: bool, now_ms: int) -> None:
    same = vmodel.activeModelId == vmodel.targetModelId
    active = vmodel.activeModelStatus if vmodel.HasField("activeModelStatus") else None
    active_state, active_reason, active_message = _decode(active, context.runtime if same else None)
    if active_state:
        status["activeModelState"] = active_state

    counts = [0, 0]  # failed, total
    if active_reason in ("", MODEL_LOAD_FAILED):
        _count_copies(active, counts)
    target: mm.ModelStatusInfo | None
    if same:
        target, target_reason, target_message = active, active_reason, active_message
        status["targetModelState"] = ""  # only shown while the target is another model
    else:
        target = vmodel.targetModelStatus if vmodel.HasField("targetModelStatus") else None
        target_reason = target_message = ""
        if target is not None:
            status["targetModelState"], target_reason, target_message = _decode(target, context.runtime)
            # Upstream ignores copy infos where there can be no copies (a ModelMesh quirk).
            if target_reason in ("", MODEL_LOAD_FAILED):
                _count_copies(target, counts)

    if transition_and_failure:
        transition = _TRANSITIONS.get(vmodel.status)
        if transition == BLOCKED_BY_FAILED_LOAD and target is not None and target.status == _S.LOADING:
            transition = IN_PROGRESS  # loading again after the failure
        if transition is not None:  # NOT_FOUND / UNKNOWN: upstream never sees one after SetVModel
            status["transitionStatus"] = transition
        failure = None
        if target is not None and target.status != _S.LOADED:
            if not target_reason:
                if _waiting_for_runtime(status):
                    failure = status.get("lastFailureInfo")  # still waiting: keep it (and its time)
            else:
                failure = _failure(target_reason, target_message, vmodel.targetModelId)
                if target_reason == MODEL_LOAD_FAILED:
                    failed = _newest_failed_copy(target)
                    if failed is not None:
                        failure = _failure(target_reason, target_message, vmodel.targetModelId, failed.location,
                                           rfc3339(failed.time) if failed.time else "")
                else:
                    # A state, not an event: dated when first seen. Upstream re-dates it after
                    # 20 s (predictor_controller.go, to damp update loops); keeping the first time
                    # while the same failure lasts damps them entirely and keeps resyncs idempotent.
                    failure["time"] = _kept_time(status.get("lastFailureInfo"), failure, now_ms)
        if failure is None:
            status.pop("lastFailureInfo", None)
        else:
            status["lastFailureInfo"] = failure

    status["available"] = (status["activeModelState"] not in ("", FAILED_TO_LOAD)
                           and not _waiting_for_runtime(status))
    status["grpcEndpoint"] = context.grpc_endpoint
    status["httpEndpoint"] = context.http_endpoint
    status["failedCopies"], status["totalCopies"] = counts


def _decode(info: mm.ModelStatusInfo | None, runtime: RuntimeState | None) -> tuple[str, str, str]:
    """(state, failure reason, message) of one model: upstream's `decodeModelState`, with
    `runtime` standing for ModelMesh's "no running instances meet the label requirements" error
    (the fabric does not fail a load for want of a runtime: the model waits, not loaded)."""
    if info is None:
        return PENDING, "", ""  # the vmodel (or its model) does not exist yet
    if runtime is not None and runtime is not RuntimeState.UP and info.status != _S.LOADED:
        if runtime is RuntimeState.NOT_UP:
            return LOADING, RUNTIME_UNHEALTHY, _WAITING_FOR_RUNTIME
        if runtime is RuntimeState.NOT_RECOGNIZED:
            return FAILED_TO_LOAD, RUNTIME_NOT_RECOGNIZED, _NOT_RECOGNIZED_MESSAGE
        return FAILED_TO_LOAD, NO_SUPPORTING_RUNTIME, _NO_SUPPORTING_MESSAGE
    state = _MODEL_STATES.get(info.status, "")
    if not info.errors:
        return state, "", ""
    return state, MODEL_LOAD_FAILED, _load_failure_message(info)


def _load_failure_message(info: mm.ModelStatusInfo) -> str:
    """The loader's message of the newest failed copy. ModelMesh's `errors` are the loaders'
    messages, newest first, and upstream takes the first; mesh.domain.model_status writes them
    as `<instance>: <message>` sorted by instance, so the newest failed copy's line is picked and
    its instance prefix dropped (the instance is `location`)."""
    failed = _newest_failed_copy(info)
    if failed is not None:
        prefix = failed.location + ": "
        for line in info.errors:
            if line.startswith(prefix):
                return line[len(prefix):]
    return info.errors[0]


def _newest_failed_copy(info: mm.ModelStatusInfo) -> mm.ModelStatusInfo.ModelCopyInfo | None:
    # modelCopyInfos are newest first; upstream takes the first LOADING_FAILED one.
    return next((c for c in info.modelCopyInfos if c.copyStatus == _S.LOADING_FAILED), None)


def _count_copies(info: mm.ModelStatusInfo | None, counts: list[int]) -> None:
    if info is None:
        return
    for copy in info.modelCopyInfos:
        if copy.copyStatus == _S.LOADING_FAILED:
            counts[0] += 1
        counts[1] += 1  # every copy info counts, failed ones included (countModelCopyStates)


def _kept_time(previous: Mapping[str, Any] | None, failure: Mapping[str, Any], now_ms: int) -> str:
    if previous and previous.get("time") and all(
            previous.get(k, "") == failure.get(k, "") for k in ("reason", "message", "modelId", "location")):
        return previous["time"]
    return rfc3339(now_ms)


def _waiting_for_runtime(status: Mapping[str, Any]) -> bool:
    failure = status.get("lastFailureInfo")
    return bool(failure) and failure.get("reason") == RUNTIME_UNHEALTHY  # PredictorStatus.WaitingForRuntime


def _failure(reason: str, message: str, model_id: str, location: str = "", time: str = "") -> dict[str, str]:
    """A `FailureInfo`: every field omitempty, in the Go struct's order."""
    fields = {"location": location, "reason": reason, "message": message, "modelId": model_id, "time": time}
    return {k: v for k, v in fields.items() if v}


_STATUS_ORDER = ("available", "transitionStatus", "activeModelState", "targetModelState", "lastFailureInfo",
                 "httpEndpoint", "grpcEndpoint", "totalCopies", "failedCopies")


def _previous(previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The previous status with the CRD's defaults for what it lacks (the fields upstream writes)."""
    previous = previous or {}
    status: dict[str, Any] = {
        "available": bool(previous.get("available", False)),
        "transitionStatus": previous.get("transitionStatus", UP_TO_DATE),
        "activeModelState": previous.get("activeModelState", PENDING),
        "targetModelState": previous.get("targetModelState", ""),
        "httpEndpoint": previous.get("httpEndpoint", ""),
        "grpcEndpoint": previous.get("grpcEndpoint", ""),
        "totalCopies": int(previous.get("totalCopies", 0)),
        "failedCopies": int(previous.get("failedCopies", 0)),
    }
    failure = previous.get("lastFailureInfo")
    if isinstance(failure, Mapping) and failure:
        status["lastFailureInfo"] = _failure(failure.get("reason", ""), failure.get("message", ""),
                                             failure.get("modelId", ""), failure.get("location", ""),
                                             failure.get("time", ""))
    return status


def _ordered(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in _STATUS_ORDER if k in status}


# -- InferenceService status -------------------------------------------------------------------------

def inference_service_status(predictor: Mapping[str, Any], previous: Mapping[str, Any] | None = None,
                             *, now_ms: int) -> dict[str, Any]:
    """The InferenceService `status` for a Predictor status (upstream's `UpdateStatus`, which
    replaces the whole status):

    - `conditions`: `PredictorReady` and `Ready`, both True when available, else both False
      (without reason or message); a condition's `lastTransitionTime` is the previous one's while
      its status, reason and message are unchanged, else `now_ms` (knative's `SetCondition`);
    - `url`, `components.predictor {url, grpcUrl, restUrl}`: only while available (url and grpcUrl
      the gRPC endpoint, restUrl the HTTP one, left out when there is none);
    - `modelStatus {transitionStatus, states {activeModelState, targetModelState}, copies
      {failedCopies, totalCopies}, lastFailureInfo {location, reason, message, modelRevisionName,
      time}}`, with kserve's omitempty fields (targetModelState, totalCopies) left out when empty.
    """
    failure = predictor.get("lastFailureInfo")
    states = {"activeModelState": predictor.get("activeModelState", "")}
    if predictor.get("targetModelState"):
        states["targetModelState"] = predictor["targetModelState"]
    copies: dict[str, int] = {"failedCopies": int(predictor.get("failedCopies", 0))}
    if predictor.get("totalCopies"):
        copies["totalCopies"] = int(predictor["totalCopies"])
    model_status: dict[str, Any] = {"transitionStatus": predictor.get("transitionStatus", ""),
                                    "states": states, "copies": copies}
    if failure:
        fields = {"location": failure.get("location", ""), "reason": failure.get("reason", ""),
                  "message": failure.get("message", ""), "modelRevisionName": failure.get("modelId", ""),
                  "time": failure.get("time", "")}
        model_status["lastFailureInfo"] = {k: v for k, v in fields.items() if v}

    available = bool(predictor.get("available"))
    previous_conditions = (previous or {}).get("conditions") or []
    truth = "True" if available else "False"
    status: dict[str, Any] = {"conditions": [_condition(t, truth, previous_conditions, now_ms)
                                             for t in (_PREDICTOR_READY, _READY)]}  # knative sorts by type
    if available:
        grpc, rest = predictor.get("grpcEndpoint", ""), predictor.get("httpEndpoint", "")
        component = {"url": grpc, "grpcUrl": grpc}
        if rest:  # knative's ParseURL("") is nil, and a nil URL is left out
            component["restUrl"] = rest
        status["url"] = grpc
        status["components"] = {"predictor": component}
    status["modelStatus"] = model_status
    return status


def _condition(kind: str, truth: str, previous: list[Any], now_ms: int) -> dict[str, str]:
    condition = {"type": kind, "status": truth}
    for old in previous:
        if isinstance(old, Mapping) and old.get("type") == kind:
            same = (old.get("status") == truth and not old.get("reason") and not old.get("message")
                    and not old.get("severity"))
            if same and old.get("lastTransitionTime"):
                condition["lastTransitionTime"] = old["lastTransitionTime"]
                return condition
    condition["lastTransitionTime"] = rfc3339(now_ms)
    return condition


def predictor_status_from_inference_service(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Predictor status upstream reads back from an InferenceService's status (registry `Get`),
    to pass as `previous`: `available` is the PredictorReady condition, the endpoints are
    `components.predictor.grpcUrl` / `restUrl`, an empty `activeModelState` is Pending."""
    status = status or {}
    model_status = status.get("modelStatus") or {}
    states = model_status.get("states") or {}
    copies = model_status.get("copies") or {}
    predictor = (status.get("components") or {}).get("predictor") or {}
    ready = any(isinstance(c, Mapping) and c.get("type") == _PREDICTOR_READY and c.get("status") == "True"
                for c in status.get("conditions") or [])
    flat: dict[str, Any] = {
        "available": ready, "transitionStatus": model_status.get("transitionStatus", ""),
        "activeModelState": states.get("activeModelState") or PENDING,
        "targetModelState": states.get("targetModelState", ""),
        "httpEndpoint": predictor.get("restUrl", ""), "grpcEndpoint": predictor.get("grpcUrl", ""),
        "totalCopies": copies.get("totalCopies", 0), "failedCopies": copies.get("failedCopies", 0),
    }
    failure = model_status.get("lastFailureInfo")
    if isinstance(failure, Mapping) and failure:
        flat["lastFailureInfo"] = {**failure, "modelId": failure.get("modelRevisionName", "")}
    return _ordered(_previous(flat))


# -- either kind -------------------------------------------------------------------------------------

def resource_status(kind: str, vmodel: mm.VModelStatusInfo | None, context: StatusContext,
                    previous: Mapping[str, Any] | None, *, now_ms: int) -> dict[str, Any]:
    """`predictor_status` for a "Predictor"; for an "InferenceService", the same computed from
    and written as its InferenceService status (`previous` is then that resource's status)."""
    if kind == "Predictor":
        return predictor_status(vmodel, context, previous, now_ms=now_ms)
    predictor = predictor_status(vmodel, context, predictor_status_from_inference_service(previous), now_ms=now_ms)
    return inference_service_status(predictor, previous, now_ms=now_ms)


def invalid_resource_status(kind: str, message: str, model_id: str, context: StatusContext,
                            previous: Mapping[str, Any] | None, *, now_ms: int,
                            vmodel: mm.VModelStatusInfo | None = None) -> dict[str, Any]:
    """`invalid_spec_status` for either kind, as `resource_status`. (Upstream writes no status
    for an InferenceService it cannot convert, only retries; this reports it as for a Predictor.)"""
    if kind == "Predictor":
        return invalid_spec_status(message, model_id, context, previous, vmodel)
    predictor = invalid_spec_status(message, model_id, context, predictor_status_from_inference_service(previous),
                                    vmodel)
    return inference_service_status(predictor, previous, now_ms=now_ms)


# -- writing it --------------------------------------------------------------------------------------

def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed and added keys, None
    for removed ones (the status is replaced as a whole upstream, so a key that went, such as
    `lastFailureInfo` or `components`, must be deleted), lists whole. Empty when nothing changed."""
    old = old or {}
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = status_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch
