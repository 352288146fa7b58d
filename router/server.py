"""The router process: `meshserve router`.

Serves `inference.GRPCInferenceService` (and `mmesh.ModelMesh` when a management
servicer is available) on one gRPC port, V2 REST on another, Prometheus metrics on a
third. `--workers N` runs N processes sharing the ports (SO_REUSEPORT); each keeps its
own watched view of the fabric. With etcd unreachable, a router keeps routing from the
view it last had (`FabricView` keeps its state; only misses need etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, start_http_server

from mesh.api.mesh_admin import MeshAdminServicer
from mesh.control.cache_miss import CacheMiss
from mesh.etcd.client import EtcdClient
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.api.model_mesh import ModelMeshServicer
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.state.vmodels import VModels
from protos import mesh_admin_pb2_grpc, meshserve_version, model_mesh_pb2_grpc
from router.dataplane import DataPlane
from router.grpc_front import InferenceFront
from router.metrics import RouterMetrics
from router.rest import make_app
from router.routing import Loader, Router
from router.settings import RouterSettings, add_router_flags

__all__ = ["RunningRouter", "main", "start_router"]

log = logging.getLogger(__name__)


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
    _rest: web.AppRunner | None = None
    _metrics_http: Any = None
    _owned: list[Any] = field(default_factory=list)

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        if self._rest is not None:
            await self._rest.cleanup()
        await self.router.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        for owned in reversed(self._owned):
            await owned.close()


async def start_router(settings: RouterSettings, view: FabricView, loader: Loader | None, *,
                       registry: CollectorRegistry | None = None, management: Any = None,
                       reuse_port: bool = False, metrics_port: int | None = None) -> RunningRouter:
    """Start serving on `settings.host`/`port`/`rest_port` (0: any free port) with the given
    view and loader; returns once the ports are bound. `management` is an
    `mmesh.ModelMesh` servicer to serve on the same port, if any."""
    registry = registry or CollectorRegistry()
    metrics = RouterMetrics(registry)
    router = Router(view, loader, max_tries=settings.max_tries, suspect_s=settings.suspect_s,
                    max_message_bytes=settings.max_message_bytes, observer=metrics)
    metrics.watch_in_flight(router.in_flight)
    dataplane = DataPlane(router, view, settings.default_deadline_s)
    ready = view_ready(view)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ])
    server.add_generic_rpc_handlers((InferenceFront(dataplane, ready=ready, version=meshserve_version(), observer=metrics),))
    if management is not None:
        model_mesh_pb2_grpc.add_ModelMeshServicer_to_server(management, server)
        mesh_admin_pb2_grpc.add_MeshAdminServicer_to_server(MeshAdminServicer(view), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        await router.close()
        raise SystemExit(f"cannot listen on {settings.host}:{settings.port}: the port is taken or the address is wrong")
    await server.start()
    running = RunningRouter(server, router, port, None, None)
    try:
        if settings.rest_port:
            runner = web.AppRunner(make_app(dataplane, ready=ready, version=meshserve_version(),
                                            max_body_bytes=settings.max_message_bytes), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.rest_port, reuse_port=reuse_port or None)
            await site.start()
            running._rest = runner
            running.rest_port = runner.addresses[0][1]
        wanted_metrics = settings.metrics_port if metrics_port is None else metrics_port
        if wanted_metrics:
            running._metrics_http, _ = start_http_server(wanted_metrics, addr=settings.host, registry=registry)
            running.metrics_port = running._metrics_http.server_port
    except BaseException:
        await running.stop(0)
        raise
    log.info("router listening: gRPC %s:%d, REST %s, metrics %s", settings.host, port,
             running.rest_port or "off", running.metrics_port or "off")
    return running


def _management_servicer(client: EtcdClient, keys: Keys, view: FabricView, loader: CacheMiss,
                         runtimes: RuntimeClients, default_timeout_s: float) -> ModelMeshServicer:
    """The mmesh.ModelMesh servicer, served beside inference on the router's port as ModelMesh does."""
    registry = Registry(client, keys)
    return ModelMeshServicer(registry, view, loader, VModels(client, keys, registry), runtimes,
                             default_timeout_s=default_timeout_s)


async def serve(settings: RouterSettings, worker: int = 0) -> None:
    if not settings.etcd_endpoints:
        raise SystemExit("meshserve router: --etcd (or MESHSERVE_ETCD) is required")
    keys = Keys(fabric=settings.fabric, root=settings.etcd_root)
    client = EtcdClient(settings.etcd_endpoints, call_timeout=settings.etcd_call_timeout_s,
                        username=settings.etcd_username, password=settings.etcd_password)
    view = FabricView(client, keys)
    runtimes = RuntimeClients(max_message_bytes=settings.max_message_bytes)
    await view.start()
    loader = CacheMiss(client, keys, view, runtimes)
    management = _management_servicer(client, keys, view, loader, runtimes, settings.default_deadline_s)
    running = await start_router(settings, view, loader, management=management, reuse_port=settings.workers > 1,
                                 metrics_port=settings.metrics_port + worker if settings.metrics_port else 0)
    running._owned.extend(o for o in (client, view, runtimes, loader, management) if o is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining calls in flight")
    await running.stop()


def _worker(settings_values: dict[str, Any], worker: int) -> None:
    settings = RouterSettings(**settings_values)
    _configure_logging(settings, worker)
    asyncio.run(serve(settings, worker))


def _configure_logging(settings: RouterSettings, worker: int) -> None:
    prefix = f"[router {worker}] " if settings.workers > 1 else ""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


def run_workers(settings: RouterSettings) -> int:
    """Start `settings.workers` router processes (spawned, not forked: grpc does not
    survive a fork) and wait; SIGTERM/SIGINT are passed on. Returns the worst exit code."""
    context = multiprocessing.get_context("spawn")
    values = settings.model_dump()
    processes = [context.Process(target=_worker, args=(values, i), name=f"router-{i}") for i in range(settings.workers)]
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
    parser = argparse.ArgumentParser(prog="meshserve router",
                                     description="Route V2 inference calls to loaded model copies.")
    add_router_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = RouterSettings(**given)
    except ValueError as error:
        raise SystemExit(f"meshserve router: {error}") from None
    if settings.workers > 1:
        _configure_logging(settings, -1)
        return run_workers(settings)
    _configure_logging(settings, 0)
    asyncio.run(serve(settings))
    return 0
