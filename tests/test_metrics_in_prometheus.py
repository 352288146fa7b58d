"""A real Prometheus scrapes a real fabric (etcd, two runtimes, a controller, a router over
https) under traffic, loads and evictions: every expression of the shipped Grafana
dashboard parses and returns data, and the exposition's names, types, labels and buckets
are those of ModelMesh's table in ../shared/METRICS.md.

Outside Kubernetes nothing adds `namespace` and `pod` to the scraped series: the scrape
config's static labels stand in for the Kubernetes service discovery, with pod names as
the operator's Deployments and the chart give them.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import urllib.request
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_mesh_pb2 as mm
from tests.support.fabric import Fabric
from tests.support.metrics_table import buckets, metric_table, metrics_md
from tests.support.models import add_onnx
from tests.support.ports import free_port
from tests.support.prometheus import BINARY, PrometheusServer, ScrapeTarget
from tests.support.tls import self_signed
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "dashboards" / "meshserve.json"
NAMESPACE = "meshserve-e2e"
POOL = "modelmesh-serving-pool"
PODS = {"rt0": f"{POOL}-5f7c9d8b6-x7k2p", "rt1": f"{POOL}-5f7c9d8b6-q4m9z",
        "router": "meshserve-router-6d8f9c7b5-r2d2x", "controller": "meshserve-controller-7c9d8f6b5-c3p0z"}
MODELS = [f"m{n:02d}" for n in range(16)]
VARIABLES = {"$namespace": NAMESPACE, "$service": "modelmesh-serving|meshserve", "$deployment": POOL,
             "$__rate_interval": "20s", "$__interval": "5s", "$__range": "1m"}

pytestmark = [
    pytest.mark.skipif(shutil.which("prometheus") is None and not Path(BINARY).exists(), reason="no prometheus binary"),
    pytest.mark.skipif(not metrics_md().exists(), reason="../shared/METRICS.md is not beside this checkout"),
    pytest.mark.timeout(180),
]


def _infer(stub, model_id: str) -> None:
    request = pb.ModelInferRequest(model_name=model_id)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    stub.ModelInfer(request, timeout=60)


def _scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as reply:
        return reply.read().decode()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """The fabric after traffic, a Prometheus that has scraped it, and each process's exposition."""
    workdir = tmp_path_factory.mktemp("prometheus-e2e")
    cert, key = self_signed(workdir / "tls")
    fabric = Fabric(workdir)
    try:
        fabric.start_etcd()
        # Room for a few of the 16 models per runtime, so cycling through them evicts.
        for name in ("rt0", "rt1"):
            fabric.add_runtime(name, "512KiB", "--per-model-metrics")
        controller_metrics, router_metrics = free_port(), free_port()
        controller = fabric.add_controller("--metrics-port", str(controller_metrics))
        router = fabric.add_router("--metrics-port", str(router_metrics), "--per-model-metrics",
                                   "--metrics-tls-cert-file", str(cert), "--metrics-tls-key-file", str(key))
        labels = {name: {"namespace": NAMESPACE, "pod": pod} for name, pod in PODS.items()}
        targets = [ScrapeTarget("runtime", f"127.0.0.1:{fabric.runtimes[n].metrics_port}", labels[n]) for n in ("rt0", "rt1")]
        targets.append(ScrapeTarget("controller", f"127.0.0.1:{controller_metrics}", labels["controller"]))
        targets.append(ScrapeTarget("router", f"127.0.0.1:{router_metrics}", labels["router"], scheme="https",
                                    ca_file=str(cert)))
        with PrometheusServer(workdir / "prometheus", targets) as prometheus:
            for model_id in MODELS:
                path = add_onnx(workdir / "store" / model_id / "model.onnx", weights=16384).parent
                controller.mesh.registerModel(mm.RegisterModelRequest(
                    modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path))), timeout=30)
            broken = workdir / "store" / "broken"
            broken.mkdir(parents=True)
            (broken / "model.onnx").write_bytes(b"not an onnx model")
            controller.mesh.registerModel(mm.RegisterModelRequest(
                modelId="broken", modelInfo=mm.ModelInfo(type="onnx", path=str(broken))), timeout=30)
            stub = pb_grpc.GRPCInferenceServiceStub(router.channel)
            for _ in range(2):  # every model twice: misses, loads, and evictions to make room
                for model_id in MODELS:
                    _infer(stub, model_id)
            for _ in range(20):  # and a hot one, hits
                _infer(stub, MODELS[-1])
            with pytest.raises(grpc.RpcError):
                _infer(stub, "broken")

            def seen(expr: str) -> bool:
                return any(float(s["value"][1]) > 0 for s in prometheus.query(expr)["result"])

            for expr in ("sum(modelmesh_age_at_eviction_milliseconds_count)", "sum(modelmesh_loadmodel_failure)",
                         "sum(modelmesh_cache_miss_milliseconds_count)", "max(modelmesh_models_managed_total)",
                         'sum(modelmesh_api_request_milliseconds_count{modelId="m15"})',
                         "count(up == 1) == 4"):
                wait_until(lambda: seen(expr), 60, f"Prometheus to see {expr}", interval=0.5)
            # A rate needs two samples in its window: wait until even the newest series (the
            # broken model's failed call, the last misses) have been scraped a few times.
            for family in ("modelmesh_api_request_milliseconds_count", "modelmesh_invoke_model_milliseconds_count",
                           "modelmesh_cache_miss_milliseconds_count", "modelmesh_loadmodel_failure"):
                expr = f"min(count_over_time({family}[{VARIABLES['$__rate_interval']}])) >= 3"
                wait_until(lambda: prometheus.query(expr)["result"], 30, f"three scrapes of {family}", interval=0.5)
            context = ssl.create_default_context(cafile=str(cert))
            expositions = {
                "rt0": _scrape(f"http://127.0.0.1:{fabric.runtimes['rt0'].metrics_port}/metrics"),
                "rt1": _scrape(f"http://127.0.0.1:{fabric.runtimes['rt1'].metrics_port}/metrics"),
                "controller": _scrape(f"http://127.0.0.1:{controller_metrics}/metrics"),
                "router": _scrape(f"https://127.0.0.1:{router_metrics}/metrics", context),
            }
            yield prometheus, expositions
    finally:
        fabric.close()


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def _substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def test_every_dashboard_expression_parses_and_returns_data(scraped):
    prometheus, _ = scraped
    exprs = _dashboard_exprs()
    assert len(exprs) >= 40
    empty = []
    for title, expr in exprs:
        result = prometheus.query(_substitute(expr))["result"]  # a parse error raises with Prometheus' reason
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_the_runtime_pool_variable_finds_the_pools_deployment(scraped):
    prometheus, _ = scraped
    variable = next(v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "deployment")
    selector = _substitute(re.match(r"label_values\((.*), pod\)", variable["query"]["query"]).group(1))
    pods = prometheus.api("label/pod/values", **{"match[]": selector})
    regex = re.compile(variable["regex"].strip("/"))
    assert {regex.match(pod).group(1) for pod in pods} == {POOL}
    namespaces = prometheus.api("label/namespace/values", **{"match[]": "modelmesh_instance_capacity_bytes"})
    assert namespaces == [NAMESPACE]


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def test_exposed_names_and_types_are_metrics_md_s_table(scraped):
    _, expositions = scraped
    exposed: dict[str, str] = {}
    for text in expositions.values():
        exposed.update(_types(text))
    table = metric_table()
    assert len(table) >= 24
    wrong = {name: (kind, exposed.get(name)) for name, (kind, _) in table.items() if exposed.get(name) != kind}
    assert not wrong, f"(METRICS.md type, exposed type): {wrong}"
    for name, (kind, _) in table.items():  # ModelMesh's counters only under their bare names
        if kind == "counter":
            assert name + "_total" not in exposed
    assert not [n for n in exposed if n.endswith("_created")]
    # The fleet-wide gauges come from the controller (its leader) only.
    for name in ("modelmesh_models_managed_total", "modelmesh_models_loaded_total", "modelmesh_models_with_failure_total"):
        assert [who for who, text in expositions.items() if name in _types(text)] == ["controller"]


def test_histogram_labels_and_buckets_are_modelmeshs(scraped):
    prometheus, expositions = scraped
    table, bounds = metric_table(), buckets()
    family_of = {"modelmesh_age_at_eviction_milliseconds": "age at eviction",
                 "modelmesh_loaded_model_size_bytes": "model size",
                 "modelmesh_request_size_bytes": "message size", "modelmesh_response_size_bytes": "message size"}
    text = "\n".join(expositions.values())
    for name, (kind, labels) in table.items():
        if kind != "histogram":
            continue
        series = prometheus.api("series", **{"match[]": f"{name}_count"})
        assert series, f"no {name}_count in Prometheus"
        for labelset in series:
            assert set(labels) <= set(labelset), (name, labelset)
        found = sorted({float(le) for le in re.findall(rf'^{name}_bucket{{[^}}]*le="([^"]+)"', text, re.MULTILINE)
                        if le != "+Inf"})
        assert tuple(found) == bounds[family_of.get(name, "timings")], name
    # Per-model labels (on here) only on histograms, never on counters or gauges.
    for text in expositions.values():
        kinds = _types(text)
        for sample_name in re.findall(r'^(\w+)\{[^}]*modelId="', text, re.MULTILINE):
            family = re.sub(r"_(bucket|sum|count)$", "", sample_name)
            assert kinds.get(family) == "histogram", sample_name
