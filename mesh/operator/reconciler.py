"""The operator's state and what it does with it, independent of kopf's event plumbing.

- **Models.** Each Predictor / ModelMesh-mode InferenceService is translated
  (`mesh.operator.predictor`) and written to its namespace's fabric (`mesh.operator.models`),
  then tracked: its status is derived from the fabric's watched view and written back only
  when it changes (never by polling etcd; nothing while the view is out of sync, so an etcd
  outage does not rewrite statuses to failed).
- **Runtimes.** ServingRuntimes and ClusterServingRuntimes are indexed from kopf's events;
  each namespace's pools (a Deployment per multiModel runtime, an HPA where annotated, the
  `modelmesh-serving` Service) are reconciled to what the tracked models need, with scale
  to zero after the grace period.
- **Config.** `model-serving-config` in the operator's namespace, read on change.

`run()` does the status and pool work whenever something changed (debounced) and every
`resync_s` otherwise. Only the elected leader runs one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from mesh.domain.errors import MeshError, PreconditionFailed
from mesh.domain.model_status import model_status, vmodel_status
from mesh.etcd.client import EtcdClient
from mesh.operator import etcd_secret, runtime_pool, status
from mesh.operator.config import DEFAULT_CONFIG, ServingConfig, parse_config
from mesh.operator.fabrics import NamespaceFabric, NamespaceFabrics
from mesh.domain.placement import model_labels
from mesh.operator.kube import KubeClient, KubeError, object_path
from mesh.operator.models import apply_model, remove_model
from mesh.operator.predictor import InvalidPredictorSpec, MeshModel, mesh_model
from mesh.operator.settings import OperatorSettings
from mesh.settings import FabricSettings

__all__ = ["Operator", "Tracked"]

log = logging.getLogger(__name__)

#: How long a burst of changes is gathered before one round of status and pool writes.
DEBOUNCE_S = 0.2
API_VERSIONS = {"Predictor": "serving.kserve.io/v1alpha1", "InferenceService": "serving.kserve.io/v1beta1"}
OWNERS = {"Predictor": "ksp", "InferenceService": "isvc"}
ENABLED_LABEL = "modelmesh-enabled"


@dataclass(frozen=True)
class KnownRuntime:
    """A ServingRuntime (`namespace` set) or ClusterServingRuntime (`namespace` None)."""

    name: str
    namespace: str | None
    spec: Mapping[str, Any]
    annotations: Mapping[str, str]

    @property
    def kind(self) -> str:
        return "ServingRuntime" if self.namespace else "ClusterServingRuntime"

    @property
    def serves_mesh(self) -> bool:
        """Only enabled multi-model runtimes become pools (modelmesh-serving ignores the rest)."""
        return bool(self.spec.get("multiModel")) and not self.spec.get("disabled")

    def labels(self, rest_enabled: bool) -> frozenset[str]:
        return frozenset(runtime_pool.runtime_labels(self.spec, self.name, rest_enabled=rest_enabled))


@dataclass
class Tracked:
    """A model resource the operator serves: what it became in the fabric, and its status."""

    kind: str
    namespace: str
    name: str
    model: MeshModel | None
    invalid: InvalidPredictorSpec | None
    status: dict[str, Any] = field(default_factory=dict)  # as last written (or found on the object)
    owner_conflict: bool = False  # a vmodel of this name belongs to the other kind of resource

    @property
    def path(self) -> str:
        return object_path(API_VERSIONS[self.kind], self.kind, self.namespace, self.name)


class Operator(AsyncClosing):
    """See the module docstring. Handlers call the `*_changed` / `*_deleted` methods."""

    def __init__(self, settings: OperatorSettings, fabric: FabricSettings, client: EtcdClient, kube: KubeClient,
                 home_namespace: str) -> None:
        self.settings = settings
        self.fabric_settings = fabric
        self.home_namespace = home_namespace
        self.kube = kube
        self.config: ServingConfig = DEFAULT_CONFIG
        self.tracked: dict[tuple[str, str, str], Tracked] = {}
        self.runtimes: dict[tuple[str | None, str], KnownRuntime] = {}
        self.enabled_namespaces: set[str] = set()
        self._unused_since: dict[tuple[str, str], float] = {}  # (namespace, runtime) -> monotonic time
        self._ever_needed: set[tuple[str, str]] = set()  # (namespace, runtime) some Predictor needed
        self._wake = asyncio.Event()
        self.fabrics = NamespaceFabrics(
            client, etcd_root=fabric.etcd_root,
            fabric_of=lambda ns: ns if settings.cluster_scope else fabric.fabric,
            timings=fabric.timings, on_change=self._wake.set, tls=settings.tls_files().client())
        self._loads = TaskSupervisor("operator-loads")
        self._loading: set[tuple[str, str]] = set()  # (namespace, model id) with a load running
        self._first_round_done = False
        self._waiting: dict[tuple[str, str, str], dict[str, Any]] = {}  # resources of namespaces not served
        self._out_of_sync: set[str] = set()  # namespaces whose fabric view is re-syncing

    async def close(self) -> None:
        await self._loads.close()
        await self.fabrics.close()

    # -- scope ----------------------------------------------------------------------------------
    def serves(self, namespace: str) -> bool:
        return namespace == self.home_namespace or (self.settings.cluster_scope and namespace in self.enabled_namespaces)

    def namespace_changed(self, name: str, labels: Mapping[str, str] | None) -> None:
        enabled = labels is not None and labels.get(ENABLED_LABEL) == "true"
        if enabled != (name in self.enabled_namespaces):
            (self.enabled_namespaces.add if enabled else self.enabled_namespaces.discard)(name)
            log.info("namespace %s %s", name, "enabled" if enabled else "no longer served")
            self._wake.set()
            if enabled:
                self._loads.spawn(self._replay(name), name=f"replay-{name}")

    def remember(self, kind: str, body: Mapping[str, Any] | None, namespace: str, name: str) -> None:
        """A resource in a namespace not served (yet): kept to serve when the namespace is enabled."""
        if body is None:
            self._waiting.pop((kind, namespace, name), None)
        else:
            self._waiting[(kind, namespace, name)] = dict(body)

    async def _replay(self, namespace: str) -> None:
        """Serve the resources of a namespace seen before it was enabled (kopf will not resend them)."""
        for key in [k for k in self._waiting if k[1] == namespace]:
            body = self._waiting.pop(key, None)
            if body is None:
                continue
            try:
                await self.model_changed(key[0], body)
            except MeshError as error:
                log.warning("%s %s/%s: %s; it is retried on its next change", key[0], namespace, key[2], error)

    # -- models -----------------------------------------------------------------------------------
    async def model_changed(self, kind: str, body: Mapping[str, Any]) -> None:
        """Write the resource's vmodel and model to its fabric and track its status. Idempotent."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (kind, namespace, name)
        if not self.serves(namespace):
            self._waiting[key] = dict(body)  # served if its namespace is enabled later
            return
        try:
            model = mesh_model(kind, namespace, name, body)
        except InvalidPredictorSpec as error:
            log.warning("%s %s/%s: invalid spec: %s", kind, namespace, name, error.message)
            self._track(key, Tracked(kind, namespace, name, None, error, dict(body.get("status") or {})))
            return
        if model is None:  # an InferenceService that left ModelMesh mode: as if deleted
            await self.model_deleted(kind, namespace, name)
            return
        fabric = await self.fabrics.get(namespace)
        previous = dict(body.get("status") or {})
        try:
            await apply_model(fabric, model)
        except PreconditionFailed as error:  # a Predictor and an InferenceService of one name
            log.warning("%s %s/%s: %s", kind, namespace, name, error)
            self._track(key, Tracked(kind, namespace, name, model, None, previous, owner_conflict=True))
            return
        # The next round loads it if its status says so (new, failed, waiting for a runtime).
        self._track(key, Tracked(kind, namespace, name, model, None, previous))

    def _load_soon(self, fabric: NamespaceFabric, model_id: str) -> None:
        """Load the model now, as modelmesh-serving's `loadNow` does, in an owned background task."""
        key = (fabric.namespace, model_id)
        if key in self._loading:
            return
        self._loading.add(key)

        async def load() -> None:
            try:
                timeout = self.fabric_settings.loading_timeout_ms / 1000
                await fabric.view.wait_for(lambda: fabric.view.model(model_id) is not None, timeout)
                await fabric.cache_miss.ensure_loaded(model_id, timeout)
            except (MeshError, TimeoutError) as error:
                # Retried on a later round while the status asks for it; the status says why.
                log.debug("load of %s did not complete: %s", model_id, error)
            finally:
                self._loading.discard(key)
                self._wake.set()

        self._loads.spawn(load(), name=f"load-{model_id}")

    async def model_deleted(self, kind: str, namespace: str, name: str) -> None:
        """Remove the resource's vmodel and models from the fabric (the finalizer waits for this)."""
        self.tracked.pop((kind, namespace, name), None)
        self._waiting.pop((kind, namespace, name), None)
        if self.serves(namespace) or namespace in {f.namespace for f in self.fabrics.opened()}:
            try:
                await remove_model(await self.fabrics.get(namespace), name, OWNERS[kind])
            except PreconditionFailed:
                pass  # the vmodel of this name belongs to the other kind of resource: not ours to delete
        self._wake.set()

    def _track(self, key: tuple[str, str, str], tracked: Tracked) -> None:
        previous = self.tracked.get(key)
        if previous is not None:
            tracked.status = previous.status  # what we last wrote stays the reference
        self.tracked[key] = tracked
        self._wake.set()

    # -- runtimes and config ------------------------------------------------------------------------
    def runtime_changed(self, kind: str, body: Mapping[str, Any] | None, namespace: str | None, name: str) -> None:
        key = (namespace if kind == "ServingRuntime" else None, name)
        if body is None:
            self.runtimes.pop(key, None)
        else:
            self.runtimes[key] = KnownRuntime(name, key[0], dict(body.get("spec") or {}),
                                              dict(body.get("metadata", {}).get("annotations") or {}))
        self._wake.set()

    def config_changed(self, data: Mapping[str, str] | None) -> None:
        try:
            config, unknown = parse_config((data or {}).get("config.yaml"))
        except ValueError as error:
            log.error("model-serving-config ignored: %s", error)
            return
        for key in unknown:
            log.warning("model-serving-config: unknown key %s ignored", key)
        if config != self.config:
            self.config = config
            log.info("model-serving-config applied")
            self._wake.set()

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.resync_s):
                    await self._wake.wait()
                await asyncio.sleep(DEBOUNCE_S)  # gather a burst of changes into one round
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                written = await self.sync_statuses()
                await self.sync_pools()
                if not self._first_round_done:
                    self._first_round_done = True
                    log.info("first round done: %d resources tracked, %d statuses written",
                             len(self.tracked), written)
            except (KubeError, OSError) as error:
                log.warning("operator round failed (%s); retrying on the next change or in %.0fs", error,
                            self.settings.resync_s)

    # -- status ---------------------------------------------------------------------------------------
    def supporting(self, namespace: str, model_type: str) -> list[KnownRuntime]:
        """The pool runtimes of `namespace` (its own and the cluster's) that may hold `model_type`."""
        wanted = model_labels(model_type)
        rest = self.config.rest_proxy.enabled
        return [r for r in self.runtimes.values()
                if r.namespace in (namespace, None) and r.serves_mesh and wanted <= r.labels(rest)]

    async def sync_statuses(self) -> int:
        """Write each tracked resource's status where it changed; returns how many were written."""
        written = 0
        for tracked in list(self.tracked.values()):
            fabric = await self.fabrics.get(tracked.namespace)
            if not self._in_sync(fabric):
                continue  # etcd away: keep the last status rather than guess
            wanted = self.status_of(tracked, fabric)
            self._load_if_due(tracked, fabric, wanted)
            patch = status.status_patch(tracked.status, wanted)
            if not patch:
                continue
            try:
                await self.kube.merge_patch(tracked.path + "/status", {"status": patch})
            except KubeError as error:
                if error.status == 404:  # deleted meanwhile: its delete handler untracks it
                    continue
                raise
            tracked.status = wanted
            written += 1
        return written

    def _in_sync(self, fabric: NamespaceFabric) -> bool:
        in_sync = fabric.view.is_ready() and fabric.view.in_sync
        if in_sync != (fabric.namespace not in self._out_of_sync):
            if in_sync:
                self._out_of_sync.discard(fabric.namespace)
                log.info("namespace %s: fabric view back in sync; statuses follow it again", fabric.namespace)
            else:
                self._out_of_sync.add(fabric.namespace)
                log.warning("namespace %s: fabric view out of sync (etcd unreachable?); statuses are kept as they "
                            "are until it catches up", fabric.namespace)
        return in_sync

    def _load_if_due(self, tracked: Tracked, fabric: NamespaceFabric, wanted: dict[str, Any]) -> None:
        """Load a model whose status says it should be (new, failed, or waiting for a runtime
        that is now up), as modelmesh-serving's `loadNow` on its next reconcile."""
        if (tracked.model is None or tracked.owner_conflict
                or self._context(tracked, fabric).runtime is not status.RuntimeState.UP):
            return
        # Upstream decides on the status it had before this reconcile (a load that waited for
        # a runtime shows as Loading/RuntimeUnhealthy there even once the runtime is up).
        if any(status.should_load_now(_predictor_form(tracked.kind, s)) for s in (tracked.status, wanted)):
            vmodel = fabric.view.vmodel(tracked.model.vmodel_id)
            self._load_soon(fabric, vmodel.target_model_id if vmodel else tracked.model.model_id)

    def status_of(self, tracked: Tracked, fabric: NamespaceFabric) -> dict[str, Any]:
        """The resource's status from the fabric's view (and the previous status, kept stable)."""
        now = int(time.time() * 1000)
        model_id = tracked.model.model_id if tracked.model else (tracked.invalid.model_id if tracked.invalid else "")
        vmodel = self._vmodel_status(fabric, tracked.name, now)
        context = self._context(tracked, fabric)
        if tracked.owner_conflict:
            conflict = status.owner_conflict_status(_predictor_form(tracked.kind, tracked.status))
            if tracked.kind == "Predictor":
                return conflict
            return status.inference_service_status(conflict, tracked.status, now_ms=now)
        if tracked.invalid is not None:
            return status.invalid_resource_status(tracked.kind, tracked.invalid.message, model_id, context,
                                                  tracked.status, now_ms=now, vmodel=vmodel)
        return status.resource_status(tracked.kind, vmodel, context, tracked.status, now_ms=now)

    def _vmodel_status(self, fabric: NamespaceFabric, vmodel_id: str, now: int):
        view = fabric.view
        record = view.vmodel(vmodel_id)
        if record is None:
            return None
        timeout = self.fabric_settings.loading_timeout_ms

        def of(model_id: str):
            return model_status(view.model(model_id), view.copies_of(model_id), now, timeout)

        active = of(record.active_model_id)
        target = active if record.target_model_id == record.active_model_id else of(record.target_model_id)
        return vmodel_status(record, active, target)

    def _context(self, tracked: Tracked, fabric: NamespaceFabric) -> status.StatusContext:
        runtime = status.RuntimeState.UP
        if tracked.model is not None:
            model_type = tracked.model.record.model_type
            wanted = model_labels(model_type)
            up = any(wanted <= record.advertised_labels and not record.shutting_down
                     for record in fabric.view.all_instances().values())
            runtime = status.runtime_state(model_type, bool(self.supporting(tracked.namespace, model_type)), up)
        config = self.config
        return status.StatusContext(
            namespace=tracked.namespace, service_name=config.inference_service_name,
            grpc_port=config.inference_service_port, http_port=config.rest_proxy.port,
            rest_enabled=config.rest_proxy.enabled, tls=bool(config.tls.secret_name), runtime=runtime)

    # -- runtime pools --------------------------------------------------------------------------------
    async def sync_pools(self) -> None:
        namespaces = {self.home_namespace, *(self.enabled_namespaces if self.settings.cluster_scope else ())}
        for namespace in sorted(namespaces):
            await self._sync_namespace(namespace)

    async def _sync_namespace(self, namespace: str) -> None:
        needed = {r.name for t in self.tracked.values() if t.namespace == namespace and t.model is not None
                  for r in self.supporting(namespace, t.model.record.model_type)}
        await self.kube.apply(runtime_pool.service(namespace, self.config))
        if namespace != self.home_namespace:  # the chart runs the home namespace's router and controller
            # Its pods read etcd from their own namespace's Secret, which the operator writes there.
            await self.kube.apply(etcd_secret.served_namespace_secret(
                self.settings.etcd_secret, namespace, self.home_namespace, self.fabric_settings))
            for build in (runtime_pool.router_deployment, runtime_pool.controller_deployment):
                await self.kube.apply(build(
                    namespace, self.config, meshserve_image=self.settings.image,
                    etcd_secret=self.settings.etcd_secret,
                    fabric_args=["--fabric", self.fabrics.fabric_name(namespace),
                                 "--lease-ttl-s", str(self.fabric_settings.lease_ttl_s),
                                 "--loading-timeout-ms", str(self.fabric_settings.loading_timeout_ms)]))
        for runtime in sorted(self.runtimes.values(), key=lambda r: (r.namespace is None, r.name)):
            if runtime.namespace not in (namespace, None) or not runtime.serves_mesh:
                continue
            try:
                runtime_pool.check_runtime(runtime.spec, runtime.annotations)
            except runtime_pool.InvalidRuntime as error:
                log.error("%s %s refused: %s", runtime.kind, runtime.name, error)
                continue
            replicas = self._replicas(namespace, runtime, runtime.name in needed)
            autoscaler = runtime_pool.hpa(runtime.name, namespace, runtime.annotations, self.config)
            deployment = runtime_pool.deployment(
                runtime.name, namespace, runtime.spec, self.config,
                # Once up, an HPA owns the replica count: applying one would fight it.
                replicas=None if autoscaler is not None and replicas > 0 else replicas,
                etcd_secret=self.settings.etcd_secret, meshserve_image=self.settings.image,
                agent_args=self._agent_args(namespace, runtime), kind=runtime.kind)
            await self.kube.apply(deployment)
            if autoscaler is not None:
                await self.kube.apply(autoscaler)

    def _replicas(self, namespace: str, runtime: KnownRuntime, needed: bool) -> int:
        """Replicas now: scaled to zero `scaleToZero`'s grace period after the last Predictor that
        needed the runtime went, and at once when none has needed it since the operator started."""
        key = (namespace, runtime.name)
        if needed:
            self._ever_needed.add(key)
            self._unused_since.pop(key, None)
            unused_for = None
        elif key in self._ever_needed:
            unused_for = time.monotonic() - self._unused_since.setdefault(key, time.monotonic())
        else:
            unused_for = None
        return runtime_pool.desired_replicas(runtime.spec, self.config, needed=needed, unused_since_s=unused_for,
                                             annotations=runtime.annotations)

    def _agent_args(self, namespace: str, runtime: KnownRuntime) -> list[str]:
        fabric = self.fabrics.fabric_name(namespace)
        return ["--fabric", fabric, "--etcd-connection-file", runtime_pool.ETCD_CONNECTION_FILE,
                "--lease-ttl-s", str(self.fabric_settings.lease_ttl_s),
                "--loading-timeout-ms", str(self.fabric_settings.loading_timeout_ms)]


def _predictor_form(kind: str, resource_status: dict[str, Any]) -> dict[str, Any]:
    """A resource's status in the Predictor's shape (an InferenceService keeps it in modelStatus)."""
    if kind == "Predictor":
        return resource_status
    return status.predictor_status_from_inference_service(resource_status)
