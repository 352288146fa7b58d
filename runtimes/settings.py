"""Settings of one runtime process: CLI flags override MESHSERVE_* variables override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from protos.tls import TlsSettings

from protos.limits import DEFAULT_MAX_MESSAGE_BYTES
from runtimes.cpus import usable_cpus
from runtimes.sizes import parse_size


class RuntimeSettings(TlsSettings):
    """Every default is written here once; docs/configuration.md lists them."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(8085, description="gRPC port for V2 inference and the model-runtime SPI (ModelMesh's runtime port).")
    metrics_port: int = Field(2112, description="Prometheus /metrics port; 0 turns it off.")
    per_model_metrics: bool = Field(False, description="Add modelId and vModelId labels to the inference histogram "
                                    "(ModelMesh's per-model metrics; more series).")
    per_model_metrics_max_models: int = Field(100, ge=0, description="Distinct models that get their own label value "
                                              "with per_model_metrics; the rest share __other__.")
    capacity: int | None = Field(
        None, description="Bytes of models this runtime may hold (e.g. 2GiB); unset: the container's memory limit "
        "less the process's resident memory once started (ONNX Runtime imported and set up) and capacity_buffer. "
        "Host memory also on a GPU, whose memory is device_capacity. Backends set up later (their first load) "
        "charge their import to the used bytes."
    )
    device_capacity: int | None = Field(
        None, description="Bytes of models the GPU may hold (device cuda), apart from capacity; unset: the device's "
        "free memory once started (NVML, else torch.cuda.mem_get_info) less device_memory_reserve.")
    device_memory_reserve: int = Field(1 << 30, description="GPU bytes kept free when device_capacity is derived: "
                                       "kernels' workspaces, a later backend's CUDA setup, fragmentation.")
    capacity_buffer: int = Field(256 << 20, description="Bytes kept free for the process itself when capacity is derived (ModelMesh's 256MiB).")
    models_dir: Path = Field(Path("/tmp/meshserve/models"), description="Local cache the puller writes model files to.")
    storage_config_dir: Path | None = Field(None, description="Folder of storage credentials, one JSON file per key (ModelMesh's storage-config Secret).")
    disk_budget: int | None = Field(None, description="Bytes the model cache may use on disk; unset: no limit.")
    size_factor: float = Field(1.25, description="Predicted in-memory size = bytes on disk times this, before a model is loaded.")
    default_model_size: int = Field(1 << 20, description="Predicted size when nothing is known of a model's files (bytes).")
    model_fixed_cost: int | None = Field(
        None, description="Bytes charged to every model besides its own data (weights, trees), e.g. 100KiB; unset: "
        "measured per backend by loading probe models (ONNX at start-up, the others at their first load; CPU "
        "only; a GPU runtime charges 0).")
    max_concurrency: int = Field(8, description="Requests one model runs at once; more wait in its queue.")
    max_queue: int = Field(256, ge=0, description="Requests that may wait per model before new ones get RESOURCE_EXHAUSTED.")
    max_instance_queue: int = Field(1024, ge=0, description="Requests that may wait across all models of this runtime "
                                    "before new ones that would wait get RESOURCE_EXHAUSTED (bounds queued memory).")
    max_loading_concurrency: int = Field(2, description="Loads that run at once.")
    dynamic_batching_max_batch_size: int = Field(
        0, ge=0, description="Batch the requests of every model with a batch dimension (a variable first "
        "dimension) up to this many rows, as Triton's dynamic batcher; 0: off. A model's modelKey `batching` "
        "or config.pbtxt `dynamic_batching` says otherwise for that model (docs/models.md).")
    dynamic_batching_max_queue_delay_us: int = Field(
        100, ge=0, description="Longest a request waits for others to batch with, with the runtime's default "
        "batching (microseconds).")
    model_loading_timeout_ms: int = Field(
        0, ge=0, description="Longest a load may take, reported in runtimeStatus (ModelMesh's modelLoadingTimeoutMs); "
        "0 leaves it to the placement layer. In a fabric the fabric's loading timeout is reported.")
    infer_threads: int = Field(default_factory=lambda: max(2, usable_cpus()), description="Worker threads running "
                               "inference (default: the usable cores, `runtimes.cpus`, at least 2).")
    max_batches_at_once: int = Field(default_factory=usable_cpus, ge=1, description="Batches one batched model "
                                     "runs at once (default: the usable cores). A batch is a core's work: two on "
                                     "one core only take turns, and each is smaller than one would have been.")
    threads_per_model: int = Field(1, description="Intra-op threads of each model (ONNX Runtime session, torch).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where models run: auto picks cuda when a GPU is visible.")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="Largest request or reply (bytes); "
                                   "larger ones get RESOURCE_EXHAUSTED naming this limit. At least the routers' "
                                   "max_message_bytes (the operator and chart pass grpcMaxMessageSizeBytes to both).")
    stream_service: bool = Field(True, description="Serve meshserve.stream.v1.InferenceStream, on which routers "
                                 "multiplex their ModelInfer calls; off, routers send this runtime unary calls.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("capacity", "capacity_buffer", "device_capacity", "device_memory_reserve", "disk_budget",
                     "default_model_size", "model_fixed_cost", "max_message_bytes", mode="before")
    @classmethod
    def _sizes(cls, value):
        return None if value is None or value == "" else parse_size(value)
