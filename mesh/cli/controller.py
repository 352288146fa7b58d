"""`meshserve controller`: the management API on every replica, background work on the leader.

Every replica serves `mmesh.ModelMesh` and `meshserve.admin.MeshAdmin` on `--port` (any
replica answers: writes are compare-and-set in etcd), built by `mesh.api.stack` exactly as
the router builds its own, with `grpc.health.v1.Health` beside them (SERVING once the
management API is served, NOT_SERVING from the start of the stop). Replicas campaign for
`keys.leader` under a lease of `--lease-ttl-s` (`mesh.control.leadership`); the leader
runs the `Controller` rounds.

Start-up (`mesh.cli.process`): the gRPC and metrics ports are bound first (a taken port is
one line on stderr and exit 1); an unreachable etcd is reported and retried until it
answers. SIGTERM/SIGINT: resign (the next leader takes over at once), stop the server
(in-flight calls get a grace period), close everything in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.aio.tasks import TaskSupervisor
from mesh.api.auth.interceptor import AuthInterceptor
from mesh.api.auth.settings import AuthSettings, build_authorizer
from mesh.api.stack import build_management
from mesh.cli.process import (StartupError, bind_grpc, configure_logging, parse_settings, run_server, settings_parser,
                              start_metrics)
from mesh.control.controller import Controller, ControllerConfig, ControllerMetrics
from mesh.control.leadership import Leadership
from mesh.control.runtime_client import RuntimeClients
from mesh.etcd.client import EtcdClient
from mesh.etcd.errors import StoreUnavailable
from mesh.settings import FabricSettings
from mesh.state.fabric_view import FabricView
from protos.tls import TlsSettings

__all__ = ["ControllerSettings", "build_parser", "main", "start_controller"]

log = logging.getLogger(__name__)

#: What the health service answers for: the whole server ("") and the management API's services.
HEALTH_SERVICES = (OVERALL_HEALTH, "mmesh.ModelMesh", "meshserve.admin.MeshAdmin")

#: How long a stopping leader gets to leave its term and resign before it is cancelled.
RESIGN_GRACE_S = 5.0


class ControllerSettings(TlsSettings):
    """Settings of one controller replica (flags override `MESHSERVE_CONTROLLER_*` override these)."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_CONTROLLER_", extra="forbid")

    host: str = Field("0.0.0.0", description="Address the management gRPC server binds.")
    port: int = Field(8034, description="Management API (mmesh.ModelMesh) gRPC port (the router owns 8033); 0 picks a free one.")
    metrics_port: int = Field(2113, description="Prometheus /metrics port; 0 turns it off.")
    interval_s: float = Field(5.0, description="Seconds between controller rounds when nothing changes.")
    load_timeout_s: float = Field(120.0, description="Longest the controller waits for one background load (seconds).")
    scaling: bool = Field(True, description="Add copies of hot models and trim cold ones; off: only cache misses "
                          "and re-homing place copies, and only instances' LRU evicts.")
    replica_id: str = Field("", description="Name of this replica in the leader record; default host-pid.")
    log_level: str = Field("INFO", description="Python logging level.")


def build_parser() -> argparse.ArgumentParser:
    return settings_parser("meshserve controller", "Management API and leader-elected background work of a fabric.", FabricSettings, ControllerSettings,
                           AuthSettings)


async def wait_for_etcd(client: EtcdClient, stop: asyncio.Event, retry_s: float = 1.0) -> bool:
    """Until etcd answers (True) or `stop` is set (False); one clear line per outage."""
    reported = False
    while not stop.is_set():
        try:
            await client.revision()
            if reported:
                log.info("etcd reachable at %s", ", ".join(client.endpoints))
            return True
        except StoreUnavailable as error:
            if not reported:
                log.error("etcd unreachable at %s (%s); retrying until it answers", ", ".join(client.endpoints), error)
                reported = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(retry_s):
                await stop.wait()  # retry pace, cut short by shutdown
    return False


async def start_controller(stack: contextlib.AsyncExitStack, controller: ControllerSettings,
                           fabric: FabricSettings, stop: asyncio.Event, auth: AuthSettings | None = None) -> int:
    """Bind, serve the management API and start campaigning; every part is entered on
    `stack`, so the caller's exit closes them in reverse order. Returns the bound port.
    `auth` (`mesh.api.auth`): who may call it; off, no interceptor is installed."""
    if not fabric.etcd_endpoints:
        raise StartupError("--etcd (or MESHSERVE_ETCD) is required")
    authorizer = build_authorizer(auth or AuthSettings())  # before anything starts: a bad token file is one line
    keys = fabric.keys()
    client = await stack.enter_async_context(fabric.etcd_client())
    replica_id = controller.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    view = FabricView(client, keys)
    tls = controller.tls_files()
    runtimes = await stack.enter_async_context(RuntimeClients(tls=tls.client()))
    stack.push_async_callback(view.close)
    management = await stack.enter_async_context(build_management(client, keys, view, runtimes, fabric.timings))

    server = grpc.aio.server(interceptors=[AuthInterceptor(authorizer)] if authorizer else None,
                             options=[("grpc.so_reuseport", 0)])
    management.add_to_server(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in HEALTH_SERVICES:
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = bind_grpc(server, controller.host, controller.port, tls.server())
    metrics_registry = CollectorRegistry()
    if controller.metrics_port:
        metrics_http = start_metrics(metrics_registry, controller.host, controller.metrics_port,
                                     **controller.metrics_tls())
        stack.callback(metrics_http.shutdown)
    await server.start()
    stack.push_async_callback(server.stop, 5.0)
    for service in HEALTH_SERVICES:
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("controller %s: management API on %s:%d, fabric %s", replica_id, controller.host, port, keys.fabric)

    config = ControllerConfig(interval_s=controller.interval_s, load_timeout_s=controller.load_timeout_s,
                              timings=fabric.timings, scaling=controller.scaling)
    metrics = ControllerMetrics(metrics_registry)
    leadership = Leadership(
        client, keys.leader, replica_id=replica_id, address=f"{controller.host}:{port}", lease_ttl_s=fabric.lease_ttl_s,
        make_term=lambda: Controller(client, keys, view, management.cache_miss, runtimes, management.registry,
                                           management.vmodels, config, metrics=metrics))
    tasks = await stack.enter_async_context(TaskSupervisor("controller-main"))  # resigns on close

    async def campaign_when_etcd_answers() -> None:
        if await wait_for_etcd(client, stop):
            await view.start()
            await leadership.run(stop)

    leading = tasks.spawn(campaign_when_etcd_answers(), name="leadership")

    async def let_the_leader_resign() -> None:
        # A leader leaves its term by itself on stop and resigns on the way out, so the
        # next replica takes over at once; a candidate is cancelled by the supervisor.
        await asyncio.wait([leading], timeout=RESIGN_GRACE_S)

    stack.push_async_callback(let_the_leader_resign)
    stack.push_async_callback(health.enter_graceful_shutdown)  # first on the way out
    return port


def main(argv: list[str] | None = None) -> int:
    controller, fabric, auth = parse_settings(build_parser(), argv, "controller", ControllerSettings, FabricSettings,
                                              AuthSettings)
    configure_logging(controller.log_level)
    stop = asyncio.Event()
    return run_server("controller", lambda stack: start_controller(stack, controller, fabric, stop, auth), stop=stop)
