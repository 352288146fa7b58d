"""A throwaway certificate authority for trying TLS locally (`meshserve up --tls`, tests).

`LocalCa.create()` makes a CA key and self-signed CA certificate in memory; `write_ca`
writes the CA certificate (what clients trust: tritonclient's `root_certificates`), and
`issue` writes a certificate and key signed by it, for loopback names by default, usable
as a server and as a client certificate (mTLS). Everything is valid for a day: nothing
here is meant to outlive the run it was made for.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "LOOPBACK_NAMES", "LocalCa"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
_VALID = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """Files written by `LocalCa.issue`, and the certificate's serial number."""

    cert_file: Path
    key_file: Path
    serial: int


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class LocalCa:
    """A CA whose key lives only in this object."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, common_name: str = "meshserve throwaway CA") -> LocalCa:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(common_name)).issuer_name(_name(common_name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALID)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def write_ca(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, folder: Path, common_name: str, names: tuple[str, ...] = LOOPBACK_NAMES, *,
              cert_name: str = "tls.crt", key_name: str = "tls.key") -> Issued:
        """A certificate for `names` (IP addresses or DNS names) and its key, as
        folder/cert_name and folder/key_name (a Kubernetes TLS secret's names by default)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(_name(common_name)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALID)
                .add_extension(_san(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = folder / cert_name, folder / key_name
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return Issued(cert_file, key_file, serial)
