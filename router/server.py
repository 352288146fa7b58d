"""The router process: `meshserve router`.

Serves `inference.GRPCInferenceService` (and `mmesh.ModelMesh` when a management
servicer is available) on one gRPC port, V2 REST on another, Prometheus metrics on a
third. `grpc.health.v1.Health` on the gRPC port is NOT_SERVING until the fabric view is
ready, then SERVING, and NOT_SERVING again once the router stops. `--workers N` runs N
processes sharing the ports (SO_REUSEPORT); each keeps its own watched view of the fabric.
With etcd unreachable, a router keeps routing from the view it last had (`FabricView`
keeps its state; only misses need etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import secrets
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from mesh.api.auth.authorizer import Authorizer
from mesh.api.auth.interceptor import AuthInterceptor
from mesh.api.auth.permissions import Permission
from mesh.api.auth.settings import AuthSettings, build_authorizer
from mesh.api.stack import ManagementStack, build_management
from mesh.cli.process import (
    StartupError,
    bind_grpc,
    configure_logging,
    parse_settings,
    run_server,
    settings_parser,
    start_metrics,
)
from mesh.control.runtime_client import RuntimeClients
from mesh.settings import FabricSettings
from mesh.api.mesh_admin import MeshAdminServicer
from mesh.state.fabric_view import FabricView
from protos import meshserve_version
from router.dashboard.service import Dashboard
from router.dashboard.web import attach_dashboard
from router.dataplane import LIMIT_SETTING, SERVICE, DataPlane
from router.grpc_front import InferenceFront
from router.metrics import RouterMetrics
from router.native_front.supervisor import NativeFront, NativeFrontError, find_binary
from router.observed import ObservedDataPlane
from router.rest import make_app
from router.rest_auth import auth_middleware
from router.routing import Loader, Router, Scaler
from router.settings import RouterSettings
from router.traffic import Observers, TrafficCounters

__all__ = ["RunningRouter", "main", "start_router"]

log = logging.getLogger(__name__)

#: What the health service answers for besides the whole server ("") and inference: the
#: management API's services, when the router serves them.
MANAGEMENT_SERVICES = ("mmesh.ModelMesh", "meshserve.admin.MeshAdmin")


def receive_limit(max_message_bytes: int) -> int:
    """What grpc lets the router receive: twice the limit (grpc's own cap is 2 GiB - 1)."""
    return min(2 * max_message_bytes, (1 << 31) - 1)


def view_ready(view: FabricView) -> Any:
    """True once the view has read the fabric at least once (it stays true while etcd is
    away: the router serves from its last table)."""
    return view.is_ready


@dataclass
class RunningRouter:
    """A started router; `stop()` drains calls in flight and closes what it owns."""

    server: grpc.aio.Server
    router: Router
    port: int
    rest_port: int | None
    metrics_port: int | None
    health: health_aio.HealthServicer
    dashboard: Dashboard | None = None  # served at /dashboard on the REST port
    traffic: TrafficCounters | None = None  # this router's calls and misses, as the dashboard reads them
    native: NativeFront | None = None  # on the public gRPC port, in front of `server` (--native-front)
    _rest: web.AppRunner | None = None
    _metrics_http: Any = None
    _serving: asyncio.Task | None = None

    async def stop(self, grace: float = 5.0) -> None:
        if self._serving is not None:
            self._serving.cancel()
            await asyncio.wait([self._serving])
        await self.health.enter_graceful_shutdown()
        if self.native is not None:
            await self.native.close()  # first: it stops taking calls and lets its own finish
        await self.server.stop(grace)
        if self._rest is not None:
            await self._rest.cleanup()
        await self.router.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()


async def start_router(settings: RouterSettings, view: FabricView, loader: Loader | None, *,
                       registry: CollectorRegistry | None = None, management: ManagementStack | None = None,
                       reuse_port: bool = False, metrics_port: int | None = None,
                       scaler: Scaler | None = None, authorizer: Authorizer | None = None) -> RunningRouter:
    """Start serving on `settings.host`/`port`/`rest_port` (0: any free port) with the given
    view and loader; returns once the ports are bound. `management` (`mesh.api.stack`) is
    served on the same port, as ModelMesh serves its management API beside inference;
    `scaler` is told of models whose copies are all busy (`router.routing`).
    `authorizer` (`mesh.api.auth`) guards both ports; None: no interceptor or middleware at all.
    StartupError (nothing left running) when a port cannot be bound."""
    registry = registry or CollectorRegistry()
    tls = settings.tls_files()
    server_tls = tls.server()  # ValueError (one line at start-up) when a file does not load
    metrics = RouterMetrics(registry, per_model=settings.per_model_metrics,
                            max_models=settings.per_model_metrics_max_models)
    traffic = TrafficCounters()  # the dashboard's reading of this router's calls and misses
    observer = Observers(metrics, traffic)
    router = Router(view, loader, max_tries=settings.max_tries, suspect_s=settings.suspect_s,
                    max_message_bytes=settings.max_message_bytes, observer=observer,
                    instance_streams=settings.instance_streams, scaler=scaler,
                    saturation_report_s=settings.saturation_report_s, tls=tls.client())
    metrics.watch_in_flight(router.in_flight)
    dataplane = DataPlane(router, view, settings.default_deadline_s, settings.max_message_bytes)
    ready = view_ready(view)
    server = grpc.aio.server(interceptors=[AuthInterceptor(authorizer)] if authorizer else None, options=[
        # Over the limit, so that the front refuses what is too large with an error that names
        # the setting (`DataPlane.check_size`); grpc's own refusal is only for twice as much.
        ("grpc.max_receive_message_length", receive_limit(settings.max_message_bytes)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ])
    server.add_generic_rpc_handlers((InferenceFront(dataplane, ready=ready, version=meshserve_version(), observer=observer),))
    if management is not None:
        management.add_to_server(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    services = (OVERALL_HEALTH, SERVICE, *(MANAGEMENT_SERVICES if management is not None else ()))
    for service in services:
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        binary = _native_front_binary(settings, authorizer, server_tls) if settings.native_front else None
        # With the native front, it takes the public port and this server a loopback one behind it.
        port = (bind_grpc(server, "127.0.0.1", 0) if binary
                else bind_grpc(server, settings.host, settings.port, server_tls))
    except (StartupError, NativeFrontError) as error:
        await router.close()
        raise StartupError(str(error)) from None
    running = RunningRouter(server, router, port, None, None, health, traffic=traffic)
    try:
        if settings.rest_port:
            # REST calls count as the V2 calls they become, in the metrics and the dashboard alike.
            app = make_app(ObservedDataPlane(dataplane, observer), ready=ready, version=meshserve_version(),
                           max_body_bytes=settings.max_message_bytes,
                           middlewares=[auth_middleware(authorizer)] if authorizer else ())
            figures = management.mesh_admin if management is not None else MeshAdminServicer(view)
            running.dashboard = attach_dashboard(app, view, figures, traffic, sample_s=settings.dashboard_sample_s)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            running._rest = runner  # before the bind: a failed bind still cleans up what setup started
            site = web.TCPSite(runner, settings.host, settings.rest_port, reuse_port=reuse_port or None,
                               ssl_context=server_tls.ssl_context() if server_tls else None)
            await site.start()
            running.rest_port = runner.addresses[0][1]
        wanted_metrics = settings.metrics_port if metrics_port is None else metrics_port
        if wanted_metrics:
            running._metrics_http = start_metrics(registry, settings.host, wanted_metrics,
                                                  **settings.metrics_tls())
            running.metrics_port = running._metrics_http.port
        await server.start()  # nothing is served unless every port is bound
        if binary is not None:
            router.handover_token = secrets.token_hex(16)
            running.native = NativeFront(binary, settings.host, settings.port, f"127.0.0.1:{port}", view, observer,
                                         max_message_bytes=settings.max_message_bytes, limit_setting=LIMIT_SETTING,
                                         default_deadline_s=settings.default_deadline_s,
                                         handover_token=router.handover_token,
                                         instance_streams=settings.instance_streams, reuse_port=reuse_port)
            await running.native.start()
            running.port = running.native.port
    except NativeFrontError as error:
        await running.stop(0)
        raise StartupError(str(error)) from None
    except BaseException:
        await running.stop(0)
        raise
    running._serving = asyncio.create_task(_serve_once_ready(view, health, services), name="router-health")
    log.info("router listening: gRPC %s:%d%s, REST %s, metrics %s%s", settings.host, running.port,
             f" (native front; this process on 127.0.0.1:{port})" if running.native else "",
             running.rest_port or "off", running.metrics_port or "off",
             f", TLS (client certificates: {tls.client_auth})" if server_tls else "")
    return running


def _native_front_binary(settings: RouterSettings, authorizer: Authorizer | None, server_tls):
    """The native front's binary; StartupError for what it does not do yet, NativeFrontError without it."""
    if authorizer is not None and authorizer.guards(Permission.INFERENCE):
        raise StartupError("--native-front does not check inference tokens yet: without "
                           "--inference-token-file, or without --native-front")
    if server_tls is not None:
        raise StartupError("--native-front does not serve TLS yet: without --tls-cert-file, or without --native-front")
    return find_binary(settings.native_front_binary)


async def _serve_once_ready(view: FabricView, health: health_aio.HealthServicer, services: tuple[str, ...]) -> None:
    """SERVING once the view has read the fabric (it stays so while etcd is away)."""
    await view.wait_ready(None)
    for service in services:
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)


async def start_fabric_router(stack: contextlib.AsyncExitStack, settings: RouterSettings, fabric: FabricSettings,
                              worker: int = 0, auth: AuthSettings | None = None) -> RunningRouter:
    """A router of the fabric: its watched view, cache miss and management stack, every part
    entered on `stack` so that its exit closes them in reverse order."""
    if not fabric.etcd_endpoints:
        raise StartupError("--etcd (or MESHSERVE_ETCD) is required")
    authorizer = build_authorizer(auth or AuthSettings())  # before anything starts: a bad token file is one line
    keys = fabric.keys()
    client = await stack.enter_async_context(fabric.etcd_client())
    view = FabricView(client, keys)
    stack.push_async_callback(view.close)
    runtimes = await stack.enter_async_context(RuntimeClients(max_message_bytes=settings.max_message_bytes,
                                                              tls=settings.tls_files().client()))
    await view.start()
    management = await stack.enter_async_context(build_management(client, keys, view, runtimes, fabric.timings))
    running = await start_router(settings, view, management.cache_miss, management=management,
                                 scaler=management.cache_miss,
                                 reuse_port=settings.workers > 1,
                                 metrics_port=settings.metrics_port + worker if settings.metrics_port else 0,
                                 authorizer=authorizer)
    stack.push_async_callback(running.stop)
    return running


def _worker(router_values: dict[str, Any], fabric_values: dict[str, Any], auth_values: dict[str, Any],
            worker: int) -> None:
    settings, fabric, auth = RouterSettings(**router_values), FabricSettings(**fabric_values), AuthSettings(**auth_values)
    configure_logging(settings.log_level, _log_prefix(settings, worker))
    status = run_server("router", lambda stack: start_fabric_router(stack, settings, fabric, worker, auth))
    raise SystemExit(status)


def _log_prefix(settings: RouterSettings, worker: int) -> str:
    return f"[router {worker}] " if settings.workers > 1 else ""


def run_workers(settings: RouterSettings, fabric: FabricSettings, auth: AuthSettings | None = None) -> int:
    """Start `settings.workers` router processes (spawned, not forked: grpc does not
    survive a fork) and wait; SIGTERM/SIGINT are passed on. Returns the worst exit code."""
    context = multiprocessing.get_context("spawn")
    values = (settings.model_dump(), fabric.model_dump(), (auth or AuthSettings()).model_dump())
    processes = [context.Process(target=_worker, args=(*values, i), name=f"router-{i}")
                 for i in range(settings.workers)]
    for process in processes:
        process.start()

    def forward(signum, _frame) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()  # each worker drains its calls on SIGTERM

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    for process in processes:
        process.join()
        codes.append(process.exitcode or 0)
    return max(codes, key=abs)


def build_parser() -> argparse.ArgumentParser:
    return settings_parser("meshserve router", "Route V2 inference calls to loaded model copies.", FabricSettings, RouterSettings,
                           AuthSettings)


def main(argv: list[str] | None = None) -> int:
    settings, fabric, auth = parse_settings(build_parser(), argv, "router", RouterSettings, FabricSettings, AuthSettings)
    if settings.workers > 1:
        configure_logging(settings.log_level, _log_prefix(settings, -1))
        return run_workers(settings, fabric, auth)
    configure_logging(settings.log_level)
    return run_server("router", lambda stack: start_fabric_router(stack, settings, fabric, auth=auth))
