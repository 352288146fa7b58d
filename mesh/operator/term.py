"""One leadership term of the operator: kopf's handlers over an `Operator`, run until the
term ends (the leader resigns, loses its lease, or the process stops).

Handlers only convert kopf's events into `Operator` calls. kopf keeps its bookkeeping in
annotations (`meshserve.io/...`), never in `status` (the CRD schemas have no room for it),
and its finalizer keeps a Predictor until its vmodel and models are gone from etcd.
A store outage makes a handler fail with a temporary error, which kopf retries.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType
from typing import Any

import kopf

from mesh.domain.errors import MeshError
from mesh.etcd.client import EtcdClient
from mesh.operator import runtime_pool
from mesh.operator.config import CONFIGMAP_NAME
from mesh.operator.kube import KubeClient
from mesh.operator.reconciler import Operator
from mesh.operator.settings import OperatorSettings
from mesh.settings import FabricSettings

__all__ = ["FINALIZER", "OperatorTerm"]

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
FINALIZER = "meshserve.io/finalizer"
ANNOTATION_PREFIX = "meshserve.io"
MODELMESH_MODE = {"serving.kserve.io/deploymentMode": "ModelMesh"}
RETRY_S = 2.0
STOP_GRACE_S = 10.0


class OperatorTerm:
    """An `Operator` and a kopf run over it, for one term (see `mesh.control.leadership`)."""

    def __init__(self, settings: OperatorSettings, fabric: FabricSettings, client: EtcdClient, kube: KubeClient,
                 info: kopf.ConnectionInfo, namespace: str, process_stop: asyncio.Event) -> None:
        self.settings = settings
        self.process_stop = process_stop
        self.info = info
        self.namespace = namespace
        self.operator = Operator(settings, fabric, client, kube, namespace)
        self._stop = asyncio.Event()

    async def __aenter__(self) -> OperatorTerm:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.operator.close()

    async def run(self) -> None:
        """kopf and the operator's rounds, until cancelled (then kopf is stopped gracefully)."""
        ready = asyncio.Event()
        kopf_run = asyncio.ensure_future(kopf.operator(
            registry=self._registry(), settings=self._kopf_settings(), standalone=True,
            clusterwide=self.settings.cluster_scope,
            namespaces=() if self.settings.cluster_scope else (self.namespace,), stop_flag=self._stop,
            ready_flag=ready))
        rounds = asyncio.ensure_future(self.operator.run())
        signals = asyncio.ensure_future(self._take_back_signals(ready))
        try:
            await asyncio.wait([kopf_run, rounds], return_when=asyncio.FIRST_COMPLETED)
            if kopf_run.done() and not kopf_run.cancelled() and kopf_run.exception() is None:
                self.process_stop.set()  # kopf saw a signal before we took them back: stop the process
            for done in (kopf_run, rounds):
                if done.done() and not done.cancelled() and done.exception() is not None:
                    raise done.exception()  # an unexpected end: to the leadership loop's log
        finally:
            self._stop.set()
            rounds.cancel()
            signals.cancel()
            await asyncio.wait([kopf_run, rounds, signals], timeout=STOP_GRACE_S)
            kopf_run.cancel()

    async def _take_back_signals(self, ready: asyncio.Event) -> None:
        """kopf installs its own SIGTERM/SIGINT handlers, which would end only kopf (and the
        leadership loop would campaign again); once it is up, signals stop the whole process,
        which ends this term and stops kopf gracefully."""
        await ready.wait()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.process_stop.set)

    def _kopf_settings(self) -> kopf.OperatorSettings:
        settings = kopf.OperatorSettings()
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
        settings.scanning.disabled = not self.settings.cluster_scope  # exact namespace: no namespace listing
        settings.posting.level = logging.WARNING  # Kubernetes Events for problems, not every success
        return settings

    def _registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        operator = self.operator

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return self.info

        async def reconcile(kind: str, body: kopf.Body) -> None:
            try:
                await operator.model_changed(kind, body)
            except MeshError as error:
                if not error.retryable:
                    raise kopf.PermanentError(str(error)) from error
                raise kopf.TemporaryError(str(error), delay=RETRY_S) from error

        async def remove(kind: str, namespace: str, name: str) -> None:
            try:
                await operator.model_deleted(kind, namespace, name)
            except MeshError as error:
                raise kopf.TemporaryError(f"cannot remove from the fabric yet: {error}", delay=RETRY_S) from error

        def served(namespace: str, **_: Any) -> bool:
            return operator.serves(namespace)

        for kind, version, plural, when in (("Predictor", "v1alpha1", "predictors", None),
                                            ("InferenceService", "v1beta1", "inferenceservices", MODELMESH_MODE)):
            # Only served namespaces get handlers (and so a finalizer); resources elsewhere are
            # remembered, and served when their namespace is labelled later.
            filters: dict[str, Any] = {"annotations": when} if when else {}
            filters["when"] = served

            @kopf.on.event(GROUP, version, plural, registry=registry,
                           when=lambda namespace, **_: not operator.serves(namespace),
                           **({"annotations": when} if when else {}))
            async def elsewhere(event: kopf.RawEvent, body: kopf.Body, _kind: str = kind, **_: Any) -> None:
                operator.remember(_kind, None if event["type"] == "DELETED" else body,
                                  body["metadata"]["namespace"], body["metadata"]["name"])

            @kopf.on.resume(GROUP, version, plural, registry=registry, **filters)
            @kopf.on.create(GROUP, version, plural, registry=registry, **filters)
            @kopf.on.update(GROUP, version, plural, registry=registry, field="spec", **filters)
            async def changed(body: kopf.Body, _kind: str = kind, **_: Any) -> None:
                await reconcile(_kind, body)

            @kopf.on.delete(GROUP, version, plural, registry=registry, **filters)
            async def deleted(namespace: str, name: str, _kind: str = kind, **_: Any) -> None:
                await remove(_kind, namespace, name)

        for kind, plural in (("ServingRuntime", "servingruntimes"), ("ClusterServingRuntime", "clusterservingruntimes")):
            @kopf.on.event(GROUP, "v1alpha1", plural, registry=registry)
            async def runtime_event(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None,
                                    _kind: str = kind, **_: Any) -> None:
                deleted = event["type"] == "DELETED"
                if not deleted:
                    try:
                        runtime_pool.check_runtime(body.get("spec") or {}, body.metadata.annotations)
                    except runtime_pool.InvalidRuntime as error:  # say why on the object, for kubectl describe
                        kopf.warn(body, reason="InvalidRuntime", message=str(error))
                operator.runtime_changed(_kind, None if deleted else body, namespace, name)

        home = self.namespace

        @kopf.on.event("v1", "configmaps", registry=registry,
                       when=lambda name, namespace, **_: name == CONFIGMAP_NAME and namespace == home)
        async def config_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            operator.config_changed(None if event["type"] == "DELETED" else body.get("data"))

        if self.settings.cluster_scope:
            @kopf.on.event("v1", "namespaces", registry=registry)
            async def namespace_event(event: kopf.RawEvent, name: str, labels: kopf.Labels, **_: Any) -> None:
                operator.namespace_changed(name, None if event["type"] == "DELETED" else dict(labels))

        return registry
