"""`meshserve runtime`: the runtime process, joined to a fabric when etcd is given.

Without `--etcd` (or `MESHSERVE_ETCD`) it is the plain runtime of `runtimes.server`. With
it, the runtime starts first (it serves whatever happens to etcd), then an `InstanceAgent`
registers it, makes room for its loads and publishes what it holds. SIGTERM/SIGINT drain
in order: publish `shutting_down`, stop the runtime (requests in flight finish, models
unload and their records are updated), revoke the lease so the instance record goes at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.cli.instance import InstanceFields, advertise_address, instance_agent, instance_name
from mesh.cli.process import configure_logging, parse_settings, run_server, settings_parser
from mesh.domain.placement import parse_labels
from mesh.instance.agent import InstanceAgent
from mesh.settings import FabricSettings
from runtimes import server as runtime_server
from runtimes.backends import BackendRegistry
from runtimes.settings import RuntimeSettings

__all__ = ["InstanceSettings", "build_parser", "main", "start_instance", "start_plain_runtime"]

log = logging.getLogger(__name__)

#: The runtime's own settings take this prefix too (they are one process).
RUNTIME_ENV_PREFIX = "MESHSERVE_RUNTIME_"


class ProcessRuntimeSettings(RuntimeSettings):
    """`RuntimeSettings` read from `MESHSERVE_RUNTIME_*` (runtimes knows no process prefix)."""

    model_config = SettingsConfigDict(env_prefix=RUNTIME_ENV_PREFIX, extra="forbid")


class InstanceSettings(InstanceFields):
    """How this runtime presents itself in the fabric (flags override `MESHSERVE_RUNTIME_*` override these)."""

    model_config = SettingsConfigDict(env_prefix=RUNTIME_ENV_PREFIX, extra="forbid")

    advertise_address: str = Field(
        "", description="host:port routers use to reach this runtime's gRPC server; empty: the bind host and port "
        "(127.0.0.1 when bound to all interfaces).")
    labels: str = Field(
        "", description="Runtime labels advertised besides mt:<format> for each backend and pv:grpc-v2, "
        "comma-separated (e.g. rt:meshserve-1.x); a model goes only where every label of its type is.")


def build_parser() -> argparse.ArgumentParser:
    """The runtime's flags, the fabric flags and this instance's own, all from their settings."""
    return settings_parser("meshserve runtime", "Serve many models in one process; with --etcd, as an instance of a fabric.", ProcessRuntimeSettings, FabricSettings, InstanceSettings)


def runtime_labels(runtime: RuntimeSettings, extra: str = "") -> tuple[str, ...]:
    """What this runtime advertises: `mt:<format>` and `mt:<format>:<version>` per backend (so
    Predictors naming a version place, as on ModelMesh), the protocol it speaks, `extra`."""
    formats = BackendRegistry.default(runtime.threads_per_model).formats()
    labels = [label for name, versions in sorted(formats.items())
              for label in (f"mt:{name}", *(f"mt:{name}:{v}" for v in versions))]
    return parse_labels(",".join([*labels, "pv:grpc-v2", extra]))


async def start_plain_runtime(stack: contextlib.AsyncExitStack, runtime: RuntimeSettings) -> None:
    running = await runtime_server.start_runtime(runtime)
    stack.push_async_callback(running.stop)


async def start_instance(stack: contextlib.AsyncExitStack, runtime: RuntimeSettings, fabric: FabricSettings,
                         instance: InstanceSettings) -> InstanceAgent:
    """Serve the runtime and register it in the fabric; on the stack's exit: drain, stop the
    runtime, close the agent (revoking its lease), close the client."""
    keys = fabric.keys()
    if instance.instance_id:
        keys.instance(instance.instance_id)  # refuse a bad name before anything starts
    client = await stack.enter_async_context(fabric.etcd_client())
    # The runtime reports the fabric's loading timeout, so SPI clients see the one in force.
    runtime = runtime.model_copy(update={"model_loading_timeout_ms": fabric.loading_timeout_ms})
    registry = CollectorRegistry()
    running = await runtime_server.start_runtime(runtime, registry)
    instance_id = instance_name(instance.instance_id, running.port)
    agent = instance_agent(client, fabric, instance, running.manager, instance_id=instance_id,
                           address=advertise_address(runtime.host, running.port, instance.advertise_address),
                           labels=runtime_labels(runtime, instance.labels), registry=registry)
    stack.push_async_callback(agent.close)
    stack.push_async_callback(running.stop)
    await agent.start()
    stack.push_async_callback(_drain, agent, running)
    log.info("instance %s joining fabric '%s' through etcd at %s", instance_id, fabric.fabric, fabric.etcd)
    return agent


async def _drain(agent: InstanceAgent, running: runtime_server.RunningRuntime) -> None:
    log.info("stopping: publishing shutting_down, then draining requests in flight")
    await running.health.enter_graceful_shutdown()  # probes see it leaving while routers are told
    await agent.drain()


def main(argv: list[str] | None = None) -> int:
    runtime, fabric, instance = parse_settings(build_parser(), argv, "runtime", ProcessRuntimeSettings,
                                               FabricSettings, InstanceSettings)
    configure_logging(runtime.log_level)
    if not fabric.etcd_endpoints:
        return run_server("runtime", lambda stack: start_plain_runtime(stack, runtime))
    return run_server("runtime", lambda stack: start_instance(stack, runtime, fabric, instance))
