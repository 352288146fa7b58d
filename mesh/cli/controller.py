"""`meshserve controller`: the management API on every replica, background work on the leader.

Every replica serves `mmesh.ModelMesh` on `--port` (any replica answers: writes are
compare-and-set in etcd). Replicas campaign for `keys.leader` under a lease of
`--lease-ttl-s`; the leader runs the `Controller` rounds until its term ends (resigned,
lease lost, key taken over), then campaigns again with a fresh lease. When the leader
dies, another replica leads within the lease TTL.

Start-up: the gRPC port is bound first (a taken port exits non-zero with a clear line);
an unreachable etcd is reported and retried until it answers. SIGTERM/SIGINT: resign
(the next leader takes over at once), stop the server (in-flight calls get a grace
period), close everything.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import Field

from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.control.controller import Controller, ControllerConfig, ControllerMetrics
from mesh.etcd.client import EtcdClient
from mesh.etcd.election import Election
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError, StoreUnavailable
from mesh.etcd.session import LeaseSession
from mesh.state.fabric_view import FabricView
from mesh.etcd.keys import Keys
from mesh.api.mesh_admin import MeshAdminServicer
from mesh.api.model_mesh import ModelMeshServicer
from mesh.state.registry import Registry
from mesh.control.runtime_client import RuntimeClients
from mesh.settings import FabricSettings, add_fabric_flags
from mesh.aio.tasks import TaskSupervisor, cancel_and_wait
from mesh.state.vmodels import VModels
from protos import mesh_admin_pb2_grpc as admin_grpc
from protos import model_mesh_pb2_grpc as mm_grpc

__all__ = ["ControllerSettings", "build_parser", "main", "serve", "settings_from_args"]

log = logging.getLogger(__name__)


class ControllerSettings(FabricSettings):
    """Settings of one controller replica (flags override MESHSERVE_* override these defaults)."""

    host: str = Field("0.0.0.0", description="Address the management gRPC server binds.")
    port: int = Field(8034, description="Management API (mmesh.ModelMesh) gRPC port (the router owns 8033); 0 picks a free one.")
    metrics_port: int = Field(2113, description="Prometheus /metrics port; 0 turns it off.")
    interval_s: float = Field(5.0, description="Seconds between controller rounds when nothing changes.")
    load_timeout_s: float = Field(120.0, description="Longest the controller waits for one background load (seconds).")
    loading_timeout_ms: int = Field(90_000, description="A load claim older than this no longer counts (ms).")
    failure_expiry_ms: int = Field(600_000, description="A load failure blocks retries on that instance this long (ms).")
    scaling: bool = Field(True, description="Add copies of hot models and trim cold ones; off: only cache misses "
                          "and re-homing place copies, and only instances' LRU evicts.")
    replica_id: str = Field("", description="Name of this replica in the leader record; default host-pid.")
    log_level: str = Field("INFO", description="Python logging level.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve controller",
                                     description="Management API and leader-elected background work of a fabric.")
    add_fabric_flags(parser)
    parser.add_argument("--host", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="management gRPC port (default 8034)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off (default 2113)")
    parser.add_argument("--interval-s", type=float, help="seconds between rounds (default 5)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="add/trim copies from request rates (default on)")
    parser.add_argument("--replica-id", help="this replica's name (default host-pid)")
    parser.add_argument("--log-level")
    return parser


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    """Flags given on the command line override MESHSERVE_* variables and defaults."""
    return ControllerSettings(**{k: v for k, v in vars(args).items() if v is not None})


class _Replica:
    """The parts of one replica, built in `serve` and closed in reverse order."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.client = EtcdClient(settings.etcd_endpoints, call_timeout=settings.etcd_call_timeout_s,
                                 username=settings.etcd_username, password=settings.etcd_password)
        self.keys = Keys(settings.fabric, settings.etcd_root)
        self.view = FabricView(self.client, self.keys)
        self.runtimes = RuntimeClients()
        self.registry = Registry(self.client, self.keys)
        self.vmodels = VModels(self.client, self.keys, self.registry)
        self.cache_miss = CacheMiss(self.client, self.keys, self.view, self.runtimes,
                                    MissConfig(failure_expiry_ms=settings.failure_expiry_ms,
                                               loading_timeout_ms=settings.loading_timeout_ms))
        self.servicer = ModelMeshServicer(self.registry, self.view, self.cache_miss, self.vmodels, self.runtimes,
                                          loading_timeout_ms=settings.loading_timeout_ms)
        self.controller_config = ControllerConfig(interval_s=settings.interval_s, load_timeout_s=settings.load_timeout_s,
                                                  loading_timeout_ms=settings.loading_timeout_ms,
                                                  scaling=settings.scaling)
        self.metrics_registry = CollectorRegistry()
        self.metrics = ControllerMetrics(self.metrics_registry)
        self.is_leader = False

    async def wait_for_etcd(self, stop: asyncio.Event) -> bool:
        """Until etcd answers (True) or `stop` is set (False); one clear line per outage."""
        reported = False
        while not stop.is_set():
            try:
                await self.client.revision()
                if reported:
                    log.info("etcd reachable at %s", ", ".join(self.client.endpoints))
                return True
            except StoreUnavailable as error:
                if not reported:
                    log.error("etcd unreachable at %s (%s); retrying until it answers",
                              ", ".join(self.client.endpoints), error)
                    reported = True
            try:
                async with asyncio.timeout(1.0):
                    await stop.wait()  # retry pace, cut short by shutdown
            except TimeoutError:
                pass
        return False

    async def lead(self, stop: asyncio.Event) -> None:
        """Campaign, lead while elected, campaign again; until `stop`."""
        attempt = 0
        value = {"id": self.replica_id, "address": f"{self.settings.host}:{self.settings.port}"}
        while not stop.is_set():
            try:
                async with LeaseSession(self.client, self.settings.lease_ttl_s, name="controller") as session:
                    async with Election(session, self.keys.leader, value, name="controller") as election:
                        await election.campaign()
                        attempt = 0
                        await self._term(election, stop)
            except (LeaseLost, StoreUnavailable, StoreClosed) as error:
                if stop.is_set() or self.client.closed:
                    return
                attempt += 1
                log.warning("controller: leadership session ended (%s); campaigning again", error)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))  # backoff before a new lease
            except StoreError:
                log.exception("controller: etcd refused the election; retrying")
                await asyncio.sleep(2.0)  # backoff: a configuration problem, do not spin

    async def _term(self, election: Election, stop: asyncio.Event) -> None:
        log.info("controller %s: leading fabric %s", self.replica_id, self.keys.fabric)
        self.is_leader = True
        try:
            async with Controller(self.client, self.keys, self.view, self.cache_miss, self.runtimes, self.registry,
                                  self.vmodels, self.controller_config, metrics=self.metrics) as controller:
                run = asyncio.ensure_future(controller.run())
                waits = [asyncio.ensure_future(election.lost.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait([run, *waits], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait([run, *waits])
        finally:
            self.is_leader = False
        if not stop.is_set():
            log.warning("controller %s: leadership lost (%s)", self.replica_id, election.lost_reason)


async def serve(settings: ControllerSettings, stop: asyncio.Event | None = None) -> int:
    """Run one replica until `stop` (or SIGTERM/SIGINT). Returns the exit status."""
    if not settings.etcd_endpoints:
        print("meshserve controller: --etcd (or MESHSERVE_ETCD) is required", file=sys.stderr)
        return 2
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replica = _Replica(settings)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    mm_grpc.add_ModelMeshServicer_to_server(replica.servicer, server)
    admin_grpc.add_MeshAdminServicer_to_server(MeshAdminServicer(replica.view, loading_timeout_ms=settings.loading_timeout_ms), server)
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:
        port = 0
    if port == 0:
        print(f"meshserve controller: cannot listen on {settings.host}:{settings.port}: "
              "the port is taken or the address is wrong", file=sys.stderr)
        await replica.client.close()
        return 1
    metrics_http = None
    if settings.metrics_port:
        try:
            metrics_http, _ = start_http_server(settings.metrics_port, addr=settings.host,
                                                registry=replica.metrics_registry)
        except OSError as error:
            print(f"meshserve controller: cannot serve metrics on port {settings.metrics_port}: {error}",
                  file=sys.stderr)
            await replica.client.close()
            return 1
    tasks = TaskSupervisor("controller-main")
    try:
        await server.start()
        log.info("controller %s: management API on %s:%d, fabric %s", replica.replica_id, settings.host, port,
                 replica.keys.fabric)
        if await replica.wait_for_etcd(stop):
            await replica.view.start()
            leading = tasks.spawn(replica.lead(stop), name="leadership")
            await stop.wait()
            # A leader leaves its term by itself on stop and resigns on the way out, so the
            # next replica takes over at once; a candidate is cancelled below.
            await asyncio.wait([leading], timeout=5.0)
        log.info("controller %s: stopping", replica.replica_id)
    finally:
        await tasks.close()  # resigns (Election.close) and revokes the lease
        await server.stop(5.0)
        await replica.servicer.close()
        await replica.cache_miss.close()
        await replica.view.close()
        await replica.runtimes.close()
        await replica.client.close()
        if metrics_http is not None:
            metrics_http.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        raise SystemExit(f"meshserve controller: {error}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
