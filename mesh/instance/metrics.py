"""`AgentMetrics`: ModelMesh's instance metrics, registered on a registry that is passed in.

Guarantees: the metric names, types and buckets are ModelMesh's, so its dashboards read
them unchanged; nothing here reads the manager (the owners set the values). Evictions are
counted by `modelmesh_age_at_eviction_milliseconds_count`, as in ModelMesh (no counter).
`meshserve_instance_loads_in_progress` is meshserve's own: ModelMesh has no gauge of it, nor
of GPU memory: `meshserve_instance_device_capacity_bytes` and `_device_used_bytes` are
meshserve's, next to the host ones (0 on an instance without a GPU, as in its record).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

from protos.metrics_exposition import AGE_BUCKETS_MS

__all__ = ["AGE_BUCKETS_MS", "AgentMetrics"]


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
        self.used_bps = Gauge("modelmesh_instance_used_bps", "Used bytes over capacity, in basis points (0-10000)",
                              registry=registry)
        self.lru = Gauge("modelmesh_instance_lru_seconds",
                         "Last use of the least recently used loaded model (epoch seconds; 0 when none)",
                         registry=registry)
        self.lru_age = Gauge("modelmesh_instance_lru_age_seconds",
                             "Seconds since the least recently used loaded model was last used (0 when none)",
                             registry=registry)
        self.models = Gauge("modelmesh_instance_models_total", "Models loaded or loading on this instance",
                            registry=registry)
        self.loading = Gauge("meshserve_instance_loads_in_progress", "Models being loaded on this instance",
                             registry=registry)
        self.device_capacity = Gauge("meshserve_instance_device_capacity_bytes",
                                     "GPU bytes of models this instance may hold, apart from host memory (0: no GPU)",
                                     registry=registry)
        self.device_used = Gauge("meshserve_instance_device_used_bytes",
                                 "GPU bytes held by loaded models and reserved by loads in progress, with the "
                                 "backends' device overhead", registry=registry)
        self.age_at_eviction = Histogram("modelmesh_age_at_eviction_milliseconds",
                                         "Time since a copy's last use when it was evicted",
                                         buckets=AGE_BUCKETS_MS, registry=registry)

    def set_usage(self, capacity_bytes: int, used_bytes: int) -> None:
        self.capacity.set(capacity_bytes)
        self.used.set(used_bytes)
        self.used_bps.set(min(10_000, used_bytes * 10_000 // capacity_bytes) if capacity_bytes > 0 else 0)

    def set_device_usage(self, capacity_bytes: int, used_bytes: int) -> None:
        self.device_capacity.set(capacity_bytes)
        self.device_used.set(used_bytes)

