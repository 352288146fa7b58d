"""Tests of mesh.operator.runtime_pool: ServingRuntimes into Deployments, the Service, HPAs.

Every object built is validated against the Kubernetes schemas of the newest version
kubernetes-validate ships (strict: an unknown field fails), for every ServingRuntime sample
in shared/data/kserve-samples/ (from kserve/modelmesh-serving) and for the cases built here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from mesh.operator import runtime_pool as rp
from mesh.operator.config import DEFAULT_CONFIG, parse_config
from mesh.operator.runtime_pool import InvalidRuntime
from tests.support.shared_data import shared_dir

K8S_VERSION = latest_version()
IMAGE = "ghcr.io/meshserve/meshserve:0.1.0"
AGENT_ARGS = ["--etcd-connection-file", rp.ETCD_CONNECTION_FILE, "--fabric", "team-a"]
SAMPLES_DIR = shared_dir() / "data" / "kserve-samples"


def _samples() -> list[tuple[str, dict[str, Any]]]:
    if not SAMPLES_DIR.is_dir():
        return []
    found = []
    for path in sorted(SAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("ServingRuntime", "ClusterServingRuntime"):
                found.append((path.name, doc))
    return found


SAMPLES = _samples()
needs_samples = pytest.mark.skipif(not SAMPLES, reason=f"no ServingRuntime samples in {SAMPLES_DIR}")


def _sample(file: str) -> dict[str, Any]:
    if not SAMPLES:
        pytest.skip(f"no ServingRuntime samples in {SAMPLES_DIR}")
    return copy.deepcopy(next(doc for name, doc in SAMPLES if name == file))


def _valid(obj: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


def _build(spec: dict[str, Any], name: str = "rt", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("replicas", 2)
    kwargs.setdefault("meshserve_image", IMAGE)
    kwargs.setdefault("agent_args", AGENT_ARGS)
    config = kwargs.pop("config", DEFAULT_CONFIG)
    return _valid(rp.deployment(name, "team-a", spec, config, **kwargs))


def _containers(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", ())}


def _volumes(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", ())}


def _custom_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "multiModel": True,
        "grpcEndpoint": "port:8001",
        "grpcDataEndpoint": "port:8001",
        "supportedModelFormats": [{"name": "ml-type1", "version": "1", "autoSelect": True}],
        "containers": [{"name": "modelserver", "image": "example/custom:1",
                        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}],
    }
    spec.update(extra)
    return spec


def _native_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "multiModel": True,
        "grpcEndpoint": "port:8085",
        "grpcDataEndpoint": "port:8085",
        "protocolVersions": ["grpc-v2"],
        "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": True},
                                  {"name": "pytorch", "autoSelect": True}],
        "containers": [{"name": "meshserve", "image": "ghcr.io/meshserve/meshserve:0.0.9",
                        "args": ["--max-concurrency", "4"],
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                      "limits": {"cpu": "4", "memory": "2Gi"}}}],
    }
    spec.update(extra)
    return spec


# -- every sample --------------------------------------------------------------------------


@needs_samples
@pytest.mark.parametrize(("file", "doc"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_every_sample_becomes_a_valid_pool(file: str, doc: dict[str, Any]) -> None:
    name, spec = doc["metadata"]["name"], doc["spec"]
    rp.check_runtime(spec, doc["metadata"].get("annotations"))
    d = _build(spec, name, kind=doc["kind"])

    assert d["metadata"]["name"] == f"modelmesh-serving-{name}"
    assert d["metadata"]["namespace"] == "team-a"
    selector = {"modelmesh-service": "modelmesh-serving", "name": f"modelmesh-serving-{name}"}
    assert d["spec"]["selector"]["matchLabels"] == selector
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert selector.items() <= d["metadata"]["labels"].items()
    assert d["metadata"]["labels"]["meshserve.io/runtime-kind"] == doc["kind"]
    assert d["spec"]["replicas"] == 2

    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [c["name"] for c in spec["containers"]] + [rp.AGENT_CONTAINER]
    for container, given in zip(containers, spec["containers"]):
        assert container["image"] == given["image"]
        assert container["resources"] == given["resources"]
        assert _mounts(container)["models-dir"] == "/models"
    agent = containers[-1]
    assert agent["image"] == IMAGE
    assert agent["command"] == ["meshserve"] and agent["args"] == ["agent", *AGENT_ARGS]
    assert agent["readinessProbe"]["grpc"] == {"port": rp.AGENT_PORT}
    assert agent["livenessProbe"]["grpc"] == {"port": rp.AGENT_PORT}
    startup = agent["startupProbe"]  # outlasts the agent's 300 s wait for its runtime
    assert startup["grpc"] == {"port": rp.AGENT_PORT} and startup["periodSeconds"] * startup["failureThreshold"] > 300
    assert agent["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert _mounts(agent) == {"models-dir": "/models", "etcd-config": "/etc/meshserve/etcd",
                              "storage-config": "/storage-config"}
    env = _env(agent)
    assert env["MESHSERVE_AGENT_LABELS"] == ",".join(rp.runtime_labels(spec, name))
    assert env["MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS"] == "$(POD_IP):8001"

    volumes = _volumes(d)
    assert volumes["etcd-config"]["secret"] == {"secretName": "model-serving-etcd"}
    assert volumes["storage-config"]["secret"] == {"secretName": "storage-config", "optional": True}
    assert volumes["models-dir"]["emptyDir"] == {"sizeLimit": str(int(1.5 * 2**30))}  # 1Gi limit each

    _valid(rp.service("team-a"))
    assert rp.hpa(name, "team-a", doc["metadata"].get("annotations")) is None
    hpa = _valid(rp.hpa(name, "team-a", {rp.AUTOSCALER_CLASS: "hpa"}))
    assert hpa["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]


@needs_samples
@pytest.mark.parametrize(("file", "doc"), SAMPLES, ids=[name for name, _ in SAMPLES])
def test_every_sample_builds_without_replicas_and_at_zero(file: str, doc: dict[str, Any]) -> None:
    assert "replicas" not in _build(doc["spec"], doc["metadata"]["name"], replicas=None)["spec"]
    assert _build(doc["spec"], doc["metadata"]["name"], replicas=0)["spec"]["replicas"] == 0


def test_the_agent_calls_the_spi_endpoint_and_advertises_the_data_endpoint() -> None:
    env = _env(_containers(_build(_sample("servingruntime_custom.yaml")["spec"]))[rp.AGENT_CONTAINER])
    assert env["MESHSERVE_AGENT_RUNTIME_ADDRESS"] == "127.0.0.1:8001"
    assert env["MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS"] == "$(POD_IP):8001"
    # The fabric's loads go through the agent's own SPI (it makes room first).
    assert env["MESHSERVE_AGENT_ADVERTISE_ADDRESS"] == f"$(POD_IP):{rp.AGENT_PORT}"
    assert env["MESHSERVE_AGENT_INSTANCE_ID"] == "$(POD_NAME)"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MESHSERVE_AGENT_PORT"] == str(rp.AGENT_PORT)
    assert env["MESHSERVE_AGENT_METRICS_PORT"] == "2112"


def test_every_agent_setting_the_builder_writes_is_one_meshserve_agent_reads() -> None:
    from mesh.cli.agent import AgentSettings

    for sample in ("servingruntime_custom.yaml", "servingruntime_pullerless.yaml", "triton-2.x.yaml"):
        doc = _sample(sample)
        env = _env(_containers(_build(doc["spec"], doc["metadata"]["name"]))[rp.AGENT_CONTAINER])
        names = {k.removeprefix("MESHSERVE_AGENT_").lower() for k in env if k.startswith("MESHSERVE_AGENT_")}
        assert names <= set(AgentSettings.model_fields), names - set(AgentSettings.model_fields)


def test_a_built_in_adapter_makes_the_agent_drive_the_servers_management_port() -> None:
    doc = _sample("triton-2.x.yaml")
    doc["spec"]["builtInAdapter"]["env"] = [{"name": "MESHSERVE_AGENT_HEALTH_FAILURES", "value": "5"},
                                            {"name": "EXTRA", "value": "1"}]
    env = _env(_containers(_build(doc["spec"], "triton-2.x"))[rp.AGENT_CONTAINER])
    # The adapter (upstream's modelmesh-runtime-adapter) serves the SPI on 8085 in the pod.
    assert env["MESHSERVE_AGENT_RUNTIME_ADDRESS"] == f"127.0.0.1:{rp.NATIVE_RUNTIME_PORT}"
    assert env["MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS"] == "$(POD_IP):8001"
    # builtInAdapter.env goes to the agent, over what it would otherwise get (as upstream's adapter).
    assert env["MESHSERVE_AGENT_HEALTH_FAILURES"] == "5" and env["EXTRA"] == "1"


def test_a_built_in_adapter_without_data_endpoint_serves_on_its_management_port() -> None:
    doc = _sample("triton-2.x.yaml")
    del doc["spec"]["grpcDataEndpoint"]
    doc["spec"]["builtInAdapter"]["runtimeManagementPort"] = 8005
    env = _env(_containers(_build(doc["spec"], "triton-2.x"))[rp.AGENT_CONTAINER])
    assert env["MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS"] == "$(POD_IP):8005"


# -- labels --------------------------------------------------------------------------------


def test_runtime_labels_follow_upstream() -> None:
    labels = rp.runtime_labels(_sample("triton-2.x.yaml")["spec"], "triton-2.x")
    assert labels == (
        "mt:keras", "mt:keras:2", "mt:onnx", "mt:onnx:1", "mt:pytorch", "mt:pytorch:1",
        "mt:tensorflow", "mt:tensorflow:1", "mt:tensorflow:2", "mt:tensorrt", "mt:tensorrt:7",
        "pv:grpc-v2", "pv:v2", "rt:triton-2.x",
    )
    # autoSelect: false formats (sklearn, xgboost, lightgbm) advertise nothing.
    assert not any(label.startswith(("mt:sklearn", "mt:xgboost", "mt:lightgbm")) for label in labels)


def test_runtime_labels_without_protocols_versions_or_autoselect() -> None:
    spec = {"supportedModelFormats": [{"name": "a", "autoSelect": True}, {"name": "b", "version": "2"},
                                      {"name": "c", "version": "3", "autoSelect": False}]}
    assert rp.runtime_labels(spec, "x") == ("mt:a", "rt:x")
    assert rp.runtime_labels({}, "x") == ("rt:x",)


def test_pv_v2_only_for_grpc_v2_while_rest_is_on() -> None:
    spec = {"protocolVersions": ["grpc-v2", "grpc-v1"]}
    assert rp.runtime_labels(spec, "x") == ("pv:grpc-v1", "pv:grpc-v2", "pv:v2", "rt:x")
    assert rp.runtime_labels(spec, "x", rest_enabled=False) == ("pv:grpc-v1", "pv:grpc-v2", "rt:x")
    assert rp.runtime_labels({"protocolVersions": ["v1"]}, "x") == ("pv:v1", "rt:x")


def test_rest_off_in_the_config_drops_pv_v2_from_the_agents_labels() -> None:
    config, _ = parse_config("restProxy:\n  enabled: false\n")
    spec = _custom_spec(protocolVersions=["grpc-v2"])
    env = _env(_containers(_build(spec, config=config))[rp.AGENT_CONTAINER])
    assert env["MESHSERVE_AGENT_LABELS"] == "mt:ml-type1,mt:ml-type1:1,pv:grpc-v2,rt:rt"


# -- the pod -------------------------------------------------------------------------------


def test_pod_labels_and_annotations_merge_with_ours_winning_on_the_selector() -> None:
    config, _ = parse_config(
        "runtimePodLabels:\n  team: ml\n  tier: config\n  name: hijack\n"
        "runtimePodAnnotations:\n  a: config\n  b: config\n  prometheus.io/path: /other\n")
    spec = _custom_spec(labels={"tier": "spec", "modelmesh-service": "other"}, annotations={"b": "spec"})
    d = _build(spec, config=config)
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml" and labels["tier"] == "spec"
    assert labels["name"] == "modelmesh-serving-rt" and labels["modelmesh-service"] == "modelmesh-serving"
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["a"] == "config" and annotations["b"] == "spec"
    assert annotations["prometheus.io/path"] == "/other"
    assert annotations["prometheus.io/port"] == "2112" and annotations["prometheus.io/scrape"] == "true"
    # The pool's own labels (and so its selector) take nothing from the pod labels.
    assert "team" not in d["metadata"]["labels"]


def test_metrics_off_means_no_scrape_annotations_and_no_metrics_port() -> None:
    config, _ = parse_config("metrics:\n  enabled: false\n")
    d = _build(_custom_spec(), config=config)
    assert "annotations" not in d["spec"]["template"]["metadata"]
    agent = _containers(d)[rp.AGENT_CONTAINER]
    assert [p["name"] for p in agent["ports"]] == [rp.AGENT_PORT_NAME]
    assert _env(agent)["MESHSERVE_AGENT_METRICS_PORT"] == "0"


def test_pass_through_pod_fields_and_merged_pull_secrets() -> None:
    config, _ = parse_config("imagePullSecrets:\n  - name: shared\n  - name: team\nserviceAccountName: rt-sa\n"
                             "storageSecretName: my-storage\n")
    spec = _custom_spec(
        nodeSelector={"gpu": "yes"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        imagePullSecrets=[{"name": "team"}, {"name": "own"}],
        volumes=[{"name": "cache", "emptyDir": {}}],
    )
    spec["containers"][0]["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
    d = _build(spec, config=config, etcd_secret="other-etcd")
    pod = d["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == spec["nodeSelector"]
    assert pod["tolerations"] == spec["tolerations"]
    assert pod["affinity"] == spec["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "shared"}, {"name": "team"}, {"name": "own"}]
    assert pod["serviceAccountName"] == "rt-sa"
    volumes = _volumes(d)
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    assert volumes["etcd-config"]["secret"]["secretName"] == "other-etcd"
    assert volumes["storage-config"]["secret"]["secretName"] == "my-storage"
    assert _mounts(_containers(d)["modelserver"]) == {"models-dir": "/models", "cache": "/cache"}
    assert pod["terminationGracePeriodSeconds"] == 90
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "75%", "maxUnavailable": "15%"}


def test_the_spec_is_not_modified() -> None:
    spec = _custom_spec()
    before = copy.deepcopy(spec)
    _build(spec)
    assert spec == before


def test_runtime_containers_keep_their_security_context_or_drop_all() -> None:
    spec = _custom_spec()
    spec["containers"].append({"name": "helper", "image": "example/helper:1",
                               "securityContext": {"runAsUser": 1000}})
    containers = _containers(_build(spec))
    assert containers["modelserver"]["securityContext"] == {"capabilities": {"drop": ["ALL"]}}
    assert containers["helper"]["securityContext"] == {"runAsUser": 1000}


def test_a_repeated_container_name_keeps_the_last_one() -> None:
    spec = _custom_spec()
    spec["containers"].append({"name": "modelserver", "image": "example/custom:2"})
    containers = _build(spec)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["modelserver", rp.AGENT_CONTAINER]
    assert containers[0]["image"] == "example/custom:2"


@pytest.mark.parametrize(("limits", "size"), [
    ([{"memory": "1Gi"}], str(int(1.5 * 2**30))),
    ([{"memory": "512Mi"}, {"memory": "512Mi"}], str(int(1.5 * 2**30))),
    ([{"memory": "1G"}], "1500000000"),
    ([{"memory": "1.5Gi"}], str(int(2.25 * 2**30))),
    ([{"memory": "1e3"}], "1500"),
    ([{"memory": 1000}], "1500"),
    ([{"cpu": "1"}], None),
    ([{}], None),
])
def test_the_models_dir_is_sized_from_the_memory_limits(limits: list[dict[str, Any]], size: str | None) -> None:
    spec = _custom_spec(containers=[{"name": f"c{i}", "image": "x:1", "resources": {"limits": lim}}
                                    for i, lim in enumerate(limits)])
    empty_dir = _volumes(_build(spec))["models-dir"]["emptyDir"]
    assert empty_dir == ({"sizeLimit": size} if size else {})


def test_a_memory_limit_that_is_not_a_quantity_is_refused() -> None:
    spec = _custom_spec(containers=[{"name": "c", "image": "x:1", "resources": {"limits": {"memory": "lots"}}}])
    with pytest.raises(InvalidRuntime, match="container c resources.limits.memory: 'lots' is not a Kubernetes quantity"):
        rp.deployment("rt", "ns", spec, replicas=1, meshserve_image=IMAGE, agent_args=AGENT_ARGS)


def test_unix_endpoints_share_a_socket_folder_and_the_data_endpoint_must_be_tcp() -> None:
    spec = _custom_spec(grpcEndpoint="unix:///var/run/rt/spi.sock", grpcDataEndpoint="port:8001")
    d = _build(spec)
    containers = _containers(d)
    assert _mounts(containers["modelserver"])["domain-socket"] == "/var/run/rt"
    assert _mounts(containers[rp.AGENT_CONTAINER])["domain-socket"] == "/var/run/rt"
    assert _volumes(d)["domain-socket"] == {"name": "domain-socket", "emptyDir": {}}
    assert _env(containers[rp.AGENT_CONTAINER])["MESHSERVE_AGENT_RUNTIME_ADDRESS"] == "unix:/var/run/rt/spi.sock"

    with pytest.raises(InvalidRuntime, match="grpcDataEndpoint must be port:N"):
        rp.deployment("rt", "ns", _custom_spec(grpcDataEndpoint="unix:/var/run/rt/data.sock"), replicas=1,
                      meshserve_image=IMAGE, agent_args=AGENT_ARGS)


def test_without_a_data_endpoint_the_spi_endpoint_serves_inference() -> None:
    spec = _custom_spec()
    del spec["grpcDataEndpoint"]
    env = _env(_containers(_build(spec))[rp.AGENT_CONTAINER])
    assert env["MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS"] == "$(POD_IP):8001"


@pytest.mark.parametrize(("change", "message"), [
    ({"grpcEndpoint": None}, "grpcEndpoint is required"),
    ({"grpcEndpoint": "8001"}, "Invalid Endpoint: 8001"),
    ({"grpcEndpoint": "port:99999"}, "the port must be from 1 to 65535"),
    ({"grpcEndpoint": "unix:relative.sock"}, "absolute path"),
    ({"grpcEndpoint": "unix:/a/spi.sock", "grpcDataEndpoint": "unix:/b/data.sock"},
     "Only one unix domain socket path is allowed"),
])
def test_endpoints_meshserve_cannot_serve_are_refused(change: dict[str, Any], message: str) -> None:
    spec = _custom_spec(**change)
    if spec["grpcEndpoint"] is None:
        del spec["grpcEndpoint"]
    with pytest.raises(InvalidRuntime, match=message):
        rp.deployment("rt", "ns", spec, replicas=1, meshserve_image=IMAGE, agent_args=AGENT_ARGS)


def test_pvcs_are_mounted_read_only_in_every_container_once_each_in_order() -> None:
    d = _build(_custom_spec(), pvcs=["claim-b", "claim-a", "claim-b"])
    volumes = _volumes(d)
    assert volumes["claim-a"]["persistentVolumeClaim"] == {"claimName": "claim-a", "readOnly": True}
    names = [v["name"] for v in d["spec"]["template"]["spec"]["volumes"]]
    assert names.index("claim-a") < names.index("claim-b") and names.count("claim-b") == 1
    for container in _containers(d).values():
        claims = [m for m in container["volumeMounts"] if m["name"].startswith("claim-")]
        assert claims == [{"name": "claim-a", "mountPath": "/pvc_mounts/claim-a", "readOnly": True},
                          {"name": "claim-b", "mountPath": "/pvc_mounts/claim-b", "readOnly": True}]


def test_the_service_name_in_the_config_names_the_pool() -> None:
    config, _ = parse_config("inferenceServiceName: my-serving\n")
    d = _build(_custom_spec(), config=config)
    assert d["metadata"]["name"] == "my-serving-rt"
    assert d["spec"]["selector"]["matchLabels"] == {"modelmesh-service": "my-serving", "name": "my-serving-rt"}
    assert rp.deployment_name("rt", config) == "my-serving-rt"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        rp.deployment("rt", "ns", _custom_spec(), replicas=1, meshserve_image=IMAGE, agent_args=[], kind="Pod")
    with pytest.raises(ValueError, match="replicas must be 0 or more"):
        rp.deployment("rt", "ns", _custom_spec(), replicas=-1, meshserve_image=IMAGE, agent_args=[])
    with pytest.raises(InvalidRuntime, match="longer than 63 characters"):
        rp.deployment("r" * 60, "ns", _custom_spec(), replicas=1, meshserve_image=IMAGE, agent_args=[])


# -- meshserve's own runtime ---------------------------------------------------------------


def test_meshserves_own_runtime_is_one_container_with_the_agent_inside() -> None:
    spec = _native_spec()
    assert rp.is_native(spec, IMAGE)
    d = _build(spec, "meshserve-1.x")
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["meshserve"]
    runtime = containers[0]
    assert runtime["image"] == "ghcr.io/meshserve/meshserve:0.0.9"  # the spec's own tag is kept
    assert runtime["command"] == ["meshserve"]
    assert runtime["args"] == [
        "runtime", *AGENT_ARGS,
        "--port", "8085", "--metrics-port", "2112", "--models-dir", "/models",
        "--storage-config-dir", "/storage-config", "--instance-id", "$(POD_NAME)",
        "--advertise-address", "$(POD_IP):8085", "--max-message-bytes", str(16 * 2**20),
        "--max-concurrency", "4",
    ]
    assert runtime["ports"] == [{"name": "grpc", "containerPort": 8085},
                                {"name": "prometheus", "containerPort": 2112}]
    assert runtime["readinessProbe"]["grpc"] == {"port": 8085}
    assert runtime["livenessProbe"]["grpc"] == {"port": 8085}
    assert runtime["securityContext"]["runAsNonRoot"] is True
    assert runtime["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert runtime["resources"] == spec["containers"][0]["resources"]
    assert _mounts(runtime) == {"models-dir": "/models", "etcd-config": "/etc/meshserve/etcd",
                                "storage-config": "/storage-config"}
    env = _env(runtime)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MESHSERVE_RUNTIME_LABELS"] == "mt:onnx,mt:onnx:1,mt:pytorch,pv:grpc-v2,pv:v2,rt:meshserve-1.x"
    assert _volumes(d)["models-dir"]["emptyDir"] == {"sizeLimit": str(3 * 2**30)}


def test_grpc_max_message_size_reaches_meshserves_runtime_and_its_own_flags_still_win() -> None:
    from mesh.cli import runtime as runtime_cli

    config, _ = parse_config("grpcMaxMessageSizeBytes: 33554432\n")
    args = _containers(_build(_native_spec(), config=config))["meshserve"]["args"]
    assert runtime_cli.build_parser().parse_args(args[1:]).max_message_bytes == "33554432"
    spec = _native_spec()
    spec["containers"][0]["args"] = ["--max-message-bytes", "1048576"]
    args = _containers(_build(spec, config=config))["meshserve"]["args"]
    # The runtime's own args come last, so they win as for every other flag.
    assert runtime_cli.build_parser().parse_args(args[1:]).max_message_bytes == "1048576"


def test_metrics_over_https_with_the_tls_secrets_certificate_when_the_scheme_asks_for_it() -> None:
    from mesh.cli import agent as agent_cli
    from mesh.cli import runtime as runtime_cli

    config, _ = parse_config("metrics:\n  scheme: https\ntls:\n  secretName: mesh-tls\n")
    native = _build(_native_spec(), config=config)
    assert native["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    assert _volumes(native)[rp.METRICS_TLS_VOLUME]["secret"] == {"secretName": "mesh-tls"}
    runtime = _containers(native)["meshserve"]
    assert _mounts(runtime)[rp.METRICS_TLS_VOLUME] == rp.METRICS_TLS_MOUNT
    parsed = runtime_cli.build_parser().parse_args(runtime["args"][1:])
    assert (parsed.metrics_tls_cert_file, parsed.metrics_tls_key_file) == rp.METRICS_TLS_FILES

    custom = _build(_custom_spec(), config=config)
    agent = _containers(custom)[rp.AGENT_CONTAINER]
    env = _env(agent)
    assert (env["MESHSERVE_AGENT_METRICS_TLS_CERT_FILE"], env["MESHSERVE_AGENT_METRICS_TLS_KEY_FILE"]) == rp.METRICS_TLS_FILES
    named = {k: v for k, v in env.items() if k.startswith("MESHSERVE_AGENT_METRICS_TLS_")}
    with pytest.MonkeyPatch.context() as patch:  # the agent's own settings read those variables
        for key, val in named.items():
            patch.setenv(key, val)
        settings = agent_cli.AgentSettings()
    assert (settings.metrics_tls_cert_file, settings.metrics_tls_key_file) == rp.METRICS_TLS_FILES
    assert _mounts(agent)[rp.METRICS_TLS_VOLUME] == rp.METRICS_TLS_MOUNT
    assert rp.METRICS_TLS_VOLUME in _volumes(custom)


def test_without_a_tls_secret_metrics_stay_http_whatever_the_scheme() -> None:
    for text in ("", "metrics:\n  scheme: https\n", "metrics:\n  scheme: http\ntls:\n  secretName: mesh-tls\n"):
        config, _ = parse_config(text)
        d = _build(_native_spec(), config=config)
        assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "http"
        assert (rp.TLS_VOLUME in _volumes(d)) == bool(config.tls.secret_name)  # mounted for gRPC TLS only
        assert "--metrics-tls-cert-file" not in _containers(d)["meshserve"]["args"]


def test_a_tls_secret_puts_every_meshserve_process_of_the_fabric_on_tls_with_internal_mutual_tls() -> None:
    """tls.secretName: the runtime, router and controller serve TLS from the mounted secret and
    call each other with it (mutual TLS inside, checking the Service's name); the router's
    own listeners ask clients for what tls.clientAuth says. Every object validates."""
    from mesh.cli import controller as controller_cli
    from router import server as router_cli
    from mesh.cli import runtime as runtime_cli

    config, _ = parse_config("tls:\n  secretName: mesh-tls\n  clientAuth: optional\n")
    cert, key, ca = rp.TLS_FILES
    native = _build(_native_spec(), config=config)
    runtime = _containers(native)["meshserve"]
    assert _volumes(native)[rp.TLS_VOLUME]["secret"] == {"secretName": "mesh-tls"}
    assert _mounts(runtime)[rp.TLS_VOLUME] == rp.TLS_MOUNT
    assert runtime["readinessProbe"]["tcpSocket"] == {"port": 8085}
    parsed = runtime_cli.build_parser().parse_args(runtime["args"][1:])
    assert (parsed.tls_cert_file, parsed.tls_key_file, parsed.tls_ca_file, parsed.tls_client_auth,
            parsed.tls_server_name) == (cert, key, ca, "require", config.inference_service_name)
    fabric_args = ["--fabric", "team-a"]
    router = _valid(rp.router_deployment("team-a", config, meshserve_image=IMAGE, fabric_args=fabric_args))
    controller = _valid(rp.controller_deployment("team-a", config, meshserve_image=IMAGE, fabric_args=fabric_args))
    for deployment, cli, client_auth in ((router, router_cli, "optional"), (controller, controller_cli, "require")):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert _mounts(container)[rp.TLS_VOLUME] == rp.TLS_MOUNT
        assert _volumes(deployment)[rp.TLS_VOLUME]["secret"] == {"secretName": "mesh-tls"}
        parsed = cli.build_parser().parse_args(container["args"][1:])
        assert (parsed.tls_cert_file, parsed.tls_ca_file, parsed.tls_client_auth) == (cert, ca, client_auth)
        assert "tcpSocket" in container["readinessProbe"]  # the kubelet's gRPC probe has no TLS
    plain = _valid(rp.router_deployment("team-a", DEFAULT_CONFIG, meshserve_image=IMAGE, fabric_args=fabric_args))
    assert "--tls-cert-file" not in plain["spec"]["template"]["spec"]["containers"][0]["args"]
    assert rp.TLS_VOLUME not in _volumes(plain)


def test_the_native_rule_is_the_image_repository() -> None:
    spec = _native_spec()
    assert rp.is_native(spec, "ghcr.io/meshserve/meshserve@sha256:" + "0" * 64)
    assert rp.is_native(spec, "ghcr.io/meshserve/meshserve")
    assert not rp.is_native(spec, "docker.io/other/meshserve:0.1.0")
    assert not rp.is_native(_custom_spec(), IMAGE)
    registry_port = _native_spec()
    registry_port["containers"][0]["image"] = "registry:5000/meshserve:1"
    assert rp.is_native(registry_port, "registry:5000/meshserve:2")
    assert not rp.is_native(registry_port, "registry/meshserve:2")


def test_a_native_runtime_keeps_its_other_containers_and_defaults_its_port() -> None:
    spec = _native_spec()
    del spec["grpcEndpoint"], spec["grpcDataEndpoint"]
    spec["containers"].append({"name": "log-shipper", "image": "example/shipper:1"})
    containers = _containers(_build(spec))
    assert list(containers) == ["meshserve", "log-shipper"]
    assert "--port" in containers["meshserve"]["args"]
    assert containers["meshserve"]["args"][containers["meshserve"]["args"].index("--port") + 1] == "8085"
    assert containers["log-shipper"] == {"name": "log-shipper", "image": "example/shipper:1"}


@pytest.mark.parametrize(("change", "message"), [
    ({"grpcDataEndpoint": "port:9000"}, "must match"),
    ({"grpcEndpoint": "unix:/run/spi.sock"}, "must be port:N"),
    ({"builtInAdapter": {"serverType": "triton", "runtimeManagementPort": 8001}}, "must include runtime container"),
])
def test_native_endpoints_it_cannot_serve_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRuntime, match=message):
        rp.deployment("rt", "ns", _native_spec(**change), replicas=1, meshserve_image=IMAGE, agent_args=AGENT_ARGS)


# -- reserved names ------------------------------------------------------------------------


def _with_container(**fields: Any) -> dict[str, Any]:
    spec = _custom_spec()
    spec["containers"][0].update(fields)
    return spec


@pytest.mark.parametrize(("spec", "message"), [
    (_with_container(name="mm"), "container spec for mm is invalid: container name mm is reserved for internal use"),
    (_with_container(name="rest-proxy"),
     "container spec for rest-proxy is invalid: container name rest-proxy is reserved for internal use"),
    (_with_container(name="puller"),
     "container spec for puller is invalid: container name puller is reserved for internal use"),
    (_with_container(name="mm-agent"),
     'container spec for mm-agent is invalid: container name cannot start with "mm-", which is reserved for internal use'),
    (_with_container(ports=[{"name": "grpc", "containerPort": 9000}]),
     "container spec for modelserver is invalid: port name grpc is reserved for internal use"),
    (_with_container(ports=[{"name": "http", "containerPort": 9000}]),
     "container spec for modelserver is invalid: port name http is reserved for internal use"),
    (_with_container(ports=[{"name": "prometheus", "containerPort": 9000}]),
     "container spec for modelserver is invalid: port name prometheus is reserved for internal use"),
    (_with_container(ports=[{"name": "mm-x", "containerPort": 9000}]),
     'container spec for modelserver is invalid: port name cannot start with "mm-", which is reserved for internal use'),
    *[(_with_container(ports=[{"containerPort": port}]),
       f"container spec for modelserver is invalid: Port {port} is reserved for internal use")
      for port in (8080, 8085, 8089, 8090)],
    *[(_with_container(ports=[{"containerPort": port}]),
       "container spec for modelserver is invalid: Port range [11881-11899] is reserved for internal use")
      for port in (11881, 11890, 11899)],
    (_with_container(volumeMounts=[{"name": "etcd-config", "mountPath": "/x"}]),
     "container spec for modelserver is invalid: volume etcd-config is reserved for internal use"),
    (_custom_spec(volumes=[{"name": "storage-config", "emptyDir": {}}]), "volume storage-config is reserved for internal use"),
    (_custom_spec(volumes=[{"name": "models-dir", "emptyDir": {}}]), "volume models-dir is reserved for internal use"),
    (_custom_spec(volumes=[{"name": "mm-cache", "emptyDir": {}}]),
     'volume cannot start with "mm-", which is reserved for internal use'),
    (_custom_spec(builtInAdapter={"serverType": "tgis"}), "unrecognized built-in runtime server type tgis"),
    (_custom_spec(builtInAdapter={"serverType": "mlserver"}), "must include runtime container with name mlserver"),
    (_custom_spec(containers=[]), "spec.containers must name at least one container"),
    (_custom_spec(containers=[{"image": "x:1"}]), "every container of spec.containers needs a name"),
])
def test_reserved_names_and_ports_are_refused_in_upstreams_words(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRuntime) as caught:
        rp.check_runtime(spec)
    assert caught.value.reason == message
    with pytest.raises(InvalidRuntime):
        rp.deployment("rt", "ns", spec, replicas=1, meshserve_image=IMAGE, agent_args=AGENT_ARGS)


@pytest.mark.parametrize("port", [8000, 8001, 11880, 11900, 2112])
def test_ports_next_to_the_reserved_ones_are_allowed(port: int) -> None:
    spec = _with_container(ports=[{"name": "serving", "containerPort": port}], volumeMounts=[
        {"name": "models-dir", "mountPath": "/data"}])
    rp.check_runtime(spec)
    assert _containers(_build(spec))["modelserver"]["ports"] == [{"name": "serving", "containerPort": port}]


def test_replicas_with_an_hpa_are_refused() -> None:
    annotations = {rp.AUTOSCALER_CLASS: "hpa"}
    with pytest.raises(InvalidRuntime) as caught:
        rp.check_runtime(_custom_spec(replicas=3), annotations)
    assert caught.value.reason == "Autoscaler is enabled and also replicas variable set. You can not set both."
    rp.check_runtime(_custom_spec(), annotations)
    rp.check_runtime(_custom_spec(replicas=3), {rp.MIN_SCALE: "2"})  # no autoscaler class: no HPA


# -- HPA -----------------------------------------------------------------------------------


def test_no_hpa_without_the_autoscaler_class() -> None:
    assert rp.hpa("rt", "ns", None) is None
    assert rp.hpa("rt", "ns", {}) is None
    assert rp.hpa("rt", "ns", {rp.MIN_SCALE: "2", rp.AUTOSCALER_METRICS: "memory"}) is None


def test_hpa_defaults() -> None:
    hpa = _valid(rp.hpa("triton-2.x", "team-a", {rp.AUTOSCALER_CLASS: "hpa"}))
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["name"] == "modelmesh-serving-triton-2.x"
    assert hpa["metadata"]["namespace"] == "team-a"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "modelmesh-serving-triton-2.x"}
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 1
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]


def test_hpa_from_every_annotation() -> None:
    config, _ = parse_config("inferenceServiceName: my-serving\n")
    hpa = _valid(rp.hpa("rt", "ns", {
        rp.AUTOSCALER_CLASS: "hpa", rp.AUTOSCALER_METRICS: "memory", rp.TARGET_UTILIZATION: "65",
        rp.MIN_SCALE: "2", rp.MAX_SCALE: "6",
    }, config))
    assert hpa["metadata"]["name"] == "my-serving-rt"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "my-serving-rt"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "memory", "target": {"type": "Utilization", "averageUtilization": 65}}


def test_min_scale_alone_pins_max_to_it() -> None:
    hpa = _valid(rp.hpa("rt", "ns", {rp.AUTOSCALER_CLASS: "hpa", rp.MIN_SCALE: "3"}))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3)


@pytest.mark.parametrize(("annotations", "message"), [
    ({rp.AUTOSCALER_CLASS: "kpa"}, "[kpa] is not a supported autoscaler class type."),
    ({rp.AUTOSCALER_CLASS: "none"}, "[none] is not a supported autoscaler class type."),
    ({rp.AUTOSCALER_CLASS: "external"}, "unknown autoscaler class [external]"),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.AUTOSCALER_METRICS: "concurrency"}, "[concurrency] is not a supported metric."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.TARGET_UTILIZATION: "0"},
     "The target utilization percentage should be a [1-100] integer."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.TARGET_UTILIZATION: "101"},
     "The target utilization percentage should be a [1-100] integer."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.TARGET_UTILIZATION: "high"},
     "The target utilization percentage should be a [1-100] integer."),
    ({rp.TARGET_UTILIZATION: "-1"}, "The target utilization percentage should be a [1-100] integer."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.MIN_SCALE: "0"}, "The min replicas should be more than 0"),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.MIN_SCALE: "two"}, "The min replicas should be a integer."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.MAX_SCALE: "many"}, "The max replicas should be a integer."),
    ({rp.AUTOSCALER_CLASS: "hpa", rp.MIN_SCALE: "4", rp.MAX_SCALE: "3"},
     "The max replicas should be same or bigger than min replicas."),
])
def test_bad_autoscaler_annotations_are_refused_in_upstreams_words(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRuntime) as caught:
        rp.hpa("rt", "ns", annotations)
    assert caught.value.reason == message
    with pytest.raises(InvalidRuntime):
        rp.check_runtime(_custom_spec(), annotations)


# -- replicas ------------------------------------------------------------------------------


def test_replicas_are_the_specs_else_pods_per_runtime() -> None:
    assert rp.desired_replicas({}, needed=True, unused_since_s=None) == 2
    assert rp.desired_replicas({"replicas": 5}, needed=True, unused_since_s=None) == 5
    assert rp.desired_replicas({"replicas": 0}, needed=True, unused_since_s=None) == 0
    config, _ = parse_config("podsPerRuntime: 4\n")
    assert rp.desired_replicas({}, config, needed=True, unused_since_s=None) == 4


def test_scale_to_zero_at_once_when_no_predictor_ever_needed_it() -> None:
    assert rp.desired_replicas({}, needed=False, unused_since_s=None) == 0
    assert rp.desired_replicas({"replicas": 3}, needed=False, unused_since_s=None) == 0


def test_scale_to_zero_after_the_grace_period() -> None:
    assert rp.desired_replicas({"replicas": 3}, needed=False, unused_since_s=0.0) == 3
    assert rp.desired_replicas({"replicas": 3}, needed=False, unused_since_s=59.9) == 3
    assert rp.desired_replicas({"replicas": 3}, needed=False, unused_since_s=60.0) == 0
    config, _ = parse_config("scaleToZero:\n  gracePeriodSeconds: 5\n")
    assert rp.desired_replicas({}, config, needed=False, unused_since_s=4.0) == 2
    assert rp.desired_replicas({}, config, needed=False, unused_since_s=5.0) == 0


def test_a_needed_runtime_or_scale_to_zero_off_stays_up() -> None:
    assert rp.desired_replicas({}, needed=True, unused_since_s=3600.0) == 2
    config, _ = parse_config("scaleToZero:\n  enabled: false\n")
    assert rp.desired_replicas({}, config, needed=False, unused_since_s=None) == 2
    assert rp.desired_replicas({}, config, needed=False, unused_since_s=3600.0) == 2


def test_with_an_hpa_scaled_up_is_its_min_scale() -> None:
    annotations = {rp.AUTOSCALER_CLASS: "hpa", rp.MIN_SCALE: "3", rp.MAX_SCALE: "8"}
    assert rp.desired_replicas({}, needed=True, unused_since_s=None, annotations=annotations) == 3
    assert rp.desired_replicas({}, needed=False, unused_since_s=None, annotations=annotations) == 0
    with pytest.raises(InvalidRuntime, match="You can not set both"):
        rp.desired_replicas({"replicas": 2}, needed=True, unused_since_s=None, annotations=annotations)


# -- the Service ---------------------------------------------------------------------------


def test_the_service_fronts_the_router() -> None:
    s = _valid(rp.service("team-a"))
    assert s["metadata"]["name"] == "modelmesh-serving" and s["metadata"]["namespace"] == "team-a"
    assert s["metadata"]["labels"]["modelmesh-service"] == "modelmesh-serving"
    assert s["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"], p["targetPort"]) for p in s["spec"]["ports"]] == [
        ("grpc", 8033, "grpc"), ("http", 8008, "http"), ("prometheus", 2112, "prometheus")]
    assert s["spec"]["selector"] == dict(rp.ROUTER_POD_LABELS)
    # Runtime pods do not serve 8033 in meshserve: the selector must not pick them.
    pool_labels = _build(_custom_spec())["spec"]["template"]["metadata"]["labels"]
    assert not s["spec"]["selector"].items() <= pool_labels.items()


def test_the_service_follows_the_config() -> None:
    config, _ = parse_config("inferenceServiceName: my-serving\ninferenceServicePort: 9033\nheadlessService: false\n"
                             "restProxy:\n  enabled: false\nmetrics:\n  port: 9112\n")
    s = _valid(rp.service("ns", config))
    assert s["metadata"]["name"] == "my-serving"
    assert "clusterIP" not in s["spec"]
    assert [(p["name"], p["port"]) for p in s["spec"]["ports"]] == [("grpc", 9033), ("prometheus", 9112)]
    config, _ = parse_config("metrics:\n  enabled: false\nrestProxy:\n  port: 9008\n")
    assert [(p["name"], p["port"]) for p in _valid(rp.service("ns", config))["spec"]["ports"]] == [
        ("grpc", 8033), ("http", 9008)]


# -- RBAC ----------------------------------------------------------------------------------


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in rp.OPERATOR_RBAC)


def test_the_rbac_rules_make_a_valid_cluster_role() -> None:
    _valid({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "meshserve-operator"}, "rules": rp.OPERATOR_RBAC})
    for rule in rp.OPERATOR_RBAC:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch", "delete"}


def test_the_rbac_rules_cover_what_the_operator_does() -> None:
    for resource in ("predictors", "inferenceservices", "servingruntimes", "clusterservingruntimes"):
        for verb in ("get", "list", "watch", "patch"):
            assert _allowed("serving.kserve.io", resource, verb), (resource, verb)
        assert _allowed("serving.kserve.io", f"{resource}/status", "patch")
        assert not _allowed("serving.kserve.io", resource, "delete")
    for resource in ("servingruntimes/finalizers", "clusterservingruntimes/finalizers"):
        assert _allowed("serving.kserve.io", resource, "update")
    for group, resource in (("apps", "deployments"), ("", "services"), ("autoscaling", "horizontalpodautoscalers")):
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert _allowed(group, resource, verb), (resource, verb)
    for resource in ("configmaps", "secrets"):
        assert _allowed("", resource, "watch")
    assert not _allowed("", "configmaps", "create")
    assert _allowed("", "secrets", "create") and _allowed("", "secrets", "patch")  # cluster scope's etcd Secret
    assert not _allowed("", "secrets", "delete")
    assert _allowed("", "events", "create")
    assert _allowed("", "namespaces", "list") and _allowed("", "namespaces", "watch")
    assert _allowed("kopf.dev", "kopfpeerings", "patch") and _allowed("kopf.dev", "clusterkopfpeerings", "patch")
    assert not any("coordination.k8s.io" in rule["apiGroups"] for rule in rp.OPERATOR_RBAC)


def test_the_objects_built_are_of_kinds_the_rbac_lets_it_write() -> None:
    kinds = {("apps", "Deployment"): "deployments", ("", "Service"): "services",
             ("autoscaling", "HorizontalPodAutoscaler"): "horizontalpodautoscalers"}
    for obj in (_build(_custom_spec()), rp.service("ns"), rp.hpa("rt", "ns", {rp.AUTOSCALER_CLASS: "hpa"})):
        group = obj["apiVersion"].rpartition("/")[0]
        assert _allowed(group, kinds[(group, obj["kind"])], "patch")


def test_samples_dir_is_the_shared_folder_beside_the_repo() -> None:
    repo = Path(__file__).resolve().parents[3]
    assert shared_dir() == repo.parent / "shared"
