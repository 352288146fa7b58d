"""Predictor and InferenceService status from the fabric's vmodel state, as modelmesh-serving writes it.

Inputs are built the way the operator builds them: records through mesh.domain.model_status
(`model_status`, `vmodel_status`), or proto messages directly for ModelMesh-only shapes.
"""

from __future__ import annotations

import pytest

from mesh.domain.model_status import model_status, vmodel_status
from mesh.domain.records import CopyClaim, HeldCopy, LoadFailure, ModelRecord, VModelRecord
from mesh.operator.status import (
    RuntimeState, StatusContext, fabric_unavailable_status, inference_service_status, invalid_resource_status,
    invalid_spec_status, owner_conflict_status, predictor_status, predictor_status_from_inference_service,
    resource_status, rfc3339, runtime_state, should_load_now, status_patch,
)
from protos import model_mesh_pb2 as mm

S = mm.ModelStatusInfo
V = mm.VModelStatusInfo
NOW = 1_700_000_000_000  # 2023-11-14T22:13:20Z
LATER = NOW + 3_600_000
CTX = StatusContext("models")
GRPC, HTTP = "grpc://modelmesh-serving.models:8033", "http://modelmesh-serving.models:8008"


def _model(model_id: str, *, copies=None, claims=None, failures=None) -> S:
    record = ModelRecord(model_id, "mt:onnx", "p", copies=claims or {}, failures=failures or {})
    return model_status(record, copies or {}, NOW)


def _vmodel(active: S | None, target: S | None = None, *, active_id="m-1", target_id=None, failure="") -> V:
    target_id = target_id or active_id
    record = VModelRecord("m", active_id, target_id, "ksp", True, failure)
    return vmodel_status(record, active, target if target is not None else active)


LOADED = {"i-1": HeldCopy(10, NOW - 1000)}
LOADING = {"i-1": HeldCopy(10, NOW - 1000, loading=True)}
FAILED = {"i-1": LoadFailure("out of memory", NOW - 7000, NOW + 60_000),
          "i-2": LoadFailure("corrupt file", NOW - 2000, NOW + 60_000)}


# -- states ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("info, state, available", [
    (_model("m-1"), "Standby", True),  # registered, loads on first use: available
    (_model("m-1", copies=LOADING), "Loading", True),
    (_model("m-1", copies=LOADED), "Loaded", True),
    (_model("m-1", failures=FAILED), "FailedToLoad", False),
])
def test_model_states_map_as_upstreams(info, state, available):
    status = predictor_status(_vmodel(info), CTX, now_ms=NOW)
    assert status["activeModelState"] == state and status["targetModelState"] == ""
    assert status["available"] is available and status["transitionStatus"] == "UpToDate"
    assert (status["grpcEndpoint"], status["httpEndpoint"]) == (GRPC, HTTP)


def test_a_vmodel_that_does_not_exist_is_pending():
    # ModelMesh answers a missing vmodel with an empty VModelStatusInfo; upstream decodes it as
    # Pending, which counts as available (it is neither "" nor FailedToLoad).
    status = predictor_status(None, CTX, now_ms=NOW)
    assert status == {"available": True, "transitionStatus": "UpToDate", "activeModelState": "Pending",
                      "targetModelState": "", "httpEndpoint": HTTP, "grpcEndpoint": GRPC,
                      "totalCopies": 0, "failedCopies": 0}
    assert predictor_status(V(status=V.NOT_FOUND), CTX, now_ms=NOW) == status


def test_an_active_model_without_a_state_keeps_the_previous_one():
    vmodel = _vmodel(S(status=S.NOT_FOUND))
    assert predictor_status(vmodel, CTX, {"activeModelState": "Loaded"}, now_ms=NOW)["activeModelState"] == "Loaded"


def test_transitions_and_the_target_state():
    active, target = _model("m-1", copies=LOADED), _model("m-2", copies=LOADING)
    moving = predictor_status(_vmodel(active, target, target_id="m-2"), CTX, now_ms=NOW)
    assert (moving["transitionStatus"], moving["activeModelState"], moving["targetModelState"]) == \
        ("InProgress", "Loaded", "Loading")
    assert moving["available"] and moving["totalCopies"] == 2  # the active's copy and the target's

    failed = _model("m-2", failures=FAILED)
    blocked = predictor_status(_vmodel(active, failed, target_id="m-2", failure="m-2 failed"), CTX, now_ms=NOW)
    assert (blocked["transitionStatus"], blocked["targetModelState"]) == ("BlockedByFailedLoad", "FailedToLoad")
    assert blocked["available"]  # the active model keeps serving

    retrying = _vmodel(active, target, target_id="m-2", failure="m-2 failed")
    assert retrying.status == V.TRANSITION_FAILED
    assert predictor_status(retrying, CTX, now_ms=NOW)["transitionStatus"] == "InProgress"


# -- failures ----------------------------------------------------------------------------------------

def test_a_failed_load_names_the_newest_failed_copy_its_message_and_time():
    status = predictor_status(_vmodel(_model("m-1", failures=FAILED)), CTX, now_ms=NOW)
    assert status["lastFailureInfo"] == {"location": "i-2", "reason": "ModelLoadFailed", "message": "corrupt file",
                                         "modelId": "m-1", "time": rfc3339(NOW - 2000)}
    assert (status["failedCopies"], status["totalCopies"]) == (2, 2)
    assert status["activeModelState"] == "FailedToLoad" and not status["available"]


def test_a_failed_target_is_reported_with_the_target_id():
    active, target = _model("m-1", copies=LOADED), _model("m-2", failures=FAILED)
    status = predictor_status(_vmodel(active, target, target_id="m-2", failure="x"), CTX, now_ms=NOW)
    assert status["lastFailureInfo"]["modelId"] == "m-2"
    assert (status["failedCopies"], status["totalCopies"]) == (2, 3)


def test_modelmesh_errors_without_a_failed_copy_use_the_first_error():
    info = S(status=S.LOADING_FAILED, errors=["boom", "older"])
    status = predictor_status(_vmodel(info), CTX, now_ms=NOW)
    assert status["lastFailureInfo"] == {"reason": "ModelLoadFailed", "message": "boom", "modelId": "m-1"}


def test_the_failure_is_cleared_once_the_target_is_loaded():
    failed = predictor_status(_vmodel(_model("m-1", failures=FAILED)), CTX, now_ms=NOW)
    loaded = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, failed, now_ms=LATER)
    assert "lastFailureInfo" not in loaded and loaded["available"]
    # Loading again after a model failure clears it too (only a runtime wait is kept).
    loading = predictor_status(_vmodel(_model("m-1", copies=LOADING)), CTX, failed, now_ms=LATER)
    assert "lastFailureInfo" not in loading


def test_waiting_for_the_runtime():
    ctx = StatusContext("models", runtime=RuntimeState.NOT_UP)
    status = predictor_status(_vmodel(_model("m-1")), ctx, now_ms=NOW)
    assert status["activeModelState"] == "Loading" and not status["available"]
    assert status["lastFailureInfo"] == {"reason": "RuntimeUnhealthy",
                                         "message": "Waiting for supporting runtime Pod to become available",
                                         "modelId": "m-1", "time": rfc3339(NOW)}
    assert status["totalCopies"] == 0
    # Resync an hour later: same failure, same time, same dict.
    assert predictor_status(_vmodel(_model("m-1")), ctx, status, now_ms=LATER) == status
    # The runtime is up and the model loads: the wait is kept until it is loaded.
    loading = predictor_status(_vmodel(_model("m-1", copies=LOADING)), CTX, status, now_ms=LATER)
    assert loading["lastFailureInfo"] == status["lastFailureInfo"] and not loading["available"]
    loaded = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, loading, now_ms=LATER)
    assert "lastFailureInfo" not in loaded and loaded["available"]


@pytest.mark.parametrize("runtime, reason, message", [
    (RuntimeState.NO_SUPPORTING, "NoSupportingRuntime", "No ServingRuntime supports specified model type and/or protocol"),
    (RuntimeState.NOT_RECOGNIZED, "RuntimeNotRecognized", "Specified runtime name not recognized"),
])
def test_no_runtime_for_the_model(runtime, reason, message):
    status = predictor_status(_vmodel(_model("m-1", claims={"i-9": CopyClaim("loading", NOW - 10)})),
                              StatusContext("models", runtime=runtime), now_ms=NOW)
    assert status["activeModelState"] == "FailedToLoad" and not status["available"]
    assert status["lastFailureInfo"] == {"reason": reason, "message": message, "modelId": "m-1", "time": rfc3339(NOW)}
    assert status["totalCopies"] == 0  # copy infos are not counted for a runtime failure


def test_a_runtime_problem_concerns_the_target_only():
    ctx = StatusContext("models", runtime=RuntimeState.NOT_RECOGNIZED)
    status = predictor_status(_vmodel(_model("m-1", copies=LOADED), _model("m-2"), target_id="m-2"), ctx, now_ms=NOW)
    assert (status["activeModelState"], status["targetModelState"]) == ("Loaded", "FailedToLoad")
    assert status["available"] and status["lastFailureInfo"]["reason"] == "RuntimeNotRecognized"
    assert status["totalCopies"] == 1
    # A loaded model is loaded whatever the context says.
    assert predictor_status(_vmodel(_model("m-1", copies=LOADED)), ctx, now_ms=NOW)["activeModelState"] == "Loaded"


def test_a_different_failure_gets_a_new_time():
    ctx = StatusContext("models", runtime=RuntimeState.NOT_UP)
    waiting = predictor_status(_vmodel(_model("m-1")), ctx, now_ms=NOW)
    unsupported = predictor_status(_vmodel(_model("m-1")), StatusContext("models", runtime=RuntimeState.NO_SUPPORTING),
                                   waiting, now_ms=LATER)
    assert unsupported["lastFailureInfo"]["time"] == rfc3339(LATER)


def test_runtime_state_from_the_type_label():
    assert runtime_state("rt:triton-2.x", supported=False, up=False) is RuntimeState.NOT_RECOGNIZED
    assert runtime_state("mt:onnx|pv:grpc-v2", supported=False, up=False) is RuntimeState.NO_SUPPORTING
    assert runtime_state("mt:onnx", supported=True, up=False) is RuntimeState.NOT_UP
    assert runtime_state("mt:onnx", supported=True, up=True) is RuntimeState.UP


def test_an_invalid_spec():
    previous = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, now_ms=NOW)
    status = invalid_spec_status("Only one of spec.path and spec.storage.path can be specified", "m-2", CTX, previous,
                                 _vmodel(_model("m-1", copies=LOADED)))
    assert status["transitionStatus"] == "InvalidSpec"
    assert status["lastFailureInfo"] == {"reason": "InvalidPredictorSpec", "modelId": "m-2",
                                         "message": "Only one of spec.path and spec.storage.path can be specified"}
    assert status["activeModelState"] == "Loaded" and status["available"] and status["totalCopies"] == 1
    # Without the fabric, the rest stays as it was.
    alone = invalid_spec_status("bad", "", CTX, previous)
    assert {k: v for k, v in alone.items() if k not in ("transitionStatus", "lastFailureInfo")} == \
        {k: v for k, v in previous.items() if k not in ("transitionStatus", "lastFailureInfo")}
    assert alone["lastFailureInfo"] == {"reason": "InvalidPredictorSpec", "message": "bad"}
    assert invalid_spec_status("bad", "", CTX, alone) == alone


def test_the_fabric_unreachable_and_an_owner_conflict():
    previous = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, now_ms=NOW)
    down = fabric_unavailable_status("m-1", previous)
    assert down["lastFailureInfo"] == {"reason": "RuntimeUnhealthy", "message": "Waiting for runtime Pod to become available",
                                       "modelId": "m-1"}
    assert down["activeModelState"] == "Loaded" and down["totalCopies"] == 1
    assert should_load_now(down) is False
    conflict = owner_conflict_status(previous)
    assert conflict["lastFailureInfo"] == {"reason": "InvalidPredictorSpec",
                                           "message": "Predictor already exists with the same name from a different source"}


def test_endpoints():
    tls = StatusContext("ns", service_name="mm", grpc_port=9000, http_port=9001, tls=True)
    assert (tls.grpc_endpoint, tls.http_endpoint) == ("grpc://mm.ns:9000", "https://mm.ns:9001")
    no_rest = StatusContext("ns", rest_enabled=False)
    assert no_rest.http_endpoint == ""
    assert predictor_status(None, no_rest, now_ms=NOW)["httpEndpoint"] == ""


def test_load_now():
    assert should_load_now(None)  # new: Pending
    assert should_load_now({"activeModelState": "FailedToLoad"})
    assert should_load_now({"activeModelState": "Loaded", "targetModelState": "Loading"})
    assert should_load_now({"activeModelState": "Loading", "lastFailureInfo": {"reason": "RuntimeUnhealthy"}})
    assert not should_load_now({"activeModelState": "Loading"})
    assert not should_load_now({"activeModelState": "Loaded", "targetModelState": ""})
    assert not should_load_now(None, deleting=True)


# -- stability ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("vmodel, runtime", [
    (_vmodel(_model("m-1", copies=LOADED)), RuntimeState.UP),
    (_vmodel(_model("m-1", failures=FAILED)), RuntimeState.UP),
    (_vmodel(_model("m-1", copies=LOADED), _model("m-2", failures=FAILED), target_id="m-2", failure="x"), RuntimeState.UP),
    (_vmodel(_model("m-1")), RuntimeState.NOT_UP),
    (_vmodel(_model("m-1")), RuntimeState.NO_SUPPORTING),
    (_vmodel(_model("m-1"), _model("m-2"), target_id="m-2"), RuntimeState.NOT_RECOGNIZED),
])
def test_a_resync_writes_nothing(vmodel, runtime):
    ctx = StatusContext("models", runtime=runtime)
    first = predictor_status(vmodel, ctx, now_ms=NOW)
    again = predictor_status(vmodel, ctx, first, now_ms=LATER)
    assert again == first and status_patch(first, again) == {}
    isvc = inference_service_status(first, None, now_ms=NOW)
    isvc_again = inference_service_status(
        predictor_status(vmodel, ctx, predictor_status_from_inference_service(isvc), now_ms=LATER), isvc, now_ms=LATER)
    assert isvc_again == isvc


# -- InferenceService --------------------------------------------------------------------------------

def test_an_available_inference_service():
    predictor = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, now_ms=NOW)
    status = inference_service_status(predictor, None, now_ms=NOW)
    assert status == {
        "conditions": [{"type": "PredictorReady", "status": "True", "lastTransitionTime": rfc3339(NOW)},
                       {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(NOW)}],
        "url": GRPC,
        "components": {"predictor": {"url": GRPC, "grpcUrl": GRPC, "restUrl": HTTP}},
        "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"},
                        "copies": {"failedCopies": 0, "totalCopies": 1}},
    }
    no_rest = predictor_status(_vmodel(_model("m-1", copies=LOADED)), StatusContext("models", rest_enabled=False),
                               now_ms=NOW)
    assert inference_service_status(no_rest, None, now_ms=NOW)["components"]["predictor"] == {"url": GRPC, "grpcUrl": GRPC}


def test_an_unavailable_inference_service_and_its_condition_times():
    ctx = StatusContext("models", runtime=RuntimeState.NOT_UP)
    waiting = predictor_status(_vmodel(_model("m-1")), ctx, now_ms=NOW)
    status = inference_service_status(waiting, None, now_ms=NOW)
    assert status["conditions"] == [{"type": "PredictorReady", "status": "False", "lastTransitionTime": rfc3339(NOW)},
                                    {"type": "Ready", "status": "False", "lastTransitionTime": rfc3339(NOW)}]
    assert "url" not in status and "components" not in status
    assert status["modelStatus"] == {
        "transitionStatus": "UpToDate", "states": {"activeModelState": "Loading"}, "copies": {"failedCopies": 0},
        "lastFailureInfo": {"reason": "RuntimeUnhealthy", "message": "Waiting for supporting runtime Pod to become available",
                            "modelRevisionName": "m-1", "time": rfc3339(NOW)}}
    # Read back as upstream reads it, the wait is still a wait.
    back = predictor_status_from_inference_service(status)
    assert back["lastFailureInfo"]["modelId"] == "m-1" and not back["available"]

    # Loaded later: the conditions change and get the new time; the patch removes the failure.
    loaded = predictor_status(_vmodel(_model("m-1", copies=LOADED)), CTX, back, now_ms=LATER)
    ready = inference_service_status(loaded, status, now_ms=LATER)
    assert [c["lastTransitionTime"] for c in ready["conditions"]] == [rfc3339(LATER)] * 2
    assert [c["status"] for c in ready["conditions"]] == ["True", "True"]
    patch = status_patch(status, ready)
    assert patch["modelStatus"]["lastFailureInfo"] is None
    assert patch["url"] == GRPC and patch["components"]["predictor"]["grpcUrl"] == GRPC
    # Unchanged conditions keep their time even when something else changes.
    transitioning = predictor_status(_vmodel(_model("m-1", copies=LOADED), _model("m-2", copies=LOADING),
                                             target_id="m-2"), CTX, loaded, now_ms=LATER + 5000)
    moved = inference_service_status(transitioning, ready, now_ms=LATER + 5000)
    assert moved["conditions"] == ready["conditions"]
    assert moved["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": "Loading"}


def test_a_previous_condition_with_a_reason_is_a_different_condition():
    previous = {"conditions": [{"type": "PredictorReady", "status": "False", "reason": "Other",
                                "lastTransitionTime": rfc3339(NOW)}]}
    predictor = predictor_status(_vmodel(_model("m-1", failures=FAILED)), CTX, now_ms=LATER)
    status = inference_service_status(predictor, previous, now_ms=LATER)
    assert status["conditions"][0] == {"type": "PredictorReady", "status": "False", "lastTransitionTime": rfc3339(LATER)}


def test_predictor_status_from_an_empty_inference_service_status():
    assert predictor_status_from_inference_service(None) == {
        "available": False, "transitionStatus": "", "activeModelState": "Pending", "targetModelState": "",
        "httpEndpoint": "", "grpcEndpoint": "", "totalCopies": 0, "failedCopies": 0}


def test_status_patch():
    assert status_patch({"a": 1, "b": {"c": 1, "d": 2}, "e": [1]}, {"a": 1, "b": {"c": 2}, "e": [1, 2]}) == \
        {"b": {"c": 2, "d": None}, "e": [1, 2]}
    assert status_patch(None, {"a": 1}) == {"a": 1}
    assert status_patch({"a": {"x": 1}}, {"a": {"x": 1}}) == {}


def test_either_kind():
    vmodel = _vmodel(_model("m-1", copies=LOADED))
    predictor = predictor_status(vmodel, CTX, now_ms=NOW)
    assert resource_status("Predictor", vmodel, CTX, None, now_ms=NOW) == predictor
    isvc = resource_status("InferenceService", vmodel, CTX, None, now_ms=NOW)
    assert isvc == inference_service_status(predictor, None, now_ms=NOW)
    assert resource_status("InferenceService", vmodel, CTX, isvc, now_ms=LATER) == isvc
    refused = invalid_resource_status("InferenceService", "no valid InferenceService predictor framework found", "", CTX, isvc,
                          now_ms=LATER)
    assert refused["modelStatus"]["transitionStatus"] == "InvalidSpec"
    assert refused["modelStatus"]["lastFailureInfo"] == {"reason": "InvalidPredictorSpec",
                                                         "message": "no valid InferenceService predictor framework found"}
    assert refused["conditions"] == isvc["conditions"]  # still available: nothing else changed
    assert invalid_resource_status("Predictor", "bad", "m-2", CTX, predictor, now_ms=LATER) == \
        invalid_spec_status("bad", "m-2", CTX, predictor)
    assert StatusContext("models", http_port=None).http_endpoint == ""
