"""Settings shared by every process that joins a fabric (runtime agent, controller, router).

Flags override `MESHSERVE_*` variables override the defaults written here once. The
fabric's timings live here too, so every process (and so every endpoint that answers
`meshserve status`) judges a load claim by the same clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.domain.timings import DEFAULT_TIMINGS, FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import DEFAULT_FABRIC, DEFAULT_ROOT, Keys

__all__ = ["FabricSettings", "etcd_connection_values"]


class FabricSettings(BaseSettings):
    """How to reach the fabric's etcd, which fabric to join, and the fabric's timings."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    #: Settings read from the environment only: a password on a command line shows in `ps`.
    FLAGS_SKIP: ClassVar[tuple[str, ...]] = ("etcd_password",)

    etcd: str = Field("", description="etcd endpoints, comma-separated HOST:PORT (several members allowed).")
    etcd_connection_file: str = Field(
        "", description="A file holding modelmesh-serving's etcd_connection JSON (the model-serving-etcd secret, "
        "mounted); read when no endpoints are given.")
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

    @model_validator(mode="after")
    def _connection_file(self) -> FabricSettings:
        if self.etcd or not self.etcd_connection_file:
            return self
        try:
            document = Path(self.etcd_connection_file).read_text()
        except OSError as error:
            raise ValueError(f"cannot read etcd_connection_file {self.etcd_connection_file}: {error.strerror}") from None
        for name, value in etcd_connection_values(document).items():
            object.__setattr__(self, name, value)
        self.etcd = self._endpoints(self.etcd)
        return self

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


def etcd_connection_values(document: str) -> dict[str, str]:
    """`FabricSettings` values from modelmesh-serving's `etcd_connection` JSON (the
    `model-serving-etcd` secret): endpoints (scheme stripped), `root_prefix`, `userid`,
    `password`. ValueError naming what is wrong; a TLS field is refused until etcd TLS is
    supported, rather than connecting in plaintext to a server that expects TLS."""
    try:
        connection = json.loads(document)
    except ValueError as error:
        raise ValueError(f"etcd_connection is not JSON: {error}") from None
    if not isinstance(connection, dict) or not connection.get("endpoints"):
        raise ValueError("etcd_connection must be a JSON object with 'endpoints'")
    tls = sorted(k for k in connection if k.startswith(("certificate", "client_key", "client_certificate")))
    if tls:
        raise ValueError(f"etcd_connection: TLS to etcd is not supported yet ({', '.join(tls)})")
    endpoints = [e.strip() for e in str(connection["endpoints"]).split(",") if e.strip()]
    values = {"etcd": ",".join(e.split("://", 1)[-1].rstrip("/") for e in endpoints)}
    if connection.get("root_prefix"):
        values["etcd_root"] = "/" + str(connection["root_prefix"]).strip("/")
    if connection.get("userid"):
        values["etcd_username"] = str(connection["userid"])
    if connection.get("password"):
        values["etcd_password"] = str(connection["password"])
    return values
