"""Settings shared by every process that joins a fabric (runtime agent, controller, router).

Flags override `MESHSERVE_*` variables override the defaults written here once. The
fabric's timings live here too, so every process (and so every endpoint that answers
`meshserve status`) judges a load claim by the same clock.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import DEFAULT_FABRIC, DEFAULT_ROOT, Keys

__all__ = ["FABRIC_FLAGS_SKIP", "FabricSettings"]

#: Settings read from the environment only: a password on a command line shows in `ps`.
FABRIC_FLAGS_SKIP = ("etcd_password",)


class FabricSettings(BaseSettings):
    """How to reach the fabric's etcd, which fabric to join, and the fabric's timings."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    etcd: str = Field("", description="etcd endpoints, comma-separated HOST:PORT (several members allowed).")
    fabric: str = Field(DEFAULT_FABRIC, description="Fabric name: the etcd key prefix is <etcd_root>/<fabric>/.")
    etcd_root: str = Field(DEFAULT_ROOT, description="Root of every fabric's keys in etcd.")
    etcd_username: str | None = Field(None, description="etcd user, when etcd has auth on.")
    etcd_password: str | None = Field(None, description="etcd password, when etcd has auth on (environment only).")
    etcd_call_timeout_s: float = Field(2.0, description="Timeout of one etcd call (seconds).")
    lease_ttl_s: int = Field(10, description="TTL of the lease that binds an instance's or leader's record (seconds).")
    loading_timeout_ms: int = Field(
        DEFAULT_TIMINGS.loading_timeout_ms, gt=0,
        description="A load claim older than this no longer counts as loading (milliseconds); every process of "
        "a fabric must use the same value.")
    failure_expiry_ms: int = Field(
        DEFAULT_TIMINGS.failure_expiry_ms, gt=0,
        description="How long a load failure keeps a model off that instance (milliseconds).")

    @field_validator("etcd")
    @classmethod
    def _endpoints(cls, value: str) -> str:
        return ",".join(e.strip() for e in value.split(",") if e.strip())

    @property
    def etcd_endpoints(self) -> list[str]:
        return self.etcd.split(",") if self.etcd else []

    @property
    def timings(self) -> FabricTimings:
        return FabricTimings(self.loading_timeout_ms, self.failure_expiry_ms)

    def keys(self) -> Keys:
        """The fabric's key layout; ValueError for a bad fabric name or root."""
        return Keys(self.fabric, self.etcd_root)

    def etcd_client(self) -> EtcdClient:
        """A client of the fabric's etcd (not yet connected); ValueError for a malformed endpoint."""
        return EtcdClient(self.etcd_endpoints, call_timeout=self.etcd_call_timeout_s,
                          username=self.etcd_username, password=self.etcd_password)
