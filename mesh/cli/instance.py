"""What every process that seats an instance in a fabric shares: `meshserve runtime --etcd`
(the agent inside the runtime) and `meshserve agent` (the agent beside a runtime of another kind).

`InstanceFields` are the settings of the instance's presence (its name, zone, labels, how
often it publishes); each process subclasses it with its own variable prefix and the words
that fit it. `advertise_address` and `instance_name` fill in what was left empty, and
`instance_agent` builds the agent from them and the fabric's settings, the same way for both.
"""

from __future__ import annotations

import socket
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from mesh.domain.placement import parse_labels
from mesh.etcd.client import EtcdClient
from mesh.instance.agent import InstanceAgent
from mesh.instance.holder import ModelHolder
from mesh.settings import FabricSettings
from protos import meshserve_version

__all__ = ["InstanceFields", "advertise_address", "instance_agent", "instance_name"]


class InstanceFields(BaseSettings):
    """How an instance presents itself in the fabric (a subclass sets the variable prefix)."""

    instance_id: str = Field("", description="Name of this instance in the fabric; empty: <hostname>-<port>.")
    zone: str = Field("", description="Failure zone, so the placement engine can spread a model's copies.")
    advertise_address: str = Field("", description="host:port the fabric uses to reach this instance; empty: the bind "
                                   "host and port (127.0.0.1 when bound to all interfaces).")
    publish_min_interval_s: float = Field(
        0.1, description="Least time between two publishes of the instance record (seconds): bursts of changes share one write.")
    publish_max_interval_s: float = Field(
        5.0, description="Most time between two publishes when nothing significant changes (seconds): last-use times and rates.")
    labels: str = Field("", description="Runtime labels this instance advertises, comma-separated; a model goes only "
                        "where every label of its type is.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: str) -> str:
        return ",".join(parse_labels(value))


def advertise_address(host: str, port: int, configured: str = "") -> str:
    """The address others dial: the configured one, else host:port with a loopback for a wildcard bind."""
    if configured:
        return configured
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def instance_name(configured: str, port: int) -> str:
    """The configured instance id, else <hostname>-<port>."""
    return configured or f"{socket.gethostname()}-{port}"


def instance_agent(client: EtcdClient, fabric: FabricSettings, fields: InstanceFields, holder: ModelHolder, *,
                   instance_id: str, address: str, labels: tuple[str, ...], registry: CollectorRegistry,
                   **options: Any) -> InstanceAgent:
    """The agent of `holder` in `fabric`, presented as `fields` say (`options`: the rest of
    `InstanceAgent`'s, such as `data_address` and `refresh`)."""
    return InstanceAgent(
        client, fabric.keys(), holder,
        instance_id=instance_id,
        address=address,
        zone=fields.zone,
        labels=labels,
        version=meshserve_version(),
        lease_ttl_s=fabric.lease_ttl_s,
        publish_min_interval_s=fields.publish_min_interval_s,
        publish_max_interval_s=fields.publish_max_interval_s,
        failure_expiry_ms=fabric.failure_expiry_ms,
        metrics_registry=registry,
        **options,
    )
