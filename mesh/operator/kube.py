"""The operator's writes to the Kubernetes API: a few JSON calls over aiohttp.

kopf watches and hands handlers their objects, but has no public client for writing other
objects (Deployments, Services, HPAs, status patches made outside a handler). The
`kubernetes` package is synchronous and `kubernetes_asyncio` is a large generated client
for the five calls needed here, so this module speaks the API directly, with the
credentials kopf's own login resolved (kubeconfig or in-cluster service account).

Errors: `KubeError` with the HTTP status and the API's `reason`; `retryable` for 409/429/5xx
and connection failures, so callers retry only what may succeed.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf

from mesh.aio.tasks import AsyncClosing
from mesh.domain.errors import MeshError

__all__ = ["KubeClient", "KubeError", "object_path"]

#: Plural names of the kinds the operator reads and writes (no discovery needed for these).
PLURALS = {
    "Predictor": "predictors",
    "InferenceService": "inferenceservices",
    "ServingRuntime": "servingruntimes",
    "ClusterServingRuntime": "clusterservingruntimes",
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Event": "events",
    "Namespace": "namespaces",
}


class KubeError(MeshError):
    """A Kubernetes API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retryable = status in (0, 409, 429) or status >= 500


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """`/api/v1/namespaces/ns/services/name`, `/apis/apps/v1/...`: the REST path of an object."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path = f"{path}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        context.load_verify_locations(cadata=_text(info.ca_data))
    if info.certificate_path or info.certificate_data:
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as cert, \
                tempfile.NamedTemporaryFile("w", suffix=".pem") as key:
            # ssl loads client certificates from files only; they are read at once and removed.
            cert.write(_text(info.certificate_data) if info.certificate_data else open(info.certificate_path).read())
            key.write(_text(info.private_key_data) if info.private_key_data else open(info.private_key_path).read())
            cert.flush()
            key.flush()
            context.load_cert_chain(cert.name, key.name)
    return context


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        return data.decode()
    try:  # kubeconfig's *-data fields are base64
        return base64.b64decode(data, validate=True).decode()
    except ValueError:
        return data


class KubeClient(AsyncClosing):
    """JSON calls against one API server. Create it inside the event loop that uses it."""

    def __init__(self, info: kopf.ConnectionInfo, *, timeout_s: float = 10.0) -> None:
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        self.server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers=headers, auth=auth, timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info)))

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body)
        try:
            async with self._session.request(method, self.server + path, data=data,
                                             headers={"Content-Type": content_type}) as response:
                text = await response.text()
                if response.status == 404 and method == "GET":
                    return None
                if response.status >= 400:
                    try:
                        answer = json.loads(text)
                    except ValueError:
                        answer = {}
                    raise KubeError(f"{method} {path}: {response.status} {answer.get('message') or text[:200]}",
                                    status=response.status, reason=answer.get("reason", ""))
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(f"{method} {path}: {type(error).__name__}: {error}") from error

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        return await self._call("GET", path)

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, obj)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, path: str) -> bool:
        """Delete the object; False if it was not there."""
        try:
            await self._call("DELETE", path)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def apply(self, obj: dict[str, Any]) -> bool:
        """Create `obj`, or merge-patch the live object to it where it differs. True if written.

        Only the fields `obj` names are compared, so fields the API server or other
        controllers add (status, defaults) never cause a write.
        """
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        live = await self.get(path)
        if live is None:
            collection = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
            await self.create(collection, obj)
            return True
        patch = _difference(live, obj)
        if not patch:
            return False
        await self.merge_patch(path, patch)
        return True


def _difference(live: Any, wanted: Any) -> Any:
    """The part of `wanted` that `live` does not already have (None when nothing differs).

    Fields only `live` has (the API server's defaults, status) do not count, in lists too: a
    list whose items each hold what is wanted is the same list (a merge patch would replace a
    list whole, so a differing one is sent whole)."""
    if isinstance(wanted, list) and isinstance(live, list):
        same = len(wanted) == len(live) and all(_difference(l, w) is None for l, w in zip(live, wanted))
        return None if same else wanted
    if isinstance(wanted, dict) and isinstance(live, dict):
        changed = {}
        for key, value in wanted.items():
            if key not in live:
                changed[key] = value
                continue
            sub = _difference(live[key], value)
            if sub is not None:
                changed[key] = sub
        return changed or None
    return None if live == wanted else wanted
