"""`meshserve runtime`: the runtime process, joined to a fabric when etcd is given.

Without `--etcd` (or `MESHSERVE_ETCD`) it is exactly the plain runtime of
`runtimes.server`. With it, the runtime starts first (it serves whatever happens to
etcd), then an `InstanceAgent` registers it, makes room for its loads and publishes what
it holds. SIGTERM/SIGINT drain in order: publish `shutting_down`, stop the runtime
(requests in flight finish, models unload and their records are updated), revoke the
lease so the instance record goes at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.instance.agent import InstanceAgent
from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.settings import FabricSettings, add_fabric_flags
from protos import meshserve_version
from runtimes import server as runtime_server
from runtimes.backends import BackendRegistry
from runtimes.settings import RuntimeSettings

__all__ = ["InstanceSettings", "build_parser", "main", "serve_instance"]

log = logging.getLogger(__name__)


class InstanceSettings(BaseSettings):
    """How this runtime presents itself in the fabric (flags override `MESHSERVE_*` override these)."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    instance_id: str = Field("", description="Name of this instance in the fabric; empty: <hostname>-<port>.")
    zone: str = Field("", description="Failure zone, so the placement engine can spread a model's copies.")
    advertise_address: str = Field(
        "", description="host:port routers use to reach this runtime's gRPC server; empty: the bind host and port "
        "(127.0.0.1 when bound to all interfaces).")
    publish_min_interval_s: float = Field(
        0.1, description="Least time between two publishes of the instance record (seconds): bursts of changes share one write.")
    publish_max_interval_s: float = Field(
        5.0, description="Most time between two publishes when nothing significant changes (seconds): last-use times and rates.")
    failure_expiry_ms: int = Field(
        600_000, description="How long a load failure keeps a model away from this instance (milliseconds).")


def build_parser() -> argparse.ArgumentParser:
    """The plain runtime's flags, the fabric flags and this instance's own."""
    parser = runtime_server.build_parser()
    add_fabric_flags(parser)
    parser.add_argument("--instance-id", help="instance name in the fabric (default <hostname>-<port>)")
    parser.add_argument("--zone", help="failure zone of this instance")
    parser.add_argument("--advertise-address", help="host:port routers reach this runtime at (default the bind address)")
    return parser


def _split(args: argparse.Namespace) -> tuple[RuntimeSettings, FabricSettings, InstanceSettings]:
    given = {k: v for k, v in vars(args).items() if v is not None}

    def part(kind: type[BaseSettings]):
        return kind(**{k: v for k, v in given.items() if k in kind.model_fields})

    return part(RuntimeSettings), part(FabricSettings), part(InstanceSettings)


def advertise_address(host: str, port: int, configured: str = "") -> str:
    """The address routers dial: the configured one, else host:port with a loopback for a wildcard bind."""
    if configured:
        return configured
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _model_types(runtime: RuntimeSettings) -> tuple[str, ...]:
    return tuple(BackendRegistry.default(runtime.threads_per_model).model_types)


async def serve_instance(runtime: RuntimeSettings, fabric: FabricSettings, instance: InstanceSettings) -> None:
    """Serve the runtime and keep it registered in the fabric until SIGTERM/SIGINT."""
    keys = Keys(fabric.fabric, fabric.etcd_root)
    try:
        client = EtcdClient(fabric.etcd_endpoints, call_timeout=fabric.etcd_call_timeout_s,
                            username=fabric.etcd_username, password=fabric.etcd_password)
    except ValueError as error:  # a malformed endpoint: refuse before serving anything
        raise SystemExit(f"meshserve runtime: {error}") from None
    registry = CollectorRegistry()
    try:
        running = await runtime_server.start_runtime(runtime, registry)
    except BaseException:
        await client.close()
        raise
    instance_id = instance.instance_id or f"{socket.gethostname()}-{running.port}"
    agent = InstanceAgent(
        client, keys, running.manager,
        instance_id=instance_id,
        address=advertise_address(runtime.host, running.port, instance.advertise_address),
        zone=instance.zone,
        model_types=_model_types(runtime),
        version=meshserve_version(),
        lease_ttl_s=fabric.lease_ttl_s,
        publish_min_interval_s=instance.publish_min_interval_s,
        publish_max_interval_s=instance.publish_max_interval_s,
        failure_expiry_ms=instance.failure_expiry_ms,
        metrics_registry=registry,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
        log.info("instance %s joining fabric '%s' through etcd at %s", instance_id, fabric.fabric, fabric.etcd)
        await stop.wait()
        log.info("stopping: publishing shutting_down, then draining requests in flight")
        await agent.drain()
    finally:
        try:
            await running.stop()
        finally:
            await agent.close()
            await client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runtime, fabric, instance = _split(args)
    except ValueError as error:
        raise SystemExit(f"meshserve runtime: {error}") from None
    logging.basicConfig(level=runtime.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not fabric.etcd_endpoints:
        asyncio.run(runtime_server.serve(runtime))
        return 0
    try:  # refuse bad names before anything starts
        keys = Keys(fabric.fabric, fabric.etcd_root)
        if instance.instance_id:
            keys.instance(instance.instance_id)
    except ValueError as error:
        raise SystemExit(f"meshserve runtime: {error}") from None
    asyncio.run(serve_instance(runtime, fabric, instance))
    return 0
