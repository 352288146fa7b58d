"""RouterMetrics on its own: ModelMesh's miss threshold, per-model labels and their cap."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from protos import grpc_service_pb2 as pb
from router.dataplane import DataPlane
from router.metrics import RouterMetrics


def test_a_miss_is_recorded_only_when_the_wait_was_over_10_ms():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.cache_miss(0.004, "m")
    assert registry.get_sample_value("modelmesh_cache_miss_milliseconds_count") == 0
    metrics.cache_miss(0.250, "m")
    assert registry.get_sample_value("modelmesh_cache_miss_milliseconds_count") == 1
    assert registry.get_sample_value("modelmesh_cache_miss_milliseconds_sum") == 250


def test_without_per_model_labels_calls_have_method_and_code_only():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.observe_call("ModelInfer", "OK", 0.002, 300, 40, model_id="m", vmodel_id="v")
    assert registry.get_sample_value("modelmesh_api_request_milliseconds_count",
                                     {"method": "ModelInfer", "code": "OK"}) == 1
    assert registry.get_sample_value("modelmesh_request_size_bytes_sum", {"method": "ModelInfer", "code": "OK"}) == 300
    assert registry.get_sample_value("modelmesh_response_size_bytes_sum", {"method": "ModelInfer", "code": "OK"}) == 40


def test_per_model_labels_are_capped_and_the_rest_share_other():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry, per_model=True, max_models=2)
    for model in ("a", "b", "c", "d"):
        metrics.observe_call("ModelInfer", "OK", 0.001, 10, 10, model_id=model, vmodel_id="")
    metrics.cache_miss(0.5, "c")

    def calls(model: str) -> float | None:
        return registry.get_sample_value("modelmesh_api_request_milliseconds_count",
                                         {"method": "ModelInfer", "code": "OK", "modelId": model, "vModelId": ""})

    assert (calls("a"), calls("b"), calls("__other__"), calls("c")) == (1, 1, 2, None)
    assert registry.get_sample_value("modelmesh_cache_miss_milliseconds_count",
                                     {"modelId": "__other__", "vModelId": ""}) == 1
    metrics.observe_call("ModelInfer", "OK", 0.001, 10, 10, model_id="a", vmodel_id="stable")
    assert registry.get_sample_value("modelmesh_api_request_milliseconds_count",
                                     {"method": "ModelInfer", "code": "OK", "modelId": "a", "vModelId": "stable"}) == 1


class _Vmodel:
    def __init__(self, active: str) -> None:
        self.active_model_id = active


class _View:
    """The two FabricView reads `DataPlane.call_labels` makes: one vmodel `stable` -> `m-v2`."""

    def vmodel(self, vmodel_id: str):
        return _Vmodel("m-v2") if vmodel_id == "stable" else None

    def resolve(self, name: str) -> str:
        return "m-v2" if name == "stable" else name


def test_call_labels_name_the_model_called_and_the_vmodel_the_caller_named():
    dataplane = DataPlane(router=None, view=_View(), default_deadline_s=1)
    body = pb.ModelInferRequest(model_name="stable").SerializeToString()
    assert dataplane.call_labels(body, None, None) == ("m-v2", "stable")  # the request's own name was a vmodel
    plain = pb.ModelInferRequest(model_name="m-v1").SerializeToString()
    assert dataplane.call_labels(plain, None, None) == ("m-v1", "")
    assert dataplane.call_labels(plain, None, "stable") == ("m-v2", "stable")  # mm-vmodel-id header
    assert dataplane.call_labels(plain, "m-v3", None) == ("m-v3", "")  # mm-model-id header
    assert dataplane.call_labels(plain, None, "nope") == ("", "nope")  # an undefined vmodel: no model
    assert dataplane.call_labels(b"\xff\xff", None, None) == ("", "")  # a request that does not parse
