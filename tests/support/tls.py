"""Certificates written by the test (`cryptography`): a self-signed one for loopback (https
tests), and `make_pki`: a CA with server and client certificates (TLS and mTLS tests)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.cli.local_ca import Issued, LocalCa
from protos.tls import TlsFiles


def self_signed(folder: Path, name: str = "meshserve-test") -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass(frozen=True)
class Pki:
    """A CA of the test's own (`mesh.cli.local_ca`) with a server and a client certificate
    for loopback, and a second CA that signed neither (the "wrong CA")."""

    folder: Path
    ca: LocalCa
    ca_file: Path
    server: Issued
    client: Issued
    other_ca_file: Path

    def server_files(self, client_auth: str = "none") -> TlsFiles:
        return TlsFiles(str(self.server.cert_file), str(self.server.key_file), str(self.ca_file), client_auth)

    def client_files(self, *, with_cert: bool = True, ca_file: Path | None = None) -> TlsFiles:
        cert = (str(self.client.cert_file), str(self.client.key_file)) if with_cert else ("", "")
        return TlsFiles(*cert, str(ca_file or self.ca_file))

    def rotate_server(self) -> Issued:
        """A new server certificate from the same CA written over the old files, as a Kubernetes
        secret update does (new files renamed into place, each one whole)."""
        fresh = self.ca.issue(self.folder / "next", "server")
        os.replace(fresh.key_file, self.server.key_file)
        os.replace(fresh.cert_file, self.server.cert_file)
        return fresh


def make_pki(folder: Path) -> Pki:
    ca = LocalCa.create("meshserve test CA")
    ca_file = ca.write_ca(folder / "ca.crt")
    other = LocalCa.create("some other CA").write_ca(folder / "other-ca.crt")
    return Pki(folder, ca, ca_file, ca.issue(folder / "server", "server"), ca.issue(folder / "client", "client-a"), other)


def served_serial(port: int, pki: Pki) -> int:
    """The serial of the certificate a new TLS connection to 127.0.0.1:`port` is shown
    (with the client certificate, for servers that require one; h2 offered, as gRPC wants)."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.client.cert_file), str(pki.client.key_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
