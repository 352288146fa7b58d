"""Settings shared by every process that joins a fabric (runtime agent, controller, router).

Flags override `MESHSERVE_*` variables override the defaults written here once.
"""

from __future__ import annotations

import argparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.etcd.keys import DEFAULT_FABRIC, DEFAULT_ROOT


class FabricSettings(BaseSettings):
    """How to reach the fabric's etcd and which fabric to join."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    etcd: str = Field("", description="etcd endpoints, comma-separated HOST:PORT (several members allowed).")
    fabric: str = Field(DEFAULT_FABRIC, description="Fabric name: the etcd key prefix is <etcd_root>/<fabric>/.")
    etcd_root: str = Field(DEFAULT_ROOT, description="Root of every fabric's keys in etcd.")
    etcd_username: str | None = Field(None, description="etcd user, when etcd has auth on.")
    etcd_password: str | None = Field(None, description="etcd password, when etcd has auth on.")
    etcd_call_timeout_s: float = Field(2.0, description="Timeout of one etcd call (seconds).")
    lease_ttl_s: int = Field(10, description="TTL of the lease that binds an instance's or leader's record (seconds).")

    @field_validator("etcd")
    @classmethod
    def _endpoints(cls, value: str) -> str:
        return ",".join(e.strip() for e in value.split(",") if e.strip())

    @property
    def etcd_endpoints(self) -> list[str]:
        return self.etcd.split(",") if self.etcd else []


def add_fabric_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every fabric process takes (`--etcd`, `--fabric`, `--lease-ttl-s`)."""
    parser.add_argument("--etcd", help="etcd endpoints HOST:PORT[,HOST:PORT...] (env MESHSERVE_ETCD)")
    parser.add_argument("--fabric", help=f"fabric name, the etcd key prefix (default {DEFAULT_FABRIC})")
    parser.add_argument("--lease-ttl-s", type=int, help="lease TTL in seconds (default 10)")
