"""Prometheus metrics of one runtime, on a registry that is passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtimes.model_manager import ModelManager

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER = "__other__"


class BoundedLabels:
    """Model ids as label values, up to a limit; later models share the label `__other__`.

    Keeps the series count bounded when a runtime sees thousands of models.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, model_id: str) -> str:
        if model_id in self._known:
            return model_id
        if len(self._known) < self._limit:
            self._known.add(model_id)
            return model_id
        return OTHER


class RuntimeMetrics:
    """Inference counts and latency per model, memory, loads and unloads."""

    def __init__(self, registry: CollectorRegistry, max_model_labels: int = 100) -> None:
        self.label = BoundedLabels(max_model_labels)
        self._children: dict[tuple[str, str], tuple] = {}
        self.inferences = Counter("meshserve_runtime_inference_requests", "Inference requests by model and outcome",
                                  ["model", "code"], registry=registry)
        self.latency = Histogram("meshserve_runtime_inference_seconds", "Inference latency by model",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.loads = Counter("modelmesh_loadmodel", "Model loads by outcome", ["outcome"], registry=registry)
        self.load_time = Histogram("modelmesh_loadmodel_milliseconds", "Time to load a model",
                                   buckets=[b * 1000 for b in LOAD_BUCKETS], registry=registry)
        self.unloads = Counter("modelmesh_unloadmodel", "Model unloads", registry=registry)
        self.unload_time = Histogram("modelmesh_unloadmodel_milliseconds", "Time to unload a model",
                                     buckets=[b * 1000 for b in LOAD_BUCKETS], registry=registry)
        self.loaded = Gauge("meshserve_runtime_models_loaded", "Models loaded", registry=registry)
        self.used = Gauge("meshserve_runtime_used_bytes", "Bytes held by loaded models and loads in progress", registry=registry)
        self.capacity = Gauge("meshserve_runtime_capacity_bytes", "Bytes of models this runtime may hold", registry=registry)

    def watch(self, manager: ModelManager) -> None:
        """Read memory and model counts from the manager at scrape time."""
        self.loaded.set_function(lambda: len(manager.loaded_models()))
        self.used.set_function(lambda: manager.used_bytes)
        self.capacity.set_function(lambda: manager.capacity_bytes)

    def observe_inference(self, model_id: str, code: str, seconds: float) -> None:
        # Label lookups cost microseconds per call; keep the children (bounded by the label cap).
        label = self.label(model_id)
        children = self._children.get((label, code))
        if children is None:
            children = (self.inferences.labels(label, code), self.latency.labels(label))
            self._children[(label, code)] = children
        children[0].inc()
        if code == "OK":
            children[1].observe(seconds)

    # LifecycleObserver
    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None:
        self.loads.labels("success").inc()
        self.load_time.observe(seconds * 1000)

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None:
        self.loads.labels("failure").inc()

    def model_unloaded(self, model_id: str, seconds: float) -> None:
        self.unloads.inc()
        self.unload_time.observe(seconds * 1000)
