"""The etcd Secret the operator writes into each namespace it serves in cluster scope (pure)."""

from __future__ import annotations

import base64
import json

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from mesh.operator.etcd_secret import connection_json, qualified_endpoint, served_namespace_secret
from mesh.settings import FabricSettings, etcd_connection_values


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("http://etcd:2379", "http://etcd.home:2379"),  # a Service of the operator's namespace
    ("etcd:2379", "http://etcd.home:2379"),
    ("etcd", "http://etcd.home"),
    ("etcd.db.svc.cluster.local:2379", "http://etcd.db.svc.cluster.local:2379"),  # already qualified
    ("10.0.0.7:2379", "http://10.0.0.7:2379"),
    ("[fd00::7]:2379", "http://[fd00::7]:2379"),
    ("localhost:2379", "http://localhost:2379"),
])
def test_bare_service_names_are_qualified_with_the_operators_namespace(endpoint: str, expected: str) -> None:
    assert qualified_endpoint(endpoint, "home") == expected


def test_the_json_is_modelmesh_servings_and_reads_back_as_the_same_connection() -> None:
    fabric = FabricSettings(etcd="etcd:2379,10.0.0.8:2379", etcd_root="/meshserve/prod",
                            etcd_username="mesh", etcd_password="s3cret")
    document = connection_json(fabric, "home")
    assert json.loads(document) == {"endpoints": "http://etcd.home:2379,http://10.0.0.8:2379",
                                    "root_prefix": "meshserve/prod", "userid": "mesh", "password": "s3cret"}
    # What the pods of the other namespace make of it (their --etcd-connection-file).
    assert etcd_connection_values(document) == {"etcd": "etcd.home:2379,10.0.0.8:2379", "etcd_root": "/meshserve/prod",
                                                "etcd_username": "mesh", "etcd_password": "s3cret"}


def test_over_tls_the_json_carries_the_ca_and_client_certificate_inline_and_reads_back_the_same(tmp_path) -> None:
    ca, cert, key = "-----BEGIN CERTIFICATE-----\nCA\n", "-----BEGIN CERTIFICATE-----\nME\n", "-----BEGIN PRIVATE KEY-----\nK\n"
    (tmp_path / "client.key").write_text(key)  # a file on the operator's side becomes text for the other namespace
    fabric = FabricSettings(etcd="etcd:2379", etcd_tls_ca_pem=ca, etcd_tls_cert_pem=cert,
                            etcd_tls_key_file=str(tmp_path / "client.key"), etcd_tls_server_name="etcd-internal")
    document = json.loads(connection_json(fabric, "home"))
    assert document["endpoints"] == "https://etcd.home:2379"
    assert (document["certificate"], document["client_certificate"], document["client_key"],
            document["override_authority"]) == (ca, cert, key, "etcd-internal")
    again = FabricSettings(**etcd_connection_values(json.dumps(document))).etcd_tls_material()
    assert again == fabric.etcd_tls_material() and again.key == key.encode()


def test_without_credentials_the_json_names_none() -> None:
    assert set(json.loads(connection_json(FabricSettings(etcd="127.0.0.1:2379"), "home"))) == {"endpoints", "root_prefix"}


def test_the_secret_is_a_valid_object_in_the_served_namespace() -> None:
    secret = served_namespace_secret("model-serving-etcd", "team-a", "home", FabricSettings(etcd="etcd:2379"))
    kubernetes_validate.validate(secret, latest_version(), strict=True)
    assert secret["metadata"]["namespace"] == "team-a" and secret["metadata"]["name"] == "model-serving-etcd"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshserve-operator"
    assert json.loads(base64.b64decode(secret["data"]["etcd_connection"]))["endpoints"] == "http://etcd.home:2379"
