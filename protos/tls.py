"""TLS for every listener and client of every process kind, from PEM files.

Kubernetes mounts a TLS secret as `tls.crt`, `tls.key` and `ca.crt`; the same three files
serve here, and are re-read when they change (a secret update swaps them in place), so a
certificate is rotated without a restart and without dropping a connection in flight:

- `ServerTls.grpc_credentials()`: gRPC server credentials whose certificate is fetched again
  at each new handshake when the files changed (`grpc.dynamic_ssl_server_credentials`);
  connections already open keep the certificate they were made with.
- `ServerTls.ssl_context()`: an `ssl.SSLContext` for aiohttp and the metrics server that
  swaps in a context with the new files at the next handshake.
- `ClientTls.grpc_credentials()`: channel credentials, built again when the files changed;
  channels opened after that use them (channels already open keep theirs).

A half-written rotation (a new certificate beside the old key) is not taken: the old
material keeps serving until the files load as a pair. Errors name files, never contents.

Here, in protos, because every process kind needs it and runtimes may import only protos
and puller (as with `protos.metrics_exposition`).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

__all__ = ["ClientAuth", "ClientTls", "ServerTls", "TlsFiles", "TlsSettings", "add_port", "aio_channel",
           "read_pem", "sync_channel"]

log = logging.getLogger(__name__)

ClientAuth = Literal["none", "optional", "require"]


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's TLS material is. `cert_file`/`key_file`: its own certificate (served,
    and shown to peers that ask for a client certificate); `ca_file`: the CA that peers'
    certificates must chain to (clients' too, with `client_auth`); `server_name`: the name a
    client expects in servers' certificates, when it is not the host it dials."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    client_auth: ClientAuth = "none"
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS needs both a certificate file and a key file (or neither)")
        if self.client_auth != "none" and not self.ca_file:
            raise ValueError(f"tls_client_auth {self.client_auth} needs tls_ca_file (the CA clients' certificates "
                             "are checked against)")
        if self.client_auth != "none" and not self.cert_file:
            raise ValueError(f"tls_client_auth {self.client_auth} needs the server's own tls_cert_file and tls_key_file")

    @property
    def serves_tls(self) -> bool:
        """Listeners speak TLS (a certificate is given)."""
        return bool(self.cert_file)

    @property
    def dials_tls(self) -> bool:
        """Clients speak TLS (a certificate to show or a CA to check peers against is given)."""
        return bool(self.cert_file or self.ca_file)

    def server(self) -> ServerTls | None:
        return ServerTls(self) if self.serves_tls else None

    def client(self) -> ClientTls | None:
        return ClientTls(self) if self.dials_tls else None


class TlsSettings(BaseSettings):
    """The TLS fields every process kind has, under its own variable prefix (a subclass sets it)."""

    tls_cert_file: str = Field("", description="PEM certificate (Kubernetes secret: tls.crt) this process serves "
                               "gRPC and REST with, and shows as its client certificate; empty: plaintext. "
                               "Re-read when it changes.")
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file (tls.key).")
    tls_ca_file: str = Field("", description="PEM CA (ca.crt) the certificates of peers this process calls, and of "
                             "its clients with tls_client_auth, must chain to; given alone, calls out use TLS "
                             "without a certificate of their own. Empty: the system's CAs.")
    tls_client_auth: ClientAuth = Field("none", description="Mutual TLS on this process's listeners "
                                        "(modelmesh-serving's tls.clientAuth): require (no client certificate from "
                                        "tls_ca_file, no connection), optional (REST checks one when shown; gRPC "
                                        "lets every client in, grpcio asks for none), none.")
    tls_server_name: str = Field("", description="Name expected in the certificates of servers this process calls, "
                                 "when it is not the host dialled (pod IPs); empty: the host.")
    metrics_tls_cert_file: str = Field("", description="PEM certificate of the metrics endpoint; with metrics_tls_key_file "
                                       "it serves https (modelmesh-serving's default scheme; no client certificates asked), else "
                                       "http. Re-read when it changes.")
    metrics_tls_key_file: str = Field("", description="PEM private key of the metrics endpoint's certificate.")

    @model_validator(mode="after")
    def _tls_consistent(self) -> TlsSettings:
        self.tls_files()
        return self

    def metrics_tls(self) -> dict[str, str]:
        """`serve_metrics`'s TLS keywords. The metrics endpoint has files of its own (often the
        same ones): Prometheus scrapes it with or without TLS whatever the data plane does."""
        return {"tls_cert_file": self.metrics_tls_cert_file, "tls_key_file": self.metrics_tls_key_file}

    def tls_files(self) -> TlsFiles:
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.tls_client_auth,
                        self.tls_server_name)


# -- reading the files ----------------------------------------------------------------------
def _signature(paths: Sequence[str]) -> tuple[Any, ...]:
    """What changes when a file is replaced or rewritten (a secret update swaps a symlink)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def read_pem(path: str, what: str) -> bytes:
    """The PEM file's bytes; ValueError naming `what` and the file (never its content)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror or error}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the {what} {path} is not PEM")
    return data


def _pair(cert: bytes, key: bytes) -> bool:
    """The key is the certificate's: checked on the bytes read, so that a rotation replacing
    the files between two reads can never pair one's certificate with the other's key."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        public = x509.load_pem_x509_certificate(cert).public_key().public_bytes(der, spki)
        private = serialization.load_pem_private_key(key, password=None)
    except Exception:  # noqa: BLE001 - anything that does not parse (an unsupported key type too) is no pair
        return False
    return private.public_key().public_bytes(der, spki) == public


@dataclass(frozen=True)
class _Material:
    cert: bytes | None
    key: bytes | None
    ca: bytes | None


class _Watched:
    """The files' material, read again when their signature changes; a read that fails (or a
    certificate and key that do not make a pair) keeps the last good material."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._paths = [p for p in (files.cert_file, files.key_file, files.ca_file) if p]
        self._lock = threading.Lock()
        self._seen = _signature(self._paths)
        self.material = self._load()  # at start a bad file is an error, not a warning
        self.generation = 0

    def _load(self) -> _Material:
        f = self.files
        cert = read_pem(f.cert_file, "TLS certificate") if f.cert_file else None
        key = read_pem(f.key_file, "TLS key") if f.key_file else None
        ca = read_pem(f.ca_file, "TLS CA") if f.ca_file else None
        if cert is not None and key is not None and not _pair(cert, key):
            raise ValueError(f"cannot load the TLS certificate {f.cert_file} with key {f.key_file}: the key is not "
                             "the certificate's (or does not parse)")
        if ca is not None:
            try:
                ssl.create_default_context(cadata=ca.decode("ascii", "replace"))
            except (ValueError, ssl.SSLError) as error:
                raise ValueError(f"cannot load the TLS CA {f.ca_file}: "
                                 f"{getattr(error, 'reason', None) or type(error).__name__}") from None
        return _Material(cert, key, ca)

    def refresh(self) -> bool:
        """True when new material was taken (the files changed and load)."""
        signature = _signature(self._paths)
        if signature == self._seen:
            return False
        with self._lock:
            if signature == self._seen:
                return False
            try:
                material = self._load()
            except ValueError as error:
                log.warning("TLS files changed but do not load yet, keeping the previous ones: %s", error)
                return False
            if _signature(self._paths) != signature:  # replaced while being read: read again next time
                return False
            self._seen, self.material = signature, material
            self.generation += 1
        log.info("TLS: reloaded %s", ", ".join(self._paths))
        return True


# -- servers ---------------------------------------------------------------------------------
class ServerTls:
    """A listener's TLS from `files` (which must have a certificate). ValueError at
    construction when a file does not load."""

    def __init__(self, files: TlsFiles) -> None:
        if not files.serves_tls:
            raise ValueError("a TLS listener needs tls_cert_file and tls_key_file")
        self.files = files
        self._watched = _Watched(files)

    def _config(self) -> Any:
        m = self._watched.material
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)

    def _fetch(self) -> Any:
        # grpc asks before each new handshake; None keeps the configuration it has.
        return self._config() if self._watched.refresh() else None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._config(), self._fetch,
                                                   require_client_authentication=self.files.client_auth == "require")

    def ssl_context(self, *, client_auth: bool = True) -> ssl.SSLContext:
        """A server context that takes new files at the next handshake after they change;
        `client_auth` False ignores `files.client_auth` (a metrics endpoint Prometheus scrapes)."""
        verify = {"require": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}.get(self.files.client_auth) \
            if client_auth else None
        built = {"generation": -1, "context": None}

        def current() -> ssl.SSLContext:
            generation = self._watched.generation
            if built["generation"] != generation:
                try:  # ssl reads the pair from the files again: a rotation under way may not load yet
                    built["context"] = self._build(verify, current_callback)
                    built["generation"] = generation
                except (OSError, ssl.SSLError):
                    if built["context"] is None:
                        raise
            return built["context"]

        def current_callback(sock: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext) -> None:
            # Called with every ClientHello: the place to swap in rotated files.
            self._watched.refresh()
            fresh = current()
            if sock.context is not fresh:
                sock.context = fresh

        return current()

    def _build(self, verify: ssl.VerifyMode | None, callback: Any) -> ssl.SSLContext:
        f = self.files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(f.cert_file, f.key_file)
        if verify is not None:
            context.load_verify_locations(cadata=self._watched.material.ca.decode())
            context.verify_mode = verify
        context.sni_callback = callback
        return context


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind `server` to `address`, over TLS when `tls` is given; the bound port (0: not bound)."""
    try:
        if tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, tls.grpc_credentials())
    except RuntimeError:  # newer grpc raises where older ones returned 0
        return 0


# -- clients ---------------------------------------------------------------------------------
class ClientTls:
    """A client's TLS from `files`: peers checked against `ca_file` (the system's CAs when
    empty), `cert_file`/`key_file` shown when a server asks. ValueError when a file does not load."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._watched = _Watched(files)
        self._credentials: tuple[int, grpc.ChannelCredentials] | None = None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials of the files as they are now (built again after they change)."""
        self._watched.refresh()
        generation = self._watched.generation
        if self._credentials is None or self._credentials[0] != generation:
            m = self._watched.material
            self._credentials = (generation, grpc.ssl_channel_credentials(
                root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert))
        return self._credentials[1]

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.files.server_name)] if self.files.server_name else []


def aio_channel(address: str, options: Sequence[tuple[str, Any]] = (), tls: ClientTls | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `address`: TLS when `tls` is given, plaintext otherwise."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.grpc_credentials(), options=[*options, *tls.channel_options()])


def sync_channel(address: str, options: Sequence[tuple[str, Any]] = (), tls: ClientTls | None = None) -> grpc.Channel:
    """A blocking channel to `address`: TLS when `tls` is given, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.grpc_credentials(), options=[*options, *tls.channel_options()])
