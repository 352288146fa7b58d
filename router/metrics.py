"""The router's Prometheus metrics, on a registry passed in.

ModelMesh's names (the router is the fabric's front door, where ModelMesh times its API):
- `modelmesh_api_request_milliseconds{method, code}`: V2 gRPC calls answered, as the router
  sees them (method: the short gRPC method name, code: the gRPC status name);
- `modelmesh_request_size_bytes` / `modelmesh_response_size_bytes{method, code}`: payloads of
  the forwarded calls (no response size for a call that failed);
- `modelmesh_cache_miss_milliseconds`: a call's wait for its model to be loaded, when over
  10 ms (as ModelMesh records it).
With `per_model` those four also have `modelId` (the concrete model) and `vModelId` (the
vmodel the caller named; empty otherwise), for at most `max_models` distinct values each
(the rest share `__other__`).

meshserve's own:
- `meshserve_router_retries_total{reason}`: forwards retried on another copy
  (reason: unavailable, not_found);
- `meshserve_router_in_flight{instance}`: requests in flight from this router per
  instance, read at scrape time (nothing on the request path); at most `max_instances`
  labels, the rest summed under `__other__`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from protos.metrics_exposition import MESSAGE_SIZE_BUCKETS, OTHER, TIMING_BUCKETS_MS, BoundedLabels

__all__ = ["RouterMetrics"]

#: ModelMesh records a cache miss only when the wait was longer than this (milliseconds).
MISS_THRESHOLD_MS = 10.0


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_instances: int = 50, per_model: bool = False,
                 max_models: int = 100) -> None:
        self.per_model = per_model
        self._model_label = BoundedLabels(max_models)
        self._vmodel_label = BoundedLabels(max_models)
        model_labels = ["modelId", "vModelId"] if per_model else []
        call_labels = ["method", "code", *model_labels]
        self._api = Histogram("modelmesh_api_request_milliseconds", "Time of a V2 call through the router.",
                              call_labels, buckets=TIMING_BUCKETS_MS, registry=registry)
        self._request_size = Histogram("modelmesh_request_size_bytes", "Size of a forwarded request (bytes).",
                                       call_labels, buckets=MESSAGE_SIZE_BUCKETS, registry=registry)
        self._response_size = Histogram("modelmesh_response_size_bytes", "Size of a forwarded response (bytes).",
                                        call_labels, buckets=MESSAGE_SIZE_BUCKETS, registry=registry)
        self._miss = Histogram("modelmesh_cache_miss_milliseconds",
                               "Time a call waited for its model to be loaded (when over 10 ms).",
                               model_labels, buckets=TIMING_BUCKETS_MS, registry=registry)
        self._retries = Counter("meshserve_router_retries", "Forwards retried on another copy, by reason.",
                                ["reason"], registry=registry)
        # Label lookups cost microseconds per call; keep the children (bounded by the label caps).
        self._children: dict[tuple[str, ...], tuple[Histogram, Histogram, Histogram]] = {}
        self._in_flight_source: Callable[[], dict[str, int]] | None = None
        self.max_instances = max_instances
        registry.register(_InFlightCollector(self))

    def _labels(self, model_id: str, vmodel_id: str) -> tuple[str, ...]:
        if not self.per_model:
            return ()
        return (self._model_label(model_id) if model_id else "", self._vmodel_label(vmodel_id) if vmodel_id else "")

    def observe_call(self, method: str, code: str, seconds: float, request_bytes: int | None = None,
                     response_bytes: int | None = None, model_id: str = "", vmodel_id: str = "") -> None:
        key = (method, code, *self._labels(model_id, vmodel_id))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._api.labels(*key), self._request_size.labels(*key),
                                               self._response_size.labels(*key))
        children[0].observe(seconds * 1000)
        if request_bytes is not None:
            children[1].observe(request_bytes)
        if response_bytes is not None:
            children[2].observe(response_bytes)

    def retried(self, reason: str) -> None:
        self._retries.labels(reason).inc()

    def cache_miss(self, seconds: float, model_id: str = "") -> None:
        ms = seconds * 1000
        if ms <= MISS_THRESHOLD_MS:
            return
        if self.per_model:
            self._miss.labels(*self._labels(model_id, "")).observe(ms)
        else:
            self._miss.observe(ms)

    def watch_in_flight(self, source: Callable[[], dict[str, int]]) -> None:
        """Read in-flight counts from `source()` at scrape time (`Router.in_flight`)."""
        self._in_flight_source = source


class _InFlightCollector:
    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return [GaugeMetricFamily("meshserve_router_in_flight", "Requests in flight from this router, per instance.",
                                  labels=["instance"])]

    def collect(self):
        family = GaugeMetricFamily("meshserve_router_in_flight", "Requests in flight from this router, per instance.",
                                   labels=["instance"])
        source = self._metrics._in_flight_source
        counts = sorted((source() if source else {}).items(), key=lambda item: (-item[1], item[0]))
        limit = self._metrics.max_instances
        for instance, count in counts[:limit]:
            family.add_metric([instance], count)
        if len(counts) > limit:
            family.add_metric([OTHER], sum(count for _, count in counts[limit:]))
        yield family
