"""The router's Prometheus metrics, on a registry passed in.

- `meshserve_router_requests_total{method, code}`: calls answered, by V2 method and status;
- `meshserve_router_request_seconds{method}`: their latency as the router sees it;
- `modelmesh_cache_miss_milliseconds`: time spent waiting for a load (ModelMesh's name);
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

__all__ = ["RouterMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_MISS_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_instances: int = 50) -> None:
        self._calls = Counter("meshserve_router_requests", "V2 calls answered by the router, by method and status code.",
                              ["method", "code"], registry=registry)
        self._latency = Histogram("meshserve_router_request_seconds", "Latency of V2 calls through the router (seconds).",
                                  ["method"], buckets=_LATENCY_BUCKETS, registry=registry)
        self._miss = Histogram("modelmesh_cache_miss_milliseconds",
                               "Time a call waited for its model to be loaded (milliseconds).",
                               buckets=_MISS_BUCKETS_MS, registry=registry)
        self._retries = Counter("meshserve_router_retries", "Forwards retried on another copy, by reason.",
                                ["reason"], registry=registry)
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._in_flight_source: Callable[[], dict[str, int]] | None = None
        self.max_instances = max_instances
        registry.register(_InFlightCollector(self))

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            children = self._children[(method, code)] = (self._calls.labels(method, code), self._latency.labels(method))
        children[0].inc()
        children[1].observe(seconds)

    def retried(self, reason: str) -> None:
        self._retries.labels(reason).inc()

    def cache_miss(self, seconds: float) -> None:
        self._miss.observe(seconds * 1000)

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
            family.add_metric(["__other__"], sum(count for _, count in counts[limit:]))
        yield family
