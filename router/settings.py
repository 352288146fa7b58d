"""Settings of one router process: CLI flags override `MESHSERVE_ROUTER_*` variables override
defaults. How to reach the fabric is `mesh.settings.FabricSettings` (`MESHSERVE_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from protos.tls import TlsSettings

from protos.limits import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["RouterSettings"]


class RouterSettings(TlsSettings):
    """Every default of `meshserve router` is written here once."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ROUTER_", extra="forbid")

    host: str = Field("0.0.0.0", min_length=1, description="Address the gRPC and REST servers bind.")
    port: int = Field(8033, description="gRPC port: V2 inference and the mmesh.ModelMesh management API (ModelMesh's 8033).")
    rest_port: int = Field(8008, description="REST V2 port (KServe's 8008); 0 turns REST off.")
    metrics_port: int = Field(2112, description="Prometheus /metrics port; 0 turns it off. With several workers, worker i uses metrics_port + i.")
    per_model_metrics: bool = Field(False, description="Add modelId and vModelId labels to the request, size and "
                                    "cache-miss histograms (ModelMesh's per-model metrics; more series).")
    per_model_metrics_max_models: int = Field(100, ge=0, description="Distinct models (and vmodels) that get their own "
                                              "label value with per_model_metrics; the rest share __other__.")
    default_deadline_s: float = Field(60.0, gt=0, description="Deadline of a call that brings none (seconds); bounds the wait for a load.")
    max_tries: int = Field(3, ge=1, description="Instances one call is sent to at most before it fails UNAVAILABLE (copies gone or unreachable).")
    suspect_s: float = Field(2.0, ge=0, description="Seconds an instance that failed a call is tried last by other calls.")
    saturation_report_s: float = Field(5.0, ge=0, description="A model whose copies refuse calls as busy (their runtime's "
                                       "queue is full) is given one copy more at most once per this many seconds.")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0, description="Largest request or reply (bytes) "
                                   "the router forwards, gRPC or REST; larger ones get RESOURCE_EXHAUSTED (REST: 413) "
                                   "naming this limit. Runtimes must take at least as much: set theirs the same "
                                   "(the operator and chart pass grpcMaxMessageSizeBytes to both).")
    instance_streams: bool = Field(True, description="Send ModelInfer calls to meshserve runtimes as messages on one "
                                   "long-lived stream per instance (meshserve.stream.v1); instances without it, and "
                                   "every call when off, go as one unary call each.")
    native_front: bool = Field(False, description="Serve the gRPC port with the native front (meshserve-native-front, "
                               "C++, built by `make native`): it forwards ModelInfer calls for loaded models itself, at a "
                               "fraction of the CPU per call, and hands every other call to this router.")
    native_front_binary: str = Field("", description="Path of the meshserve-native-front binary (default: the one "
                                     "`make native` builds in router/native_front/).")
    dashboard_sample_s: float = Field(10.0, ge=0.1, le=600, description="Period of the dashboard's time series (seconds): it keeps one hour of samples (10 s: 360) in the router's memory.")
    workers: int = Field(1, ge=1, description="Router processes sharing the ports (SO_REUSEPORT); 1 runs in this process.")
    log_level: str = Field("INFO", description="Python logging level.")
