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
from mesh.etcd.client import EtcdClient, EtcdTls
from mesh.etcd.keys import DEFAULT_FABRIC, DEFAULT_ROOT, Keys
from protos.tls import read_pem

__all__ = ["FabricSettings", "etcd_connection_values"]


class FabricSettings(BaseSettings):
    """How to reach the fabric's etcd, which fabric to join, and the fabric's timings."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="forbid")

    #: Settings read from the environment (or etcd_connection) only: a password on a command
    #: line shows in `ps`; PEM text belongs in files or the etcd_connection JSON.
    FLAGS_SKIP: ClassVar[tuple[str, ...]] = ("etcd_password", "etcd_tls_ca_pem", "etcd_tls_cert_pem", "etcd_tls_key_pem")

    etcd: str = Field("", description="etcd endpoints, comma-separated HOST:PORT (several members allowed).")
    etcd_connection_file: str = Field(
        "", description="A file holding modelmesh-serving's etcd_connection JSON (the model-serving-etcd secret, "
        "mounted); read when no endpoints are given.")
    fabric: str = Field(DEFAULT_FABRIC, description="Fabric name: the etcd key prefix is <etcd_root>/<fabric>/.")
    etcd_root: str = Field(DEFAULT_ROOT, description="Root of every fabric's keys in etcd.")
    etcd_username: str | None = Field(None, description="etcd user, when etcd has auth on.")
    etcd_password: str | None = Field(None, repr=False,
                                      description="etcd password, when etcd has auth on (environment only).")
    etcd_tls: bool = Field(False, description="Reach etcd over TLS; on by itself with an https:// endpoint in "
                           "etcd_connection or any etcd_tls_* file.")
    etcd_tls_ca_file: str = Field("", description="PEM CA etcd's certificate must chain to (etcd_connection's "
                                  "certificate_file); empty: the system's CAs.")
    etcd_tls_cert_file: str = Field("", description="PEM client certificate for etcd's --client-cert-auth "
                                    "(etcd_connection's client_certificate_file).")
    etcd_tls_key_file: str = Field("", description="PEM private key of etcd_tls_cert_file (client_key_file).")
    etcd_tls_server_name: str = Field("", description="Name expected in etcd's certificate, for every endpoint "
                                      "(etcd_connection's override_authority); empty: each endpoint's host.")
    etcd_tls_ca_pem: str = Field("", description="PEM CA text (etcd_connection's certificate; environment only).")
    etcd_tls_cert_pem: str = Field("", description="PEM client certificate text (client_certificate; environment only).")
    etcd_tls_key_pem: str = Field("", repr=False, description="PEM client key text (client_key; environment only).")
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
        base = Path(self.etcd_connection_file).parent
        for name, value in etcd_connection_values(document, base).items():
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

    def etcd_tls_material(self) -> EtcdTls | None:
        """What `etcd_client` dials TLS with (None: plaintext); ValueError naming a file that
        does not read, or a certificate without its key."""
        files = (self.etcd_tls_ca_file, self.etcd_tls_cert_file, self.etcd_tls_key_file)
        inline = (self.etcd_tls_ca_pem, self.etcd_tls_cert_pem, self.etcd_tls_key_pem)
        if not (self.etcd_tls or any(files) or any(inline)):
            return None
        ca, cert, key = (_pem(text, path, what) for text, path, what in
                         zip(inline, files, ("CA", "client certificate", "client key")))
        if bool(cert) != bool(key):
            raise ValueError("etcd TLS needs both a client certificate and its key (or neither)")
        return EtcdTls(ca=ca, cert=cert, key=key, server_name=self.etcd_tls_server_name)

    def etcd_client(self) -> EtcdClient:
        """A client of the fabric's etcd (not yet connected); ValueError for a malformed endpoint
        or TLS material that does not read."""
        return EtcdClient(self.etcd_endpoints, call_timeout=self.etcd_call_timeout_s,
                          username=self.etcd_username, password=self.etcd_password, tls=self.etcd_tls_material())


def _pem(text: str, path: str, what: str) -> bytes | None:
    if text:
        return text.encode()
    return read_pem(path, f"etcd TLS {what}") if path else None


#: etcd_connection's TLS keys (IBM etcd-java's schema, which modelmesh reads) and the settings they fill.
_TLS_KEYS = {"certificate": "etcd_tls_ca_pem", "certificate_file": "etcd_tls_ca_file",
             "client_certificate": "etcd_tls_cert_pem", "client_certificate_file": "etcd_tls_cert_file",
             "client_key": "etcd_tls_key_pem", "client_key_file": "etcd_tls_key_file",
             "override_authority": "etcd_tls_server_name"}


def etcd_connection_values(document: str, base_dir: Path | None = None) -> dict[str, str | bool]:
    """`FabricSettings` values from modelmesh-serving's `etcd_connection` JSON (the
    `model-serving-etcd` secret): endpoints (scheme stripped; https:// turns TLS on),
    `root_prefix`, `userid`, `password`, and the TLS keys: `certificate` / `certificate_file`
    (the CA), `client_certificate` / `client_certificate_file`, `client_key` /
    `client_key_file`, `override_authority`. A relative `*_file` is relative to `base_dir`
    (the JSON file's folder). ValueError naming what is wrong, never a value."""
    try:
        connection = json.loads(document)
    except ValueError as error:
        raise ValueError(f"etcd_connection is not JSON: {error}") from None
    if not isinstance(connection, dict) or not connection.get("endpoints"):
        raise ValueError("etcd_connection must be a JSON object with 'endpoints'")
    endpoints = [e.strip() for e in str(connection["endpoints"]).split(",") if e.strip()]
    values: dict[str, str | bool] = {"etcd": ",".join(e.split("://", 1)[-1].rstrip("/") for e in endpoints)}
    for key, setting in _TLS_KEYS.items():
        value = connection.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise ValueError(f"etcd_connection: {key} must be a string")
        if key.endswith("_file") and base_dir is not None and not Path(value).is_absolute():
            value = str(base_dir / value)
        values[setting] = value
    if any(e.lower().startswith("https://") for e in endpoints) or any(k in values for k in _TLS_KEYS.values()):
        values["etcd_tls"] = True
    if connection.get("root_prefix"):
        values["etcd_root"] = "/" + str(connection["root_prefix"]).strip("/")
    if connection.get("userid"):
        values["etcd_username"] = str(connection["userid"])
    if connection.get("password"):
        values["etcd_password"] = str(connection["password"])
    return values
