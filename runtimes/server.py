"""The runtime server: inference.GRPCInferenceService and mmesh.ModelRuntime on one gRPC
port (with grpc.health.v1.Health: SERVING once READY, NOT_SERVING from the start of `stop`),
Prometheus metrics on another. `start_runtime` starts one; the `meshserve runtime`
process around it (flags, signals, joining a fabric) is `mesh.cli.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from protos import grpc_service_pb2_grpc, meshserve_version, model_runtime_pb2_grpc
from protos.metrics_exposition import MetricsServer, serve_metrics
from protos.tls import add_port
from puller import Puller
from runtimes.backends import BackendRegistry, Device
from runtimes.backend_setup import BackendSetup
from runtimes.batching_policy import BatchingPolicy
from runtimes.dataplane import InferenceService
from runtimes.device_memory import DeviceMemoryReader, device_capacity, nvidia_device_present, read_device_memory
from runtimes.grpc_servicers import InferenceServicer, ModelRuntimeServicer
from runtimes.memory import STATM, map_large_allocations, release_free_memory, resident_bytes
from runtimes.metrics import RuntimeMetrics
from runtimes.model_manager import ManagerConfig, ModelManager
from runtimes.settings import RuntimeSettings
from runtimes.sizes import container_memory_limit, format_size
from runtimes.stream_servicer import FRAME_MARGIN_BYTES, InferenceStreamServicer, add_to_server as add_stream_to_server

log = logging.getLogger(__name__)

#: The backend set up before READY (`runtimes.backend_setup`); the others at their first load.
EAGER_BACKEND = "onnx"
#: What the health service answers for: the whole server ("") and each service on the port.
HEALTH_SERVICES = (OVERALL_HEALTH, "inference.GRPCInferenceService", "mmesh.ModelRuntime")


def resolve_device(setting: str) -> Device:
    if setting == "cpu":
        return Device("cpu")
    if setting == "cuda" or _gpu_visible():
        return Device("cuda", 0)
    return Device("cpu")


def _gpu_visible() -> bool:
    if not nvidia_device_present():  # without one, torch need not be imported to tell (seconds, ~100 MiB)
        return False
    try:
        import torch
    except ImportError:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return torch.cuda.is_available()


def resolve_capacity(settings: RuntimeSettings) -> int:
    """The flag's value, or the host memory models may use: the container's memory limit less
    what the process already holds (its resident memory now, the imports done) and the buffer.
    A GPU's memory is apart (`resolve_device_capacity`)."""
    if settings.capacity is not None:
        return settings.capacity
    total = container_memory_limit()
    if STATM.exists():
        release_free_memory()
        total -= resident_bytes()  # ~300 MiB with ONNX Runtime imported: no model's to take
    return max(total - settings.capacity_buffer, 0)


def resolve_device_capacity(settings: RuntimeSettings, device: Device,
                            read: DeviceMemoryReader = read_device_memory) -> int | None:
    """The GPU memory models may hold: the flag's value, or the device's free memory now (the
    backends set up before READY have their context and handles on it already) less
    `device_memory_reserve`; None on the CPU, or when the device's memory cannot be read
    (its models are then accounted in host memory only)."""
    if not device.is_gpu:
        return None
    if settings.device_capacity is not None:
        return settings.device_capacity
    memory = read(device.index)
    if memory is None:
        log.warning("cannot read the memory of GPU %d (no NVML, no torch); device bytes are not accounted",
                    device.index)
        return None
    return device_capacity(memory, settings.device_memory_reserve)


def default_batching(settings: RuntimeSettings) -> BatchingPolicy | None:
    """The batching of models whose modelKey and config.pbtxt say nothing; None: off."""
    if settings.dynamic_batching_max_batch_size <= 1:
        return None
    return BatchingPolicy(settings.dynamic_batching_max_batch_size,
                          max_queue_delay_us=settings.dynamic_batching_max_queue_delay_us)


def set_up_backends_on_first_use(manager: ModelManager, backends: BackendRegistry,
                                  settings: RuntimeSettings) -> BackendSetup:
    """Each backend is imported and (unless the settings fix the cost per model, or the
    models live on a GPU, whose memory RSS does not show) calibrated at its first load
    (`runtimes.backend_setup`)."""
    calibrate = settings.model_fixed_cost is None and not manager.config.device.is_gpu
    if settings.model_fixed_cost is not None:
        log.info("size calibration off: every model is charged %s besides its own data",
                 format_size(settings.model_fixed_cost))
    elif manager.config.device.is_gpu:
        log.info("size calibration off on a GPU: models are charged what their backend measures")
    return BackendSetup(manager, backends, meshserve_version(), calibrate)


@dataclass
class RunningRuntime:
    """A started runtime; `stop` drains it."""

    server: grpc.aio.Server
    manager: ModelManager
    puller: Puller
    port: int
    metrics_port: int | None
    ready: asyncio.Event
    health: health_aio.HealthServicer
    _metrics_http: MetricsServer | None = None
    stream: InferenceStreamServicer | None = None  # routers' multiplexed calls, when served

    async def stop(self, grace: float = 5.0) -> None:
        self.ready.clear()
        await self.health.enter_graceful_shutdown()  # NOT_SERVING, for good
        if self.stream is not None:  # else its open streams would hold the stop for the whole grace
            await self.stream.drain(grace)
        await self.server.stop(grace)
        await self.manager.close()
        await self.puller.aclose()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()


async def start_runtime(settings: RuntimeSettings, registry: CollectorRegistry | None = None) -> RunningRuntime:
    """Start serving; returns once the port is bound and the runtime reports READY."""
    server_tls = settings.tls_files().server()  # a file that does not load fails the start, before any work
    map_large_allocations()  # before the backends' imports and the calibration free big blocks
    device = resolve_device(settings.device)
    backends = BackendRegistry.default(settings.threads_per_model)  # ONNX Runtime's import counts below
    capacity = resolve_capacity(settings)
    config = ManagerConfig(
        capacity_bytes=capacity,
        size_factor=settings.size_factor,
        default_model_size=settings.default_model_size,
        max_concurrency=settings.max_concurrency,
        max_queue=settings.max_queue,
        max_instance_queue=settings.max_instance_queue,
        max_loading_concurrency=settings.max_loading_concurrency,
        infer_threads=settings.infer_threads,
        max_batches_at_once=settings.max_batches_at_once,
        device=device,
        model_fixed_cost=settings.model_fixed_cost or 0,
        batching=default_batching(settings),
    )
    registry = registry or CollectorRegistry()
    metrics = RuntimeMetrics(registry, per_model=settings.per_model_metrics,
                             max_models=settings.per_model_metrics_max_models)
    puller = Puller(settings.models_dir, storage_config_dir=settings.storage_config_dir,
                    disk_budget_bytes=settings.disk_budget)
    manager = ModelManager(config, backends, puller)
    service = InferenceService(manager, meshserve_version())
    setup = set_up_backends_on_first_use(manager, backends, settings)
    try:  # ONNX now, before the observers: nearly every runtime serves it, the rest on first use
        await setup.set_up_before_ready(EAGER_BACKEND)
        if settings.capacity is None:  # derived: less the resident memory now, ONNX's setup in
            capacity = resolve_capacity(settings)
            manager.set_capacity(capacity)
        manager.set_device_capacity(resolve_device_capacity(settings, device))  # ONNX's device setup in
    except BaseException:
        await manager.close()
        await puller.aclose()
        raise
    manager.add_observer(metrics)
    manager.add_probe(metrics)
    manager.on_request_queued = metrics.request_queued
    manager.on_batch_run = metrics.batch_ran
    metrics.watch_requests(manager.requests_in_flight)
    ready = asyncio.Event()
    # Streamed calls carry a request or reply plus a frame's id and headers, and a router may
    # re-point a request at its model (a longer name): grpc allows a frame more than
    # max_message_bytes, which the servicers check themselves, naming the setting.
    frame_bytes = settings.max_message_bytes + FRAME_MARGIN_BYTES
    options = [
        ("grpc.max_receive_message_length", frame_bytes),
        ("grpc.max_send_message_length", frame_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(service, manager, metrics, ready, settings.max_message_bytes), server)
    stream = InferenceStreamServicer(service, metrics, settings.max_message_bytes) if settings.stream_service else None
    if stream is not None:
        add_stream_to_server(stream, server)
    model_runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(
        ModelRuntimeServicer(manager, ready, meshserve_version(), settings.model_loading_timeout_ms), server)
    health_servicer = health_aio.HealthServicer()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Bind every port before serving anything: a taken port fails the start, not a runtime
    # that is already answering on one port and then dies.
    port = add_port(server, f"{settings.host}:{settings.port}", server_tls)
    metrics_http, metrics_port = None, None
    try:
        if port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}: the port is taken or the address is wrong")
        if settings.metrics_port:
            try:
                metrics_http = serve_metrics(registry, settings.host, settings.metrics_port,
                                             **settings.metrics_tls())
            except OSError as error:
                raise OSError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: "
                              f"{error.strerror or error}") from None
            metrics_port = metrics_http.port
        await server.start()
    except BaseException:
        if metrics_http is not None:
            metrics_http.shutdown()
        await manager.close()
        await puller.aclose()
        raise
    # A fresh process holds nothing, so it is READY at once (ModelMesh: purge before READY).
    ready.set()
    for service in HEALTH_SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    device_room = manager.device_capacity_bytes
    log.info("runtime listening on %s:%d%s, capacity %s on %s%s, metrics on %s", settings.host, port,
             f" (TLS, client certificates: {settings.tls_client_auth})" if server_tls else "",
             format_size(capacity), device.kind,
             f" (device capacity {format_size(device_room)})" if device_room is not None else "", metrics_port or "off")
    return RunningRuntime(server, manager, puller, port, metrics_port, ready, health_servicer, metrics_http, stream)
