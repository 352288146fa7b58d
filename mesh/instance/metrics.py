"""`AgentMetrics`: ModelMesh's instance metrics, registered on a registry that is passed in.

Guarantees: the metric names, types and buckets are ModelMesh's, so its dashboards read
them unchanged; nothing here reads the manager (the owners set the values).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EVICTION_AGE_BUCKETS_MS", "AgentMetrics"]

#: Buckets of the age of a copy when it was evicted (milliseconds: 1 s .. 1 day).
EVICTION_AGE_BUCKETS_MS = (1_000, 10_000, 60_000, 300_000, 900_000, 3_600_000, 4 * 3_600_000, 86_400_000)


class AgentMetrics:
    """ModelMesh's instance metrics, on a registry that is passed in.

    Gauges are set on the agent's publish tick (from the event loop), not read from the
    manager at scrape time: the scrape runs on another thread.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.capacity = Gauge("modelmesh_instance_capacity_bytes", "Bytes of models this instance may hold",
                              registry=registry)
        self.used = Gauge("modelmesh_instance_used_bytes",
                          "Bytes held by loaded models and reserved by loads in progress", registry=registry)
        self.lru_age = Gauge("modelmesh_instance_lru_age_seconds",
                             "Seconds since the least recently used loaded model was last used", registry=registry)
        self.models = Gauge("modelmesh_instance_models_total", "Models loaded or loading on this instance",
                            registry=registry)
        self.evictions = Counter("modelmesh_evictions", "Copies unloaded to make room for a load",
                                 registry=registry)
        self.age_at_eviction = Histogram("modelmesh_age_at_eviction_milliseconds",
                                         "Time since a copy's last use when it was evicted",
                                         buckets=EVICTION_AGE_BUCKETS_MS, registry=registry)
