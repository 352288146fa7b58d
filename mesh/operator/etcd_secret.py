"""The etcd Secret of a namespace served in cluster scope (pure: builds the object only).

Runtime, router and controller pods read etcd from the `model-serving-etcd` Secret of their
own namespace (mounted, `--etcd-connection-file`). In cluster scope modelmesh-serving's
controller writes that Secret into every modelmesh-enabled namespace; so does meshserve's
operator, from the connection it uses itself (the home namespace's Secret or `--etcd`):

- an endpoint that names a bare Service (`http://etcd:2379`) is qualified with the operator's
  namespace (`etcd.<home>`), since from another namespace the short name does not resolve
  (modelmesh-serving #186 was this bug);
- every namespace gets the same JSON: each is its own fabric (`--fabric <namespace>` on its
  pods) under the operator's `root_prefix`, as the operator's own keys for it are.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from mesh.settings import FabricSettings

__all__ = ["ETCD_CONNECTION_KEY", "connection_json", "qualified_endpoint", "served_namespace_secret"]

ETCD_CONNECTION_KEY = "etcd_connection"
_LABELS = {"app.kubernetes.io/managed-by": "meshserve-operator", "app.kubernetes.io/part-of": "modelmesh-serving"}


def qualified_endpoint(endpoint: str, home_namespace: str, scheme: str = "http") -> str:
    """`<scheme>://host:port` with a bare Service name qualified by the namespace it lives in."""
    address = endpoint.split("://", 1)[-1].rstrip("/")
    parts = urlsplit(f"//{address}")
    host = parts.hostname or ""
    if _is_ip(host) or host == "localhost" or "." in host:
        return f"{scheme}://{address}"
    return f"{scheme}://{host}.{home_namespace}" + (f":{parts.port}" if parts.port else "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def connection_json(fabric: FabricSettings, home_namespace: str) -> str:
    """modelmesh-serving's `etcd_connection` JSON for pods of another namespace; over TLS, the
    CA and client certificate inline (the operator's own files are not mounted there)."""
    tls = fabric.etcd_tls_material()
    scheme = "https" if tls else "http"
    connection: dict[str, str] = {
        "endpoints": ",".join(qualified_endpoint(e, home_namespace, scheme) for e in fabric.etcd_endpoints),
        "root_prefix": fabric.etcd_root.strip("/"),
    }
    if tls:
        for key, pem in (("certificate", tls.ca), ("client_certificate", tls.cert), ("client_key", tls.key)):
            if pem:
                connection[key] = pem.decode()
        if tls.server_name:
            connection["override_authority"] = tls.server_name
    if fabric.etcd_username:
        connection["userid"] = fabric.etcd_username
    if fabric.etcd_password:
        connection["password"] = fabric.etcd_password
    return json.dumps(connection, sort_keys=True)


def served_namespace_secret(name: str, namespace: str, home_namespace: str, fabric: FabricSettings) -> dict[str, Any]:
    """The v1 Secret `name` in `namespace` holding the etcd connection of the operator's fabric."""
    encoded = base64.b64encode(connection_json(fabric, home_namespace).encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(_LABELS)},
            "data": {ETCD_CONNECTION_KEY: encoded}}
