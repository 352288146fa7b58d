"""etcd over TLS (client certificates) and with a user and password, against a real etcd
started with --cert-file/--key-file/--trusted-ca-file/--client-cert-auth and auth enabled;
configured as the model-serving-etcd secret's etcd_connection JSON says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.etcd.client import EtcdClient, EtcdTls, RetryPolicy
from mesh.etcd.errors import StoreError
from mesh.settings import FabricSettings, etcd_connection_values
from tests.support.etcd_server import EtcdServer, EtcdServerTls
from tests.support.tls import Pki, make_pki

PASSWORD = "etcd-Pa55-never-shown"
QUICK = RetryPolicy(attempts=2, initial_backoff=0.02, max_backoff=0.05, deadline=0.5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki) -> Iterator[EtcdServer]:
    """etcd that takes only TLS clients with a certificate from the test CA, and a user and password."""
    server = EtcdServer(name="tls", tls=EtcdServerTls(pki.server.cert_file, pki.server.key_file, pki.ca_file,
                                                      client_cert_auth=True, client_cert_file=pki.client.cert_file,
                                                      client_key_file=pki.client.key_file))
    with server:
        server.enable_auth("meshserve", PASSWORD)
        yield server


def _connection_file(folder: Path, pki: Pki, etcd: EtcdServer, **extra: str) -> Path:
    """etcd_connection as modelmesh-serving's secret holds it, with files beside the JSON (relative names)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.crt").write_bytes(pki.client.cert_file.read_bytes())
    (folder / "client.key").write_bytes(pki.client.key_file.read_bytes())
    document = {"endpoints": f"https://{etcd.endpoint}", "userid": "meshserve", "password": PASSWORD,
                "root_prefix": "mm", "certificate": pki.ca_file.read_text(),
                "client_certificate_file": "client.crt", "client_key_file": "client.key", **extra}
    path = folder / "etcd_connection"
    path.write_text(json.dumps(document))
    return path


async def test_a_fabric_reaches_etcd_over_mutual_tls_with_a_user_from_etcd_connection(tls_etcd, pki, tmp_path):
    fabric = FabricSettings(etcd_connection_file=str(_connection_file(tmp_path / "secret", pki, tls_etcd)))
    assert fabric.etcd_tls and fabric.etcd_username == "meshserve"
    assert PASSWORD not in repr(fabric) and "PRIVATE KEY" not in repr(fabric)
    async with fabric.etcd_client() as client:
        await client.put("/mm/tls-check", {"ok": True})
        assert (await client.get("/mm/tls-check")).value == {"ok": True}


@pytest.mark.parametrize("case", ["no client certificate", "another CA", "plaintext", "wrong password"])
async def test_etcd_refuses_what_its_tls_and_auth_do_not_allow_and_the_error_shows_no_secret(
        case, tls_etcd, pki, tmp_path):
    client_pair = (pki.client.cert_file.read_bytes(), pki.client.key_file.read_bytes())
    tls: EtcdTls | None = EtcdTls(ca=pki.ca_file.read_bytes(), cert=client_pair[0], key=client_pair[1])
    password = PASSWORD
    if case == "no client certificate":
        tls = EtcdTls(ca=pki.ca_file.read_bytes())
    elif case == "another CA":
        tls = EtcdTls(ca=pki.other_ca_file.read_bytes(), cert=client_pair[0], key=client_pair[1])
    elif case == "plaintext":
        tls = None
    else:
        password = "not-the-" + PASSWORD[::-1]
    client = EtcdClient([tls_etcd.endpoint], call_timeout=1.0, retry=QUICK, username="meshserve", password=password,
                        tls=tls)
    try:
        with pytest.raises(StoreError) as refused:
            await client.put("/mm/refused", {"case": case})
        assert password not in str(refused.value) and PASSWORD not in repr(refused.value)
    finally:
        await client.close()
    good = EtcdTls(ca=pki.ca_file.read_bytes(), cert=client_pair[0], key=client_pair[1])
    async with EtcdClient([tls_etcd.endpoint], username="meshserve", password=PASSWORD, tls=good) as allowed:
        await allowed.put("/mm/still-serving", {"after": case})  # the refusal cost etcd nothing


def test_etcd_connection_maps_every_tls_key_and_https_turns_tls_on(tmp_path):
    document = json.dumps({"endpoints": "https://etcd.a:2379,http://etcd.b:2379", "certificate_file": "ca.pem",
                           "client_certificate": "-----BEGIN CERTIFICATE-----x", "client_key_file": "/abs/key.pem",
                           "override_authority": "etcd-internal"})
    values = etcd_connection_values(document, tmp_path)
    assert values == {"etcd": "etcd.a:2379,etcd.b:2379", "etcd_tls": True, "etcd_tls_ca_file": str(tmp_path / "ca.pem"),
                      "etcd_tls_cert_pem": "-----BEGIN CERTIFICATE-----x", "etcd_tls_key_file": "/abs/key.pem",
                      "etcd_tls_server_name": "etcd-internal"}
    assert "etcd_tls" not in etcd_connection_values(json.dumps({"endpoints": "http://etcd:2379"}))
    with pytest.raises(ValueError, match="client_key must be a string"):
        etcd_connection_values(json.dumps({"endpoints": "https://e:1", "client_key": 5}))


def test_a_client_certificate_without_its_key_or_a_missing_file_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        FabricSettings(etcd="e:1", etcd_tls_cert_pem="-----BEGIN CERTIFICATE-----").etcd_tls_material()
    with pytest.raises(ValueError, match=f"cannot read the etcd TLS CA {tmp_path / 'none.pem'}"):
        FabricSettings(etcd="e:1", etcd_tls_ca_file=str(tmp_path / "none.pem")).etcd_tls_material()
    assert FabricSettings(etcd="e:1").etcd_tls_material() is None
