"""ServingRuntime / ClusterServingRuntime -> the objects of its runtime pool (pure builders).

Each function takes the resource's `spec` (and `metadata.annotations` where upstream reads
them) as plain dicts and returns plain dicts: the operator's kopf handlers apply them, the
chart's templates can be derived from them, and tests validate them against Kubernetes'
schemas. Nothing here talks to the API server or to etcd.

What a multiModel runtime becomes, as in kserve/modelmesh-serving (`controllers/
servingruntime_controller.go`, `controllers/modelmesh/*.go`,
`config/internal/base/deployment.yaml.tmpl`):

- `deployment()`: a Deployment `<inferenceServiceName>-<runtime>` (`modelmesh-serving-<runtime>`)
  labelled `modelmesh-service: <inferenceServiceName>` and `name: <deployment name>` (also its
  selector), with the runtime's own containers from the spec, `/models` (an emptyDir sized 1.5x
  the containers' memory limits) mounted in each, and upstream's rolling-update strategy and
  90 s grace period. Where upstream adds `mm` (ModelMesh) and `puller` containers, meshserve
  adds one sidecar, `mm-agent`, running `meshserve agent`: the instance agent over the wire
  (it registers the pod in the fabric, makes room, pulls models into `/models`, and calls the
  runtime's model-runtime SPI). The router calls the runtime's data endpoint directly.
- meshserve's own runtime (see `is_native`) is one container, `meshserve runtime` with the
  agent inside; no sidecar.
- `service()`: the `modelmesh-serving` Service clients address. In modelmesh-serving the
  runtime pods serve 8033 themselves; in meshserve the router does, so the Service selects
  the router's pods (`ROUTER_POD_LABELS`), not the runtime pods.
- `hpa()`: an autoscaling/v2 HorizontalPodAutoscaler from the `serving.kserve.io/*` annotations.
- `desired_replicas()`: `spec.replicas`, else `podsPerRuntime`; zero after the scale-to-zero
  grace period when no Predictor needs the runtime, at once when none ever did.
- `check_runtime()`: upstream's refusals (reserved names and ports, replicas with an HPA), in
  upstream's words.
- `OPERATOR_RBAC`: every Kubernetes API call the operator makes, as RBAC PolicyRules.

Pure: the standard library only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from mesh.operator.config import DEFAULT_CONFIG, ServingConfig

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_PORT",
    "ETCD_CONNECTION_FILE",
    "ETCD_SECRET_NAME",
    "NATIVE_RUNTIME_PORT",
    "CLUSTER_SCOPE_ONLY_RBAC",
    "OPERATOR_RBAC",
    "ROUTER_POD_LABELS",
    "InvalidRuntime",
    "check_runtime",
    "deployment",
    "deployment_name",
    "desired_replicas",
    "hpa",
    "is_native",
    "runtime_labels",
    "service",
]


class InvalidRuntime(ValueError):
    """The ServingRuntime cannot become a runtime pool; `reason` says why, in upstream's words.

    Permanent: nothing changes until the resource (or the ConfigMap) is edited, so the operator
    reports it on the resource and does not retry.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- names upstream reserves in user runtime specs (controllers/servingruntime_validator.go) -

RESERVED_CONTAINER_NAMES = frozenset({"mm", "rest-proxy", "puller"})
RESERVED_PREFIX = "mm-"
RESERVED_PORT_NAMES = frozenset({"grpc", "http", "prometheus"})
#: 8080 ModelMesh's internal litelinks, 8085 the built-in adapter, 8089 probes, 8090 preStop.
RESERVED_PORTS = frozenset({8080, 8085, 8089, 8090})
#: "ascii 'm' is 109. ModelMesh -> mm -> m*m = 11881", kept for future use.
RESERVED_PORT_RANGE = range(11881, 11900)
RESERVED_VOLUMES = frozenset({"storage-config", "etcd-config", "tc-config", "domain-socket", "models-dir"})
#: Upstream lets runtime containers mount `models-dir` themselves (it is mounted at /models anyway).
RESERVED_VOLUME_MOUNTS = RESERVED_VOLUMES - {"models-dir"}
BUILT_IN_SERVER_TYPES = ("triton", "mlserver", "ovms", "torchserve")

# -- the pod's layout ----------------------------------------------------------------------

#: meshserve's sidecar; the `mm-` prefix is reserved, so no user container can take the name.
AGENT_CONTAINER = "mm-agent"
#: The agent's gRPC port (grpc.health.v1 for the probes); upstream's probe port, reserved.
AGENT_PORT = 8089
AGENT_PORT_NAME = "mm-agent"
#: meshserve's runtime serves the model-runtime SPI and V2 inference on one port.
NATIVE_RUNTIME_PORT = 8085

MODELS_VOLUME = "models-dir"
MODELS_DIR = "/models"
MODELS_DIR_SCALE = Decimal("1.5")
SOCKET_VOLUME = "domain-socket"
STORAGE_VOLUME = "storage-config"
STORAGE_MOUNT = "/storage-config"
ETCD_VOLUME = "etcd-config"
ETCD_SECRET_NAME = "model-serving-etcd"
ETCD_SECRET_KEY = "etcd_connection"
ETCD_MOUNT = "/etc/meshserve/etcd"
#: `tls.secretName` (kubernetes.io/tls: tls.crt, tls.key), mounted for an https /metrics.
#: `tls.secretName`, mounted into every meshserve container of a fabric (a Kubernetes TLS secret:
#: tls.crt, tls.key, and ca.crt, which cert-manager writes; for a self-signed certificate, the
#: certificate itself). Its certificate must name the inference Service: internal calls check that name.
TLS_VOLUME = "meshserve-tls"
TLS_MOUNT = "/etc/meshserve/tls"
TLS_FILES = (f"{TLS_MOUNT}/tls.crt", f"{TLS_MOUNT}/tls.key", f"{TLS_MOUNT}/ca.crt")
#: The metrics endpoint serves the same certificate (when `metrics.scheme` is https).
METRICS_TLS_VOLUME, METRICS_TLS_MOUNT, METRICS_TLS_FILES = TLS_VOLUME, TLS_MOUNT, TLS_FILES[:2]


def tls_args(config: ServingConfig, client_auth: str = "require") -> list[str]:
    """A meshserve process's TLS flags from the mounted `tls.secretName` (none without one):
    internal links use mutual TLS whatever `tls.clientAuth` says, as upstream's do; the router
    passes the external interface's `tls.clientAuth` instead."""
    if not config.tls.secret_name:
        return []
    cert, key, ca = TLS_FILES
    return ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-file", ca, "--tls-client-auth", client_auth,
            "--tls-server-name", config.inference_service_name]


def _tls_volume(config: ServingConfig) -> list[dict[str, Any]]:
    return [{"name": TLS_VOLUME, "secret": {"secretName": config.tls.secret_name}}] if config.tls.secret_name else []


def _tls_mount(config: ServingConfig) -> list[dict[str, Any]]:
    return [{"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True}] if config.tls.secret_name else []
#: The etcd connection JSON as the agent sees it (for the caller's `agent_args`).
ETCD_CONNECTION_FILE = f"{ETCD_MOUNT}/{ETCD_SECRET_KEY}"
PVC_ROOT = "/pvc_mounts"
TERMINATION_GRACE_PERIOD_S = 90

#: The router pods' labels: the `modelmesh-serving` Service sends 8033/8008/2112 to them. The
#: chart must put these on the router's pod template, with ports named grpc, http, prometheus.
ROUTER_POD_LABELS: Mapping[str, str] = {
    "app.kubernetes.io/name": "meshserve",
    "app.kubernetes.io/component": "router",
}
MANAGED_BY = {"app.kubernetes.io/managed-by": "meshserve-operator"}

AGENT_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}

# -- HPA annotations (kserve pkg/constants, modelmesh-serving pkg/constants) ----------------

AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
AUTOSCALER_METRICS = "serving.kserve.io/metrics"
TARGET_UTILIZATION = "serving.kserve.io/targetUtilizationPercentage"
MIN_SCALE = "serving.kserve.io/min-scale"
MAX_SCALE = "serving.kserve.io/max-scale"
DEFAULT_TARGET_UTILIZATION = 80
DEFAULT_MIN_REPLICAS = 1

_ENDPOINT = re.compile(r"^port:([0-9]+)$")
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
_QUANTITY_SUFFIX = {
    "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


# -- checks --------------------------------------------------------------------------------


def _check_name(name: str, reserved: frozenset[str], what: str) -> None:
    if name in reserved:
        raise InvalidRuntime(f"{what} {name} is reserved for internal use")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidRuntime(f'{what} cannot start with "mm-", which is reserved for internal use')


def _check_container(container: Mapping[str, Any]) -> None:
    _check_name(str(container.get("name", "")), RESERVED_CONTAINER_NAMES, "container name")
    for mount in container.get("volumeMounts") or ():
        _check_name(str(mount.get("name", "")), RESERVED_VOLUME_MOUNTS, "volume")
    for port in container.get("ports") or ():
        if port.get("name"):
            _check_name(str(port["name"]), RESERVED_PORT_NAMES, "port name")
        number = port.get("containerPort")
        if number in RESERVED_PORTS:
            raise InvalidRuntime(f"Port {number} is reserved for internal use")
        if isinstance(number, int) and number in RESERVED_PORT_RANGE:
            raise InvalidRuntime("Port range [11881-11899] is reserved for internal use")


@dataclass(frozen=True)
class _Endpoint:
    """A `grpcEndpoint` / `grpcDataEndpoint`: `port:N` (TCP on the pod) or `unix:/path`."""

    port: int | None = None
    path: str | None = None

    @property
    def socket_dir(self) -> str | None:
        return self.path.rsplit("/", 1)[0] or "/" if self.path else None

    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port is not None else f"unix:{self.path}"


def _endpoint(spec: Mapping[str, Any], field: str) -> _Endpoint | None:
    raw = spec.get(field)
    if raw is None:
        return None
    text = str(raw)
    if match := _ENDPOINT.match(text):
        port = int(match.group(1))
        if not 0 < port < 65536:
            raise InvalidRuntime(f"{field} {text}: the port must be from 1 to 65535")
        return _Endpoint(port=port)
    if text.startswith("unix:"):
        path = text.removeprefix("unix://") if text.startswith("unix://") else text.removeprefix("unix:")
        if not path.startswith("/"):
            raise InvalidRuntime(f"{field} {text}: a unix endpoint needs an absolute path")
        return _Endpoint(path=path)
    raise InvalidRuntime(f"Invalid Endpoint: {text} ({field} must be port:N or unix:/path)")


def _socket_dir(spec: Mapping[str, Any]) -> str | None:
    dirs = {e.socket_dir for f in ("grpcEndpoint", "grpcDataEndpoint") if (e := _endpoint(spec, f)) and e.path}
    if len(dirs) > 1:
        raise InvalidRuntime(f"Only one unix domain socket path is allowed. Found {sorted(dirs)}")
    return dirs.pop() if dirs else None


def check_runtime(spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> None:
    """Refuse what modelmesh-serving refuses in a ServingRuntime, with its messages.

    Checks, in upstream's order: the built-in adapter's server type and its container;
    container names (`mm`, `rest-proxy`, `puller`, `mm-*`), their volume mounts, port names
    (`grpc`, `http`, `prometheus`) and ports (8080, 8085, 8089, 8090, 11881-11899); volume
    names; then the endpoints; then the `serving.kserve.io/*` autoscaler annotations of
    `metadata.annotations` (`annotations`), `spec.replicas` with an HPA among them.
    Raises `InvalidRuntime`.
    """
    adapter = spec.get("builtInAdapter")
    containers = list(spec.get("containers") or ())
    if adapter:
        server_type = str(adapter.get("serverType", ""))
        if server_type not in BUILT_IN_SERVER_TYPES:
            raise InvalidRuntime(f"unrecognized built-in runtime server type {server_type}")
        if not any(c.get("name") == server_type for c in containers):
            raise InvalidRuntime(f"must include runtime container with name {server_type}")
    if not containers:
        raise InvalidRuntime("spec.containers must name at least one container")
    for container in containers:
        if not container.get("name"):
            raise InvalidRuntime("every container of spec.containers needs a name")
        try:
            _check_container(container)
        except InvalidRuntime as exc:
            raise InvalidRuntime(f"container spec for {container.get('name')} is invalid: {exc.reason}") from None
    for volume in spec.get("volumes") or ():
        _check_name(str(volume.get("name", "")), RESERVED_VOLUMES, "volume")
    _socket_dir(spec)  # validates both endpoints
    _autoscaler(annotations or {}, spec.get("replicas"))


# -- labels --------------------------------------------------------------------------------


def runtime_labels(spec: Mapping[str, Any], runtime_name: str, *, rest_enabled: bool = True) -> tuple[str, ...]:
    """The labels an instance of this runtime advertises, sorted (upstream `GetServingRuntimeLabelSet`).

    `rt:<runtime>`; `mt:<format>` and `mt:<format>:<version>` for formats with `autoSelect: true`
    only; `pv:<protocol>` for each of `protocolVersions`, plus `pv:v2` for `grpc-v2` while REST
    is on (`restProxy.enabled`: REST V2 calls reach a gRPC V2 runtime through the router).
    """
    labels = {f"rt:{runtime_name}"}
    for fmt in spec.get("supportedModelFormats") or ():
        if fmt.get("autoSelect") is True:
            labels.add(f"mt:{fmt['name']}")
            if fmt.get("version") is not None:
                labels.add(f"mt:{fmt['name']}:{fmt['version']}")
    for protocol in spec.get("protocolVersions") or ():
        labels.add(f"pv:{protocol}")
        if rest_enabled and protocol == "grpc-v2":
            labels.add("pv:v2")
    return tuple(sorted(labels))


# -- the Deployment ------------------------------------------------------------------------


def _repository(image: str) -> str:
    """`registry:5000/org/meshserve:1.2@sha256:..` -> `registry:5000/org/meshserve`."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def is_native(spec: Mapping[str, Any], meshserve_image: str) -> bool:
    """Whether this is meshserve's own runtime: one of its containers runs the meshserve image.

    The rule is the image, compared without tag or digest (`ghcr.io/x/meshserve:0.2` is native
    when the operator runs `ghcr.io/x/meshserve:0.3`), because that is what decides what the
    container can run: an annotation could mark any image. That container then runs
    `meshserve runtime` with the agent inside (its `command` is replaced, its `args` are
    appended as extra runtime flags); other containers are kept as they are; no sidecar.
    """
    wanted = _repository(meshserve_image)
    return any(_repository(str(c.get("image", ""))) == wanted for c in spec.get("containers") or ())


def deployment_name(runtime_name: str, config: ServingConfig = DEFAULT_CONFIG) -> str:
    """`<inferenceServiceName>-<runtime>`, as upstream names a runtime's Deployment (and its HPA)."""
    return f"{config.inference_service_name}-{runtime_name}"


def _quantity_bytes(value: Any, where: str) -> Decimal:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Decimal(str(value))
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match:
        number, suffix = match.groups()
        try:
            if suffix[:1] in ("e", "E") and len(suffix) > 1:
                return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
            if suffix in _QUANTITY_SUFFIX:
                return Decimal(number) * Decimal(_QUANTITY_SUFFIX[suffix])
        except (InvalidOperation, ValueError):
            pass
    raise InvalidRuntime(f"{where}: {value!r} is not a Kubernetes quantity")


def _models_dir_size(containers: Iterable[Mapping[str, Any]]) -> str | None:
    """1.5x the sum of the containers' memory limits (upstream `calculateModelDirSize`); None without any."""
    total = Decimal(0)
    for c in containers:
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is not None:
            total += _quantity_bytes(limit, f"container {c.get('name')} resources.limits.memory")
    return str(int(total * MODELS_DIR_SCALE)) if total > 0 else None


def _merge_env(env: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`env` with `extra` set over it by name (order kept; new names at the end)."""
    merged = {e["name"]: dict(e) for e in env}
    for e in extra:
        merged[e["name"]] = dict(e)
    return list(merged.values())


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


_POD_ENV = (
    _field_env("POD_NAME", "metadata.name"),
    _field_env("POD_NAMESPACE", "metadata.namespace"),
    _field_env("POD_IP", "status.podIP"),
)

_OUR_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _grpc_probes(port: int, tls: bool = False) -> dict[str, Any]:
    # Upstream's numbers for the mm container: ready quickly, killed only after 90 s + 2 misses.
    # grpc.health.v1 on the port: the runtime and the agent answer SERVING once READY. The
    # startup probe gives a slow runtime behind an agent (which waits up to 300 s for it) time
    # before liveness may restart the pod. The kubelet's gRPC probe speaks plaintext only: a
    # port on TLS is probed by TCP.
    check: dict[str, Any] = {"tcpSocket": {"port": port}} if tls else {"grpc": {"port": port}}
    return {
        "startupProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 66},
        "readinessProbe": {**check, "initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 1},
        "livenessProbe": {**check, "initialDelaySeconds": 90, "periodSeconds": 30, "timeoutSeconds": 5,
                          "failureThreshold": 2},
    }


def _union_pull_secrets(*lists: Iterable[Any]) -> list[dict[str, str]]:
    names: dict[str, None] = {}
    for items in lists:
        for item in items:
            name = item if isinstance(item, str) else item.get("name")
            if name:
                names[str(name)] = None
    return [{"name": n} for n in names]


def _add_ports(ports: Sequence[Mapping[str, Any]], extra: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    taken = {p.get("containerPort") for p in extra}
    return [dict(p) for p in ports if p.get("containerPort") not in taken] + list(extra)


def deployment(
    runtime_name: str,
    namespace: str,
    spec: Mapping[str, Any],
    config: ServingConfig = DEFAULT_CONFIG,
    *,
    replicas: int | None,
    etcd_secret: str = ETCD_SECRET_NAME,
    meshserve_image: str,
    agent_args: Sequence[str],
    kind: str = "ServingRuntime",
    pvcs: Sequence[str] = (),
) -> dict[str, Any]:
    """The runtime pool's apps/v1 Deployment, `<inferenceServiceName>-<runtime>` in `namespace`.

    `replicas`: from `desired_replicas`; None leaves `spec.replicas` out, for an HPA-managed
    pool, so that applying the Deployment never resets what the HPA chose (upstream's #225).
    `agent_args`: the options that join the agent to the fabric (e.g. etcd from
    `ETCD_CONNECTION_FILE`, the fabric name), the same for `meshserve agent` (the sidecar) and
    `meshserve runtime` (meshserve's own runtime, the agent inside). `kind`: ServingRuntime or
    ClusterServingRuntime, recorded in the `meshserve.io/runtime-kind` label. `pvcs`: claims to
    mount read-only at `/pvc_mounts/<claim>` in every container (those of `storage-config`, and
    with `allowAnyPVC` those Predictors name; sorted so that the pod template is stable).

    The pod: labels `runtimePodLabels`, then `spec.labels`, then ours (ours win: the selector
    must keep matching); annotations Prometheus's (when metrics are on), `runtimePodAnnotations`,
    then `spec.annotations`; `nodeSelector`, `affinity`, `tolerations`, `volumes` from the spec;
    `imagePullSecrets` from the config and the spec; the etcd Secret (`etcd_secret`, key
    `etcd_connection`) at `/etc/meshserve/etcd` and the storage Secret (`storageSecretName`,
    optional, so pods start without it) at `/storage-config`, in our container only. The runtime
    containers get `/models` (and the domain-socket folder for `unix:` endpoints) and a
    drop-ALL securityContext when they bring none. Our container runs non-root, drops ALL
    capabilities, and is probed with grpc.health.v1 on its port.

    Raises `InvalidRuntime` for what `check_runtime` refuses, for endpoints meshserve cannot
    serve (a `unix:` data endpoint: the router calls it over the network), and for a runtime
    name too long for the `name` label. The caller checks `multiModel` and `disabled`.
    """
    if kind not in ("ServingRuntime", "ClusterServingRuntime"):
        raise ValueError(f"kind must be ServingRuntime or ClusterServingRuntime, got {kind!r}")
    check_runtime(spec)
    name = deployment_name(runtime_name, config)
    if len(name) > 63:
        raise InvalidRuntime(f"the Deployment's name label {name!r} is longer than 63 characters; "
                             "shorten the runtime's name")
    selector = {"modelmesh-service": config.inference_service_name, "name": name}
    ours = {
        **selector,
        **MANAGED_BY,
        "app.kubernetes.io/name": "meshserve",
        "app.kubernetes.io/component": "runtime",
        "meshserve.io/runtime": runtime_name,
        "meshserve.io/runtime-kind": kind,
    }
    labels = runtime_labels(spec, runtime_name, rest_enabled=config.rest_proxy.enabled)
    metrics_port = config.metrics.port if config.metrics.enabled else 0

    # https as upstream's default `metrics.scheme` asks, with the certificate of `tls.secretName`;
    # without one there is no certificate to serve, so plain http (and the annotation says so).
    metrics_tls = metrics_port > 0 and config.metrics.scheme == "https" and bool(config.tls.secret_name)
    pod_annotations: dict[str, str] = {}
    if config.metrics.enabled:
        pod_annotations.update({
            "prometheus.io/path": "/metrics",
            "prometheus.io/port": str(config.metrics.port),
            "prometheus.io/scheme": "https" if metrics_tls else "http",
            "prometheus.io/scrape": "true",
        })
    pod_annotations.update(config.runtime_pod_annotations)
    pod_annotations.update(spec.get("annotations") or {})

    socket_dir = _socket_dir(spec)
    user_containers: dict[str, dict[str, Any]] = {}
    for c in spec.get("containers") or ():
        user_containers[str(c["name"])] = copy.deepcopy(dict(c))  # a repeated name: the last one wins
    containers = list(user_containers.values())

    pvcs = sorted(dict.fromkeys(pvcs))
    pvc_mounts = [{"name": p, "mountPath": f"{PVC_ROOT}/{p}", "readOnly": True} for p in pvcs]
    models_mount = {"name": MODELS_VOLUME, "mountPath": MODELS_DIR}
    socket_mounts = [{"name": SOCKET_VOLUME, "mountPath": socket_dir}] if socket_dir else []
    our_mounts = [
        models_mount,
        {"name": ETCD_VOLUME, "mountPath": ETCD_MOUNT, "readOnly": True},
        {"name": STORAGE_VOLUME, "mountPath": STORAGE_MOUNT, "readOnly": True},
        *pvc_mounts,
        *socket_mounts,
        *_tls_mount(config),
    ]

    native = is_native(spec, meshserve_image)
    if native:
        containers = [
            _native_container(c, spec, [*agent_args, *tls_args(config)], labels, metrics_port, our_mounts,
                              config.grpc_max_message_size_bytes, metrics_tls)
            if _repository(str(c.get("image", ""))) == _repository(meshserve_image) else c
            for c in containers
        ]
    else:
        for c in containers:
            c["volumeMounts"] = [models_mount, *pvc_mounts, *(c.get("volumeMounts") or ()), *socket_mounts]
            c.setdefault("securityContext", {"capabilities": {"drop": ["ALL"]}})
        # Last, as upstream puts mm last: the kubelet starts containers in order, so the runtime's
        # (often large) image is pulled before the agent starts waiting for the runtime.
        containers.append(_agent_container(spec, meshserve_image, agent_args, labels, metrics_port, our_mounts,
                                           metrics_tls))

    volumes = [copy.deepcopy(dict(v)) for v in spec.get("volumes") or ()]
    models_dir: dict[str, Any] = {}
    if size := _models_dir_size(user_containers.values()):
        models_dir["sizeLimit"] = size
    volumes.append({"name": MODELS_VOLUME, "emptyDir": models_dir})
    if socket_dir:
        volumes.append({"name": SOCKET_VOLUME, "emptyDir": {}})
    volumes.append({"name": ETCD_VOLUME, "secret": {"secretName": etcd_secret}})
    volumes.append({"name": STORAGE_VOLUME, "secret": {"secretName": config.storage_secret_name, "optional": True}})
    volumes.extend(_tls_volume(config))
    volumes.extend({"name": p, "persistentVolumeClaim": {"claimName": p, "readOnly": True}} for p in pvcs)

    pod_spec: dict[str, Any] = {
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_PERIOD_S,
    }
    if config.service_account_name:
        pod_spec["serviceAccountName"] = config.service_account_name
    for field in ("nodeSelector", "affinity", "tolerations"):
        if spec.get(field):
            pod_spec[field] = copy.deepcopy(spec[field])
    if pull := _union_pull_secrets(config.image_pull_secrets, spec.get("imagePullSecrets") or ()):
        pod_spec["imagePullSecrets"] = pull

    template_metadata: dict[str, Any] = {
        "labels": {**config.runtime_pod_labels, **(spec.get("labels") or {}), **ours},
    }
    if pod_annotations:
        template_metadata["annotations"] = pod_annotations
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "75%", "maxUnavailable": "15%"}},
        "template": {"metadata": template_metadata, "spec": pod_spec},
    }
    if replicas is not None:
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, got {replicas}")
        deployment_spec = {"replicas": replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": ours},
        "spec": deployment_spec,
    }


def _labels_env(prefix: str, labels: Sequence[str]) -> dict[str, str]:
    # Comma-joined, as upstream gives them to mm in MM_LABELS.
    return {"name": f"{prefix}LABELS", "value": ",".join(labels)}


def _agent_container(
    spec: Mapping[str, Any],
    image: str,
    agent_args: Sequence[str],
    labels: Sequence[str],
    metrics_port: int,
    mounts: list[dict[str, Any]],
    metrics_tls: bool = False,
) -> dict[str, Any]:
    """`meshserve agent` beside a runtime that speaks the model-runtime SPI (or a built-in adapter's server);
    `metrics_tls`: its /metrics over https with the mounted `tls.secretName`."""
    adapter = spec.get("builtInAdapter")
    spi = _endpoint(spec, "grpcEndpoint")
    data = _endpoint(spec, "grpcDataEndpoint")
    env: list[dict[str, Any]] = [*map(dict, _POD_ENV)]

    def put(name: str, value: Any) -> None:
        env.append({"name": f"MESHSERVE_AGENT_{name}", "value": str(value)})

    put("PORT", AGENT_PORT)
    put("METRICS_PORT", metrics_port)
    put("INSTANCE_ID", "$(POD_NAME)")
    # The fabric calls the agent's own SPI (it makes room, then forwards to the runtime);
    # routers call the runtime's data endpoint directly.
    put("ADVERTISE_ADDRESS", f"$(POD_IP):{AGENT_PORT}")
    if metrics_tls:
        put("METRICS_TLS_CERT_FILE", METRICS_TLS_FILES[0])
        put("METRICS_TLS_KEY_FILE", METRICS_TLS_FILES[1])
    env.append(_labels_env("MESHSERVE_AGENT_", labels))
    if adapter:
        # Upstream puts modelmesh-runtime-adapter beside the server; it serves the SPI on 8085
        # and drives the server's management API on runtimeManagementPort.
        management_port = adapter.get("runtimeManagementPort")
        if management_port is None:
            raise InvalidRuntime("builtInAdapter.runtimeManagementPort is required")
        put("RUNTIME_ADDRESS", f"127.0.0.1:{NATIVE_RUNTIME_PORT}")
        data = data or _Endpoint(port=int(management_port))
    else:
        if spi is None:
            raise InvalidRuntime("grpcEndpoint is required: it is where the agent calls the runtime's "
                                 "model-runtime SPI")
        put("RUNTIME_ADDRESS", spi.address())
        data = data or spi  # ModelMesh serves on the management endpoint when no data endpoint is given
    if data.port is None:
        raise InvalidRuntime("grpcDataEndpoint must be port:N: meshserve's router calls the runtime's "
                             "data endpoint over the network, not through a unix socket")
    put("RUNTIME_DATA_ADDRESS", f"$(POD_IP):{data.port}")
    if adapter:
        env = _merge_env(env, adapter.get("env") or ())

    ports = [{"name": AGENT_PORT_NAME, "containerPort": AGENT_PORT}]
    if metrics_port:
        ports.append({"name": "prometheus", "containerPort": metrics_port})
    return {
        "name": AGENT_CONTAINER,
        "image": image,
        "command": ["meshserve"],
        "args": ["agent", *agent_args],
        "env": env,
        "ports": ports,
        "resources": copy.deepcopy(AGENT_RESOURCES),
        "volumeMounts": copy.deepcopy(mounts),
        "securityContext": copy.deepcopy(_OUR_SECURITY),
        **_grpc_probes(AGENT_PORT),
    }


def _native_container(
    container: dict[str, Any],
    spec: Mapping[str, Any],
    agent_args: Sequence[str],
    labels: Sequence[str],
    metrics_port: int,
    mounts: list[dict[str, Any]],
    max_message_bytes: int,
    metrics_tls: bool = False,
) -> dict[str, Any]:
    """meshserve's runtime container: `meshserve runtime` with the agent inside, taking
    messages up to `grpcMaxMessageSizeBytes` as the router in front of it does; `metrics_tls`:
    its /metrics over https with the mounted `tls.secretName`."""
    if spec.get("builtInAdapter"):
        raise InvalidRuntime("builtInAdapter does not apply to meshserve's own runtime")
    spi = _endpoint(spec, "grpcEndpoint")
    data = _endpoint(spec, "grpcDataEndpoint")
    for endpoint in (spi, data):
        if endpoint is not None and endpoint.port is None:
            raise InvalidRuntime("meshserve's runtime listens on a TCP port: its grpcEndpoint and "
                                 "grpcDataEndpoint must be port:N")
    port = (spi or data or _Endpoint(port=NATIVE_RUNTIME_PORT)).port
    if spi and data and spi.port != data.port:
        raise InvalidRuntime("meshserve's runtime serves the model-runtime SPI and V2 inference on one "
                             f"port: grpcEndpoint ({spi.port}) and grpcDataEndpoint ({data.port}) must match")
    assert port is not None
    args = [
        "runtime", *agent_args,
        "--port", str(port),
        "--metrics-port", str(metrics_port),
        "--models-dir", MODELS_DIR,
        "--storage-config-dir", STORAGE_MOUNT,
        "--instance-id", "$(POD_NAME)",
        "--advertise-address", f"$(POD_IP):{port}",
        "--max-message-bytes", str(max_message_bytes),
        *(["--metrics-tls-cert-file", METRICS_TLS_FILES[0], "--metrics-tls-key-file", METRICS_TLS_FILES[1]]
          if metrics_tls else []),
        *(str(a) for a in container.get("args") or ()),  # the runtime's own flags, last so they win
    ]
    ports = [{"name": "grpc", "containerPort": port}]
    if metrics_port:
        ports.append({"name": "prometheus", "containerPort": metrics_port})
    env = _merge_env(list(_POD_ENV), container.get("env") or ())
    env = _merge_env(env, [_labels_env("MESHSERVE_RUNTIME_", labels)])
    result = {
        **container,
        "command": ["meshserve"],
        "args": args,
        "env": env,
        "ports": _add_ports(container.get("ports") or (), ports),
        "volumeMounts": [*copy.deepcopy(mounts), *(container.get("volumeMounts") or ())],
        "securityContext": {**(container.get("securityContext") or {}), **copy.deepcopy(_OUR_SECURITY)},
        **_grpc_probes(port, tls="--tls-cert-file" in args),
    }
    return result


# -- the Service ---------------------------------------------------------------------------


CONTROLLER_PORT = 8034
CONTROLLER_METRICS_PORT = 2113


def router_deployment(namespace: str, config: ServingConfig = DEFAULT_CONFIG, *, meshserve_image: str,
                      fabric_args: Sequence[str], replicas: int = 1,
                      etcd_secret: str = ETCD_SECRET_NAME) -> dict[str, Any]:
    """meshserve's router for one namespace's fabric: what the `modelmesh-serving` Service selects.

    In cluster scope each served namespace is its own fabric and needs its own router; the
    chart installs the operator's own namespace's. Ports are named as the Service targets
    them (grpc, http, prometheus); the gRPC message limit is `grpcMaxMessageSizeBytes`.
    """
    args = ["--port", str(config.inference_service_port),
            "--rest-port", str(config.rest_proxy.port if config.rest_proxy.enabled else 0),
            "--metrics-port", str(config.metrics.port if config.metrics.enabled else 0),
            "--max-message-bytes", str(config.grpc_max_message_size_bytes)]
    ports = [{"name": "grpc", "containerPort": config.inference_service_port}]
    if config.rest_proxy.enabled:
        ports.append({"name": "http", "containerPort": config.rest_proxy.port})
    if config.metrics.enabled:
        ports.append({"name": "prometheus", "containerPort": config.metrics.port})
    args += tls_args(config, config.tls.client_auth or "none")  # the external interface: tls.clientAuth
    return _fabric_process("router", namespace, config, ROUTER_POD_LABELS, [*fabric_args, *args], ports,
                           meshserve_image=meshserve_image, replicas=replicas, etcd_secret=etcd_secret)


def controller_deployment(namespace: str, config: ServingConfig = DEFAULT_CONFIG, *, meshserve_image: str,
                          fabric_args: Sequence[str], replicas: int = 2,
                          etcd_secret: str = ETCD_SECRET_NAME) -> dict[str, Any]:
    """meshserve's controller for one namespace's fabric (leader-elected: 2 replicas, one acts).

    In cluster scope each served namespace's fabric needs its own (vmodel transitions,
    re-homing, scaling); the chart installs the operator's own namespace's.
    """
    args = ["--port", str(CONTROLLER_PORT),
            "--metrics-port", str(CONTROLLER_METRICS_PORT if config.metrics.enabled else 0)]
    ports = [{"name": "grpc", "containerPort": CONTROLLER_PORT}]
    if config.metrics.enabled:
        ports.append({"name": "prometheus", "containerPort": CONTROLLER_METRICS_PORT})
    labels = {"app.kubernetes.io/name": "meshserve", "app.kubernetes.io/component": "controller"}
    args += tls_args(config)
    return _fabric_process("controller", namespace, config, labels, [*fabric_args, *args], ports,
                           meshserve_image=meshserve_image, replicas=replicas, etcd_secret=etcd_secret)


def _fabric_process(component: str, namespace: str, config: ServingConfig, pod_labels: Mapping[str, str],
                    args: Sequence[str], ports: list[dict[str, Any]], *, meshserve_image: str, replicas: int,
                    etcd_secret: str) -> dict[str, Any]:
    """A Deployment of one meshserve process of a namespace's fabric, reading etcd from the secret."""
    labels = {**pod_labels, **MANAGED_BY}
    container = {
        "name": component, "image": meshserve_image, "command": ["meshserve"],
        "args": [component, *args, "--etcd-connection-file", ETCD_CONNECTION_FILE], "ports": ports,
        "volumeMounts": [{"name": ETCD_VOLUME, "mountPath": ETCD_MOUNT, "readOnly": True}, *_tls_mount(config)],
        "securityContext": {**copy.deepcopy(_OUR_SECURITY), "readOnlyRootFilesystem": True},
        **_grpc_probes(ports[0]["containerPort"], tls=bool(config.tls.secret_name)),
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    }
    container.pop("startupProbe")  # these start in seconds; liveness waits its initial delay
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{config.inference_service_name}-{component}", "namespace": namespace,
                     "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [container],
                         "volumes": [{"name": ETCD_VOLUME, "secret": {"secretName": etcd_secret}},
                                     *_tls_volume(config)],
                         "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}},
            },
        },
    }


def service(namespace: str, config: ServingConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The `<inferenceServiceName>` Service of a served namespace, in front of the router.

    Ports as upstream (`pkg/mmesh/modelmesh_service.go`): grpc `inferenceServicePort` (8033),
    http `restProxy.port` (8008) while REST is on, prometheus `metrics.port` (2112) while
    metrics are on, each to the container port of that name; `clusterIP: None` when
    `headlessService`. Labelled `modelmesh-service: <name>` as upstream (it finds its Services by
    that label); selects `ROUTER_POD_LABELS`, the router's pods in this namespace.
    """
    name = config.inference_service_name
    ports = [{"name": "grpc", "port": config.inference_service_port, "targetPort": "grpc", "protocol": "TCP"}]
    if config.rest_proxy.enabled:
        ports.append({"name": "http", "port": config.rest_proxy.port, "targetPort": "http", "protocol": "TCP"})
    if config.metrics.enabled:
        ports.append({"name": "prometheus", "port": config.metrics.port, "targetPort": "prometheus",
                      "protocol": "TCP"})
    spec: dict[str, Any] = {"selector": dict(ROUTER_POD_LABELS), "ports": ports}
    if config.headless_service:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"modelmesh-service": name, **MANAGED_BY, "app.kubernetes.io/name": "meshserve"},
        },
        "spec": spec,
    }


# -- the HPA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Autoscaling:
    metric: str
    target: int
    min_replicas: int
    max_replicas: int


def _int_annotation(value: str) -> int | None:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        return None


def _autoscaler(annotations: Mapping[str, str], replicas: Any = None) -> _Autoscaling | None:
    """Upstream's webhook checks (apis/serving/v1alpha1/servingruntime_webhook.go), then the HPA's values."""
    target = DEFAULT_TARGET_UTILIZATION
    if TARGET_UTILIZATION in annotations:
        parsed = _int_annotation(annotations[TARGET_UTILIZATION])
        if parsed is None or not 1 <= parsed <= 100:
            raise InvalidRuntime("The target utilization percentage should be a [1-100] integer.")
        target = parsed
    if AUTOSCALER_CLASS not in annotations:
        return None
    cls = annotations[AUTOSCALER_CLASS]
    if cls == "external":
        raise InvalidRuntime(f"unknown autoscaler class [{cls}]")
    if cls != "hpa":
        raise InvalidRuntime(f"[{cls}] is not a supported autoscaler class type.")
    if replicas is not None:
        raise InvalidRuntime("Autoscaler is enabled and also replicas variable set. You can not set both.")
    metric = annotations.get(AUTOSCALER_METRICS, "cpu")
    if metric not in ("cpu", "memory"):
        raise InvalidRuntime(f"[{metric}] is not a supported metric.")
    low = DEFAULT_MIN_REPLICAS
    if MIN_SCALE in annotations:
        parsed = _int_annotation(annotations[MIN_SCALE])
        if parsed is None:
            raise InvalidRuntime("The min replicas should be a integer.")
        if parsed < 1:
            raise InvalidRuntime("The min replicas should be more than 0")
        low = parsed
    # Upstream's webhook takes max-scale as 1 when absent (refusing min-scale 2 alone) while its
    # HPA raises max to min; meshserve does the latter: min-scale alone pins the pool at min.
    high = low
    if MAX_SCALE in annotations:
        parsed = _int_annotation(annotations[MAX_SCALE])
        if parsed is None:
            raise InvalidRuntime("The max replicas should be a integer.")
        if parsed < low:
            raise InvalidRuntime("The max replicas should be same or bigger than min replicas.")
        high = parsed
    return _Autoscaling(metric, target, low, high)


def hpa(
    runtime_name: str,
    namespace: str,
    annotations: Mapping[str, str] | None,
    config: ServingConfig = DEFAULT_CONFIG,
) -> dict[str, Any] | None:
    """The runtime's autoscaling/v2 HorizontalPodAutoscaler, or None without `autoscalerClass: hpa`.

    From the ServingRuntime's `metadata.annotations`: `serving.kserve.io/metrics` cpu|memory
    (cpu), `serving.kserve.io/targetUtilizationPercentage` 1-100 (80), `serving.kserve.io/min-scale`
    1 or more (1), `serving.kserve.io/max-scale` at least min (min). It targets the runtime's
    Deployment and has its name. Raises `InvalidRuntime` for a bad value, in upstream's words.
    While the pool is scaled to zero the operator deletes the HPA (an HPA does not scale a
    Deployment up from zero) and sets the Deployment's replicas itself (`desired_replicas`).
    """
    scaling = _autoscaler(annotations or {})
    if scaling is None:
        return None
    name = deployment_name(runtime_name, config)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                # Upstream's labels on its HPA (kserve constants InferenceServicePodLabelKey, component).
                "serving.kserve.io/inferenceservice": runtime_name,
                "component": "predictor",
                **MANAGED_BY,
                "meshserve.io/runtime": runtime_name,
            },
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": scaling.metric,
                    "target": {"type": "Utilization", "averageUtilization": scaling.target},
                },
            }],
        },
    }


# -- replicas ------------------------------------------------------------------------------


def desired_replicas(
    spec: Mapping[str, Any],
    config: ServingConfig = DEFAULT_CONFIG,
    *,
    needed: bool,
    unused_since_s: float | None,
    annotations: Mapping[str, str] | None = None,
) -> int:
    """How many pods the runtime's Deployment should have now (upstream `determineReplicasAndRequeueDuration`).

    Scaled up: `spec.replicas`, else `podsPerRuntime`; with an HPA (`annotations`), its
    `min-scale` (what upstream writes when the Deployment is at zero; once up, the caller leaves
    `replicas` to the HPA). With `scaleToZero` on and no Predictor needing the runtime
    (`needed` False): zero once `unused_since_s` (seconds since the last one went) reaches
    `gracePeriodSeconds`, and at once when `unused_since_s` is None, i.e. no Predictor has
    needed it since the operator started. The caller requeues the runtime for the rest of
    the grace period (`gracePeriodSeconds - unused_since_s`).
    """
    scaling = _autoscaler(annotations or {}, spec.get("replicas"))
    if scaling is not None:
        up = scaling.min_replicas
    elif spec.get("replicas") is not None:
        up = int(spec["replicas"])
    else:
        up = config.pods_per_runtime
    if needed or not config.scale_to_zero.enabled:
        return up
    if unused_since_s is None or unused_since_s >= config.scale_to_zero.grace_period_seconds:
        return 0
    return up


# -- RBAC ----------------------------------------------------------------------------------

_READ = ["get", "list", "watch"]
_OWN = ["get", "list", "watch", "create", "patch", "delete"]

#: Every Kubernetes API call the operator makes, as rbac.authorization.k8s.io/v1 PolicyRules
#: (apiGroups, resources, verbs), so the chart's ClusterRole (cluster scope) or Role (namespace
#: scope: leave out namespaces and the cluster-scoped kinds) is derived from this one list.
#: Resources it does not touch are not here: it creates no ConfigMaps, and Secrets only in
#: cluster scope (`CLUSTER_SCOPE_ONLY_RBAC`, which a namespace-scoped Role leaves out).
CLUSTER_SCOPE_ONLY_RBAC: list[dict[str, list[str]]] = [
    # The model-serving-etcd Secret of each served namespace (mesh/operator/etcd_secret.py).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
]
OPERATOR_RBAC: list[dict[str, list[str]]] = [
    # The resources it handles: kopf lists and watches them, and patches them for its progress
    # annotations and its finalizer (metadata.finalizers, through the main resource).
    {"apiGroups": ["serving.kserve.io"],
     "resources": ["predictors", "inferenceservices", "servingruntimes", "clusterservingruntimes"],
     "verbs": ["get", "list", "watch", "patch"]},
    # The status it writes back (Predictor, InferenceService; the runtimes' where their CRD has one).
    {"apiGroups": ["serving.kserve.io"],
     "resources": ["predictors/status", "inferenceservices/status", "servingruntimes/status",
                   "clusterservingruntimes/status"],
     "verbs": ["get", "patch"]},
    # Owner references with blockOwnerDeletion (kopf.adopt) from a pool's Deployment and HPA to
    # its runtime need update on the owner's finalizers subresource (OwnerReferencesPermissionEnforcement).
    {"apiGroups": ["serving.kserve.io"],
     "resources": ["servingruntimes/finalizers", "clusterservingruntimes/finalizers"],
     "verbs": ["update"]},
    # The runtime pools, the modelmesh-serving Service, the HPAs: built here, applied by patch.
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": list(_OWN)},
    {"apiGroups": [""], "resources": ["services"], "verbs": list(_OWN)},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": list(_OWN)},
    # model-serving-config (watched: changes apply without a restart), the etcd and storage
    # Secrets (read: the storage-config's pvc entries become mounts), PVCs (allowAnyPVC: a
    # Predictor's claim is mounted only if it exists).
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": list(_READ)},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
    # kopf posts its handlers' progress and errors as core v1 Events.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # Cluster scope: which namespaces are modelmesh-enabled (and kopf's namespace observer).
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": list(_READ)},
    # kopf's resource observer notices CRDs appearing (the InferenceService CRD comes with KServe).
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    # kopf's peering, so that two operator replicas never handle the same resource: kopf uses its
    # own KopfPeering / ClusterKopfPeering CRDs (kopf.dev), not coordination.k8s.io Leases. Not
    # needed when the operator runs `--standalone`.
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings", "clusterkopfpeerings"],
     "verbs": ["get", "list", "watch", "patch"]},
    *CLUSTER_SCOPE_ONLY_RBAC,
]
