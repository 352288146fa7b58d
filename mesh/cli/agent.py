"""`meshserve agent`: the instance agent over the wire, beside a runtime of another kind.

For any runtime that speaks the model-runtime SPI (`mmesh.ModelRuntime`) and V2 inference:
modelmesh-runtime-adapter with Triton or MLServer, or a plain `meshserve runtime` without
`--etcd`. The agent

1. binds its own gRPC port (`--port`) and metrics port, then waits for the runtime at
   `--runtime-address` to report READY in runtimeStatus (its capacity comes from there unless
   `--capacity` is given), and unloads what the runtime holds from before (`purge`);
2. serves the SPI to the fabric on `--port` (`mesh.instance.spi_front`): the fabric's loads and
   unloads come here, make room by LRU eviction (unloading over the SPI), are forwarded to
   the runtime, and their sizes are recorded;
3. registers the instance under a lease (`InstanceAgent`, as in process) with `address` =
   this agent (`--advertise-address`, for the fabric's SPI calls), `data_address` = the
   runtime's V2 endpoint (`--runtime-data-address`, for routers; empty: `--runtime-address`)
   and `labels` (`--labels`: the runtime's `rt:`, `mt:`, `pv:` labels);
4. polls the runtime's V2 ModelStatistics on each publish tick (last use and request rates),
   and its runtimeStatus every `--health-interval-s`.

`grpc.health.v1.Health` on `--port` (overall and `mmesh.ModelRuntime`) is SERVING once the
runtime is READY and the agent serves the SPI and has begun registering (steps 1 to 3), and
NOT_SERVING once the runtime is gone or the agent stops.

When the runtime is gone (`--health-failures` runtimeStatus checks in a row fail or are not
READY: killed, crashed, restarted without its models) the agent leaves the fabric and exits
with status 1: it publishes `shutting_down`, forgets the runtime's copies (their model
records are updated), revokes its lease so the instance goes at once (at the latest when the
lease TTL runs out, if etcd is unreachable), and lets its supervisor (Kubernetes) start it
again, to wait for the runtime anew. A killed agent stops renewing its lease: the instance
goes within the TTL. SIGTERM/SIGINT: publish `shutting_down`, stop serving, unload every model
from the runtime (records updated), revoke the lease; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mesh.aio.tasks import TaskSupervisor
from mesh.cli.instance import InstanceFields, advertise_address, instance_agent, instance_name
from mesh.cli.process import (StartupError, bind_grpc, configure_logging, parse_settings, run_server, settings_parser,
                              start_metrics)
from mesh.domain.placement import parse_labels
from mesh.instance.agent import InstanceAgent
from mesh.instance.remote import RemoteModels, RuntimeNotReady
from mesh.instance.spi_front import AgentRuntimeServicer
from mesh.settings import FabricSettings
from protos import model_runtime_pb2_grpc
from protos.tls import TlsSettings
from runtimes.metrics import LifecycleMetrics
from runtimes.sizes import parse_size

__all__ = ["AgentSettings", "build_parser", "main", "start_agent"]

log = logging.getLogger(__name__)


class AgentSettings(InstanceFields, TlsSettings):
    """The agent beside a runtime (flags override `MESHSERVE_AGENT_*` override these)."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_AGENT_", extra="forbid")

    host: str = Field("0.0.0.0", description="Address the agent's gRPC server (the model-runtime SPI for the fabric) binds.")
    port: int = Field(8089, description="The agent's gRPC port: the fabric calls loadModel/unloadModel here; 0 picks a free one.")
    metrics_port: int = Field(2112, description="Prometheus /metrics port of the agent's instance metrics; 0 turns it off.")
    advertise_address: str = Field(
        "", description="host:port the fabric uses to reach this agent's model-runtime SPI; empty: the bind host and "
        "port (127.0.0.1 when bound to all interfaces).")
    runtime_address: str = Field("127.0.0.1:8085", description="The runtime's model-runtime SPI endpoint (host:port or "
                                 "unix:/path) the agent forwards loads and unloads to.")
    runtime_data_address: str = Field(
        "", description="The runtime's V2 inference endpoint (host:port), advertised to routers and polled for "
        "ModelStatistics; empty: runtime_address (a runtime serving both on one port). Routers must reach it.")
    labels: str = Field("", description="The runtime's labels, comma-separated (rt:<runtime>, mt:<format>, "
                        "mt:<format>:<version>, pv:<protocol>); a model goes only where every label of its type is.")
    capacity: int | None = Field(None, description="Bytes of models the runtime may hold (e.g. 2GiB); unset: its "
                                 "runtimeStatus capacityInBytes.")
    runtime_ready_timeout_s: float = Field(300.0, gt=0, description="Longest the agent waits at start for the runtime "
                                           "to report READY (seconds).")
    health_interval_s: float = Field(1.0, gt=0, description="Seconds between two runtimeStatus health checks.")
    health_failures: int = Field(3, ge=1, description="Health checks failed (or not READY) in a row after which the "
                                 "runtime counts as gone: the agent leaves the fabric and exits 1.")
    call_timeout_s: float = Field(5.0, gt=0, description="Timeout of one runtimeStatus, predictModelSize, modelSize or "
                                  "ModelStatistics call (loads and unloads get the fabric's loading timeout).")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("capacity", mode="before")
    @classmethod
    def _size(cls, value):
        return None if value is None or value == "" else parse_size(value)


#: What the health service answers for: the whole server ("") and the SPI it serves the fabric.
HEALTH_SERVICES = (OVERALL_HEALTH, "mmesh.ModelRuntime")

#: How long unloading every model may take when the agent stops.
UNLOAD_AT_STOP_S = 20.0


def build_parser() -> argparse.ArgumentParser:
    return settings_parser("meshserve agent", "Seat a runtime that speaks the model-runtime SPI in a fabric: the instance agent over the wire.", FabricSettings, AgentSettings)


async def start_agent(stack: contextlib.AsyncExitStack, settings: AgentSettings, fabric: FabricSettings,
                      stop: asyncio.Event, gone: list[str]) -> InstanceAgent | None:
    """Bind, wait for the runtime, serve the SPI and register; every part is entered on
    `stack`. When the runtime is gone, its reason is appended to `gone` and `stop` is set.
    None when `stop` is set while waiting for the runtime (nothing was registered)."""
    if not fabric.etcd_endpoints:
        raise StartupError("--etcd (or MESHSERVE_ETCD) is required")
    keys = fabric.keys()
    if settings.instance_id:
        keys.instance(settings.instance_id)  # refuse a bad name before anything starts
    tls = settings.tls_files()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    port = bind_grpc(server, settings.host, settings.port, tls.server())
    registry = CollectorRegistry()
    if settings.metrics_port:
        metrics_http = start_metrics(registry, settings.host, settings.metrics_port,
                                     **settings.metrics_tls())
        stack.callback(metrics_http.shutdown)

    models = RemoteModels(settings.runtime_address, settings.runtime_data_address, capacity_bytes=settings.capacity,
                          loading_timeout_s=fabric.loading_timeout_ms / 1000, call_timeout_s=settings.call_timeout_s,
                          tls=tls.client())
    lifecycle_metrics = LifecycleMetrics(registry)  # the agent drives the loads, so it times them
    models.add_observer(lifecycle_metrics)
    models.add_probe(lifecycle_metrics)
    stack.push_async_callback(models.close)
    log.info("waiting for the runtime at %s to be READY", settings.runtime_address)
    try:
        if await models.wait_ready(settings.runtime_ready_timeout_s, until=stop) is None:
            log.info("stopped while waiting for the runtime")
            return None
    except RuntimeNotReady as error:
        raise StartupError(str(error)) from None
    await models.purge()
    if not settings.labels:
        log.warning("no --labels: only models whose type needs no runtime label are placed on this instance")

    client = await stack.enter_async_context(fabric.etcd_client())
    ready = asyncio.Event()
    instance_id = instance_name(settings.instance_id, port)
    agent = instance_agent(client, fabric, settings, models, instance_id=instance_id,
                           address=advertise_address(settings.host, port, settings.advertise_address),
                           labels=parse_labels(settings.labels), registry=registry,
                           data_address=models.data_address, refresh=models.poll_statistics)
    stack.push_async_callback(agent.close)

    async def let_go_of_the_models() -> None:
        # Before the agent closes, so the model records hear of it. A runtime that is gone
        # is not asked: its copies are forgotten at once and the lease revoked without delay.
        if gone:
            models.forget_all()
        else:
            await models.unload_everything(UNLOAD_AT_STOP_S)

    stack.push_async_callback(let_go_of_the_models)
    model_runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(AgentRuntimeServicer(models, ready), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in HEALTH_SERVICES:
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    stack.push_async_callback(server.stop, 5.0)
    await agent.start()
    stack.push_async_callback(_drain, agent)
    ready.set()
    for service in HEALTH_SERVICES:
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def watch_runtime() -> None:
        reason = await models.watch(settings.health_interval_s, settings.health_failures)
        log.error("the runtime at %s is gone (%s): leaving the fabric", settings.runtime_address, reason)
        await health.enter_graceful_shutdown()
        gone.append(reason)
        stop.set()

    tasks = await stack.enter_async_context(TaskSupervisor("agent-main"))  # the watch stops first (after NOT_SERVING)
    tasks.spawn(watch_runtime(), name="runtime-health")
    stack.push_async_callback(health.enter_graceful_shutdown)  # NOT_SERVING first on the way out
    log.info("agent %s on port %d for the runtime at %s (V2 at %s), fabric '%s', labels %s", instance_id, port,
             settings.runtime_address, models.data_address, keys.fabric, settings.labels or "(none)")
    return agent


async def _drain(agent: InstanceAgent) -> None:
    log.info("stopping: publishing shutting_down, then unloading the runtime's models")
    await agent.drain()


def main(argv: list[str] | None = None) -> int:
    settings, fabric = parse_settings(build_parser(), argv, "agent", AgentSettings, FabricSettings,
                                    legacy=False)  # a new kind: no old variable names
    configure_logging(settings.log_level)
    stop = asyncio.Event()
    gone: list[str] = []
    status = run_server("agent", lambda stack: start_agent(stack, settings, fabric, stop, gone), stop=stop)
    return 1 if gone else status
