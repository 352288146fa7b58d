"""Prometheus metrics of a holder of models, under ModelMesh's names, on a registry passed in.

- `LifecycleMetrics`: what every holder's lifecycle (`runtimes.lifecycle`) reports, in a
  runtime process and in `meshserve agent` alike: `modelmesh_loadmodel_milliseconds`
  (successful loads), `modelmesh_unloadmodel_milliseconds`,
  `modelmesh_loading_queue_delay_milliseconds` (a load's wait for its turn, for room and for
  a loading slot), `modelmesh_model_sizing_milliseconds` (predicting a model's size before it
  loads), `modelmesh_loaded_model_size_bytes`, and the bare counters
  `modelmesh_loadmodel_failure`, `modelmesh_unloadmodel_failure` and
  `modelmesh_unloadmodel_attempt_failure` (meshserve tries an unload once; a retry is a new
  unload, so the last two move together).
- `RuntimeMetrics`: those plus the runtime's own requests: `modelmesh_invoke_model_milliseconds
  {method, code}` (the call into the model, as ModelMesh times its call into the model
  server) and `modelmesh_req_queue_delay_milliseconds` (a request's wait for one of its
  model's concurrency slots; for a batched model, for its batch to start) and
  `meshserve_batch_size` (the rows of each batch a batched model ran; Triton's
  inference count over execution count, as a distribution), and `meshserve_requests_in_flight`
  (requests taken and not yet answered, queued or running, all models: Triton's pending
  count plus those executing), a gauge read when scraped, so it costs a request nothing.
  With `per_model` the invoke histogram also has `modelId` and
  `vModelId` (always empty here: only the router knows the name a caller used), for at most
  `max_models` distinct models.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram

from protos.metrics_exposition import MODEL_SIZE_BUCKETS, TIMING_BUCKETS_MS, BareCounter, BoundedLabels

#: Rows per batch: powers of two up to Triton's usual largest max_batch_size.
BATCH_SIZE_BUCKETS = tuple(2 ** k for k in range(11))

__all__ = ["LifecycleMetrics", "RuntimeMetrics"]


class LifecycleMetrics:
    """ModelMesh's load and unload metrics; a `LifecycleObserver` and a `LifecycleProbe`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def timing(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, buckets=TIMING_BUCKETS_MS, registry=registry)

        self.load_time = timing("modelmesh_loadmodel_milliseconds", "Time to load a model (successful loads).")
        self.unload_time = timing("modelmesh_unloadmodel_milliseconds", "Time to unload a model.")
        self.loading_queue = timing("modelmesh_loading_queue_delay_milliseconds",
                                    "Time a load waited before it started (its turn, room, a loading slot).")
        self.sizing = timing("modelmesh_model_sizing_milliseconds", "Time to size a model before loading it.")
        self.loaded_size = Histogram("modelmesh_loaded_model_size_bytes", "Size of each loaded copy (bytes).",
                                     buckets=MODEL_SIZE_BUCKETS, registry=registry)
        self.load_failures = BareCounter("modelmesh_loadmodel_failure", "Model loads that failed.", registry)
        self.unload_failures = BareCounter("modelmesh_unloadmodel_failure", "Model unloads that failed.", registry)
        self.unload_attempt_failures = BareCounter("modelmesh_unloadmodel_attempt_failure",
                                                   "Unload attempts that failed.", registry)

    # LifecycleObserver
    def model_loaded(self, model_id: str, seconds: float, size_bytes: int) -> None:
        self.load_time.observe(seconds * 1000)
        self.loaded_size.observe(size_bytes)

    def model_load_failed(self, model_id: str, seconds: float, error: BaseException) -> None:
        self.load_failures.inc()

    def model_unloaded(self, model_id: str, seconds: float) -> None:
        self.unload_time.observe(seconds * 1000)

    # LifecycleProbe
    def load_queued(self, model_id: str, seconds: float) -> None:
        self.loading_queue.observe(seconds * 1000)

    def model_sized(self, model_id: str, seconds: float) -> None:
        self.sizing.observe(seconds * 1000)

    def unload_failed(self, model_id: str, error: BaseException) -> None:
        self.unload_attempt_failures.inc()
        self.unload_failures.inc()


class RuntimeMetrics(LifecycleMetrics):
    """A runtime's metrics: the lifecycle's plus its inference calls and their queueing."""

    def __init__(self, registry: CollectorRegistry, *, per_model: bool = False, max_models: int = 100) -> None:
        super().__init__(registry)
        self.per_model = per_model
        self._label = BoundedLabels(max_models)
        labels = ["method", "code", "modelId", "vModelId"] if per_model else ["method", "code"]
        self.invoke = Histogram("modelmesh_invoke_model_milliseconds",
                                "Time of an inference call into the model that holds the copy.",
                                labels, buckets=TIMING_BUCKETS_MS, registry=registry)
        self.queue_delay = Histogram("modelmesh_req_queue_delay_milliseconds",
                                     "Time a request waited for its model's concurrency slot.",
                                     buckets=TIMING_BUCKETS_MS, registry=registry)
        self.in_flight = Gauge("meshserve_requests_in_flight", "Requests taken and not yet answered (queued or "
                               "running), all models.", registry=registry)
        self.batch_size = Histogram("meshserve_batch_size", "Rows of each batch a batched model ran.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        # Label lookups cost microseconds per call; keep the children (bounded by the label cap).
        self._children: dict[tuple[str, ...], Histogram] = {}

    def observe_inference(self, model_id: str, code: str, seconds: float, method: str = "ModelInfer") -> None:
        key = (method, code, self._label(model_id), "") if self.per_model else (method, code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.invoke.labels(*key)
        child.observe(seconds * 1000)

    def watch_requests(self, in_flight: Callable[[], float]) -> None:
        """`meshserve_requests_in_flight` reads `in_flight` when scraped (from the metrics thread)."""
        self.in_flight.set_function(in_flight)

    def request_queued(self, seconds: float) -> None:
        self.queue_delay.observe(seconds * 1000)

    def batch_ran(self, rows: int) -> None:
        self.batch_size.observe(rows)
