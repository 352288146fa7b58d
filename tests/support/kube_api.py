"""A Kubernetes API server for the operator's tests: kmock's emulator (made for testing kopf
operators), served on a free loopback port, with what a real API server adds to objects.

No real API server can run here. kmock 0.8 keeps objects as plain JSON, so this module adds,
in a subclass:
- `metadata.resourceVersion` (bumped on every write), `uid`, `creationTimestamp` and
  `generation` (bumped when `spec` changes): kopf tests resourceVersion in its JSON patches;
- 422 for a JSON patch whose `test` fails (kmock answers 500, kopf expects 422 and retries);
- watches that see every change after they start: kmock 0.8 snapshots the objects first and
  subscribes to its event bus after, so a change in between was lost (kopf then waited for
  its own patch to show up until its next re-list, a minute later);
- a fix for cluster-level core paths (`/api/v1/namespaces[/name]`), which kmock 0.8 parses
  as a namespaced request;
- discovery entries for the resources the operator reads and writes (`declare_resources`).

`KubeApi` starts it and writes a kubeconfig that points at it, so a real operator process
connects with the normal kubeconfig resolution.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpointer
import kmock
from kmock._internal import parsing

__all__ = ["KubeApi", "RESOURCES", "StampingEmulator"]

# Resources the operator uses: (group/version/plural, kind, namespaced, subresources).
RESOURCES: list[tuple[str, str, bool, set[str]]] = [
    ("serving.kserve.io/v1alpha1/predictors", "Predictor", True, {"status"}),
    ("serving.kserve.io/v1alpha1/servingruntimes", "ServingRuntime", True, set()),
    ("serving.kserve.io/v1alpha1/clusterservingruntimes", "ClusterServingRuntime", False, set()),
    ("serving.kserve.io/v1beta1/inferenceservices", "InferenceService", True, {"status"}),
    ("apps/v1/deployments", "Deployment", True, {"status", "scale"}),
    ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler", True, {"status"}),
    ("v1/services", "Service", True, set()),
    ("v1/configmaps", "ConfigMap", True, set()),
    ("v1/secrets", "Secret", True, set()),
    ("v1/events", "Event", True, set()),
    ("v1/namespaces", "Namespace", False, set()),
]
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _original_parse_path(path)


parsing.parse_path = _parse_path  # kmock 0.8 reads `parsing.parse_path` at call time


class StampingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus the metadata a real API server maintains."""

    _versions = itertools.count(1)
    _last_version = 0

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    def stamp_new(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        return obj

    @property
    def status_writes(self) -> dict[tuple[str | None, str], int]:
        """Writes to each object's status subresource: (namespace, name) -> count."""
        if not hasattr(self, "_status_writes"):
            self._status_writes = collections.Counter()
        return self._status_writes

    async def _handle(self, request):  # type: ignore[override]
        action = getattr(request, "action", None)
        if request.resource is not None and action == kmock.action.UPDATE and request.subresource == "status":
            self.status_writes[(request.namespace, request.name)] += 1
        if request.resource is not None and action == kmock.action.CREATE and isinstance(request.data, dict):
            self.stamp_new(request.data)
        elif request.resource is not None and action == kmock.action.UPDATE and request.data is not None:
            version = self._next_version()
            current = self._current(request)
            generation = (current or {}).get("metadata", {}).get("generation", 1)
            if isinstance(request.data, list):  # JSON patch
                conflict = self._failed_test(request.data, current)
                if conflict is not None:  # what a real API server answers: 422, not a 500
                    return aiohttp.web.json_response(
                        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                         "code": 422, "message": conflict}, status=422)
                touches_spec = any(op.get("path", "").startswith("/spec") for op in request.data)
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if touches_spec:
                    request.data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})
            elif isinstance(request.data, dict):  # merge patch or a whole object
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if "spec" in request.data and current is not None and request.data["spec"] != current.get("spec"):
                    meta["generation"] = generation + 1
        return await super()._handle(request)

    async def _serve_list(self, request):  # type: ignore[override]
        listed = await super()._serve_list(request)
        listed["metadata"]["resourceVersion"] = str(self._last_version)
        return listed

    async def _serve_watch(self, request):  # type: ignore[override]
        """kmock's watch, but subscribed to the bus BEFORE the snapshot of existing objects."""
        yield b""
        bus = self._buses[request.resource]
        marker = await bus.mark()
        try:
            async with self._lock:
                objs = [obj for (resource, namespace, name), obj in self.objects.items()
                        if resource == request.resource and not obj.deleted
                        and (request.namespace is None or namespace == request.namespace)
                        and (request.name is None or name == request.name)]
                since = _version(request.params.get("resourceVersion"))
                # As an API server: a watch from a list's version sends only what changed after it.
                events = [{"type": "ADDED" if since is None else "MODIFIED", "object": obj.raw} for obj in objs
                          if since is None or (_version(obj.raw["metadata"].get("resourceVersion")) or 0) > since]
            seen = {json.dumps(e["object"]["metadata"].get("resourceVersion")) + e["object"]["metadata"]["name"]
                    for e in events}
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if json.dumps(meta.get("resourceVersion")) + meta.get("name", "") in seen:
                    continue  # already sent in the snapshot
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                yield event
        finally:
            await bus.unmark(marker)

    @staticmethod
    def _failed_test(ops: list[dict[str, Any]], current: dict[str, Any] | None) -> str | None:
        for op in ops:
            if op.get("op") != "test":
                continue
            try:
                found = jsonpointer.resolve_pointer(current or {}, op["path"])
            except jsonpointer.JsonPointerException:
                found = None
            if found != op.get("value"):
                return f"the test of {op['path']} failed: {found!r} is not {op.get('value')!r}"
        return None

    def _current(self, request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None


def _version(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class KubeApi:
    """The emulator on a free loopback port, and a kubeconfig for it (`kubeconfig`)."""

    def __init__(self, workdir: Path, namespace: str = "default") -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.emulator = StampingEmulator()
        self._server: kmock.Server | None = None
        self.kubeconfig = workdir / "kubeconfig"

    async def __aenter__(self) -> KubeApi:
        await self.emulator.__aenter__()
        self._server = kmock.Server(self.emulator)
        await self._server.__aenter__()
        for path, kind, namespaced, subresources in RESOURCES:
            self.emulator.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                                               subresources=subresources, verbs=VERBS)
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "kmock", "cluster": {"server": str(self.emulator.url).rstrip("/")}}],
            "users": [{"name": "operator", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "kmock", "user": "operator",
                                                       "namespace": self.namespace}}],
        }))
        self.put("v1/namespaces", None, {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": self.namespace}})
        return self

    async def __aexit__(self, *exc) -> None:
        if self._server is not None:
            await self._server.__aexit__(*exc)
        await self.emulator.__aexit__(*exc)

    @property
    def url(self) -> str:
        return str(self.emulator.url).rstrip("/")

    def put(self, resource: str, namespace: str | None, obj: dict[str, Any]) -> None:
        """Store an object directly (as if created before the operator started)."""
        self.emulator.objects[kmock.resource(resource), namespace, obj["metadata"]["name"]] = \
            self.emulator.stamp_new(obj)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return self.emulator.objects[key].raw
