"""Writes docs/dashboards/meshserve.json, the Grafana dashboard of a meshserve fabric.

    .venv/bin/python docs/dashboards/gen_dashboard.py          # rewrite the JSON
    .venv/bin/python docs/dashboards/gen_dashboard.py --check  # exit 1 if it is stale

The chart ships the same file (charts/meshserve/dashboards/, a ConfigMap for Grafana's
sidecar); tests/test_dashboard.py checks both are current and tests/test_prometheus.py
runs every expression against a real Prometheus scraping a real fabric.

Written from ModelMesh's metric names (../shared/METRICS.md): the panels modelmesh-serving's
board has, then what it lacks. Selectors are `{namespace="$namespace", pod=~"($service)-.*"}`:
`service` is a regex of pod-name prefixes (runtime pools are `<inferenceServiceName>-<runtime>-…`,
the chart's router and controller `<release fullname>-router/-controller-…`). Rates use
`$__rate_interval`; no datasource uid is written (the `datasource` variable picks one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The dashboard in the docs, and the chart's copy (Helm reads files inside the chart only).
OUTS = (REPO / "docs" / "dashboards" / "meshserve.json", REPO / "charts" / "meshserve" / "dashboards" / "meshserve.json")

SEL = 'namespace="$namespace", pod=~"($service)-.*"'
POOL = 'namespace="$namespace", pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"'
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def rate(metric: str, selector: str, by: str = "", extra: str = "") -> str:
    labels = selector + (", " + extra if extra else "")
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{RI}]))"


def increase(metric: str, selector: str) -> str:
    return f"sum (increase({metric}{{{selector}}}[{RI}]))"


def mean(histogram: str, selector: str, by: str = "", extra: str = "") -> str:
    return f"{rate(histogram + '_sum', selector, by, extra)} / {rate(histogram + '_count', selector, by, extra)}"


def quantile(q: float, histogram: str, selector: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{{{selector}}}[{RI}])))"


class Layout:
    """Panels left to right, 24 columns wide, rows of `height`."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str, **extra: Any) -> None:
        self.newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, **extra})
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0

    def panel(self, title: str, targets: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries",
              width: int = 8, height: int = 8, description: str = "", **options: Any) -> None:
        if self.x + width > 24:
            self.newline()
        panel = {
            "type": kind, "title": title, "id": self._id(), "datasource": DS, "description": description,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                        for i, (expr, legend) in enumerate(targets)],
            **options,
        }
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def global_row(d: Layout) -> None:
    d.row("Global")
    d.panel("Global LRU age", [
        (f"max(modelmesh_instance_lru_age_seconds{{{SEL}}})", "oldest copy in the fleet"),
        (f"min(modelmesh_instance_lru_age_seconds{{{SEL}}} > 0)", "instance with the youngest LRU"),
    ], unit="s", description="Time since the least recently used copy was last used. When the youngest instance LRU "
       "is short, evictions take copies that were used recently: the fleet is short of room.")
    d.panel("Age at eviction (median, p10)", [
        (quantile(0.5, "modelmesh_age_at_eviction_milliseconds", SEL), "median"),
        (quantile(0.1, "modelmesh_age_at_eviction_milliseconds", SEL), "p10"),
    ], unit="ms")
    d.panel("Fleet capacity vs used", [
        (f"sum(modelmesh_instance_capacity_bytes{{{SEL}}})", "capacity"),
        (f"sum(modelmesh_instance_used_bytes{{{SEL}}})", "used"),
    ], unit="bytes")
    d.panel("Instances", [(f"count(modelmesh_instance_capacity_bytes{{{SEL}}})", "instances")], kind="stat", width=4)
    d.panel("Models", [
        (f"max(modelmesh_models_managed_total{{{SEL}}})", "managed"),
        (f"max(modelmesh_models_loaded_total{{{SEL}}})", "loaded"),
        (f"max(modelmesh_models_with_failure_total{{{SEL}}})", "with failure"),
    ], kind="stat", width=8, description="Fleet-wide counts, published by the controller leader only (hence max).")
    d.panel("Models per instance", [(f"sum by (pod) (modelmesh_instance_models_total{{{SEL}}})", "{{pod}}")],
            width=12)
    d.panel("Inference request rate: external vs internal", [
        (rate("modelmesh_api_request_milliseconds_count", SEL), "external (router)"),
        (rate("modelmesh_invoke_model_milliseconds_count", SEL), "internal (model invocations)"),
    ], unit="reqps", width=12)
    d.panel("Average request and response size", [
        (mean("modelmesh_request_size_bytes", SEL), "request"),
        (mean("modelmesh_response_size_bytes", SEL), "response"),
    ], unit="bytes")
    d.panel("Request rate per instance (OK)", [
        (rate("modelmesh_invoke_model_milliseconds_count", SEL, "pod", 'code="OK"'), "{{pod}}"),
    ], unit="reqps")
    d.panel("Mean response time per instance (OK)", [
        (mean("modelmesh_invoke_model_milliseconds", SEL, "pod", 'code="OK"'), "{{pod}}"),
    ], unit="ms")
    d.panel("Queue delay per instance (mean)", [
        (mean("modelmesh_req_queue_delay_milliseconds", SEL, "pod"), "{{pod}}"),
    ], unit="ms")
    d.panel("Cache misses", [(rate("modelmesh_cache_miss_milliseconds_count", SEL), "misses/s")], unit="reqps")
    d.panel("Cache miss rate", [
        (f"{rate('modelmesh_cache_miss_milliseconds_count', SEL)} / "
         f"{rate('modelmesh_api_request_milliseconds_count', SEL, extra='method=' + chr(34) + 'ModelInfer' + chr(34))}",
         "misses / inference requests"),
    ], unit="percentunit")
    d.panel("Mean cache miss delay", [(mean("modelmesh_cache_miss_milliseconds", SEL), "delay")], unit="ms")
    d.panel("Loads, unloads, evictions, load failures", [
        (increase("modelmesh_loadmodel_milliseconds_count", SEL), "loads"),
        (increase("modelmesh_unloadmodel_milliseconds_count", SEL), "unloads"),
        (increase("modelmesh_age_at_eviction_milliseconds_count", SEL), "evictions"),
        (increase("modelmesh_loadmodel_failure", SEL), "load failures"),
        (increase("modelmesh_unloadmodel_failure", SEL), "unload failures"),
    ], description="Per rate interval.")
    d.panel("Mean loaded model size", [
        (f"sum(modelmesh_loaded_model_size_bytes_sum{{{SEL}}}) / sum(modelmesh_loaded_model_size_bytes_count{{{SEL}}})",
         "mean size"),
    ], unit="bytes", description="Since the instances started.")
    d.panel("Model load, sizing and loading-queue times (p90)", [
        (quantile(0.9, "modelmesh_loadmodel_milliseconds", SEL), "load"),
        (quantile(0.9, "modelmesh_model_sizing_milliseconds", SEL), "sizing"),
        (quantile(0.9, "modelmesh_loading_queue_delay_milliseconds", SEL), "loading queue"),
        (quantile(0.9, "modelmesh_unloadmodel_milliseconds", SEL), "unload"),
    ], unit="ms")


def capacity_row(d: Layout) -> None:
    d.row("Capacity and models (beyond ModelMesh's board)")
    d.panel("Capacity used per instance", [
        (f"sum by (pod) (modelmesh_instance_used_bytes{{{SEL}}}) / sum by (pod) (modelmesh_instance_capacity_bytes{{{SEL}}})",
         "{{pod}}"),
    ], unit="percentunit", kind="bargauge", width=12,
        options={"orientation": "horizontal", "displayMode": "gradient", "reduceOptions": {"calcs": ["lastNotNull"]}},
        description="Used (loaded plus loads in progress) over capacity, one bar per instance.")
    d.panel("Loads in progress", [(f"sum by (pod) (meshserve_instance_loads_in_progress{{{SEL}}})", "{{pod}}")],
            width=12)
    api = 'method="ModelInfer", modelId!=""'
    d.panel("Hit rate per model (per-model labels on)", [
        (f"1 - ({rate('modelmesh_cache_miss_milliseconds_count', SEL, 'modelId', 'modelId!=' + chr(34) + chr(34))} / "
         f"{rate('modelmesh_api_request_milliseconds_count', SEL, 'modelId', api)} "
         f"or {rate('modelmesh_api_request_milliseconds_count', SEL, 'modelId', api)} * 0)", "{{modelId}}"),
    ], unit="percentunit", width=12,
        description="1 - misses / inference requests, per model; needs per_model_metrics on the routers.")
    d.panel("Hottest models (per-model labels on)", [
        (f"topk(10, {rate('modelmesh_api_request_milliseconds_count', SEL, 'modelId', api)})", "{{modelId}}"),
    ], unit="reqps", kind="bargauge", width=12,
        options={"orientation": "horizontal", "displayMode": "basic", "reduceOptions": {"calcs": ["lastNotNull"]}})


def pool_row(d: Layout) -> None:
    d.row("Runtime pool $deployment", repeat="deployment")
    d.panel("Capacity vs used", [
        (f"sum(modelmesh_instance_capacity_bytes{{{POOL}}})", "capacity"),
        (f"sum(modelmesh_instance_used_bytes{{{POOL}}})", "used"),
    ], unit="bytes", width=6)
    d.panel("Instances and copies", [
        (f"count(modelmesh_instance_capacity_bytes{{{POOL}}})", "instances"),
        (f"sum(modelmesh_instance_models_total{{{POOL}}})", "copies"),
    ], width=6)
    d.panel("Invocations (OK) and mean time", [
        (rate("modelmesh_invoke_model_milliseconds_count", POOL, extra='code="OK"'), "req/s"),
        (mean("modelmesh_invoke_model_milliseconds", POOL, extra='code="OK"'), "mean ms"),
    ], width=6)
    d.panel("Loads and evictions", [
        (increase("modelmesh_loadmodel_milliseconds_count", POOL), "loads"),
        (increase("modelmesh_age_at_eviction_milliseconds_count", POOL), "evictions"),
        (increase("modelmesh_loadmodel_failure", POOL), "load failures"),
    ], width=6)


def templating() -> dict[str, Any]:
    return {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS, "refresh": 2,
         "query": {"query": "label_values(modelmesh_instance_capacity_bytes, namespace)", "refId": "namespace"},
         "definition": "label_values(modelmesh_instance_capacity_bytes, namespace)", "current": {}},
        {"name": "service", "label": "Pod name prefixes", "type": "textbox", "query": "modelmesh-serving|meshserve",
         "current": {"text": "modelmesh-serving|meshserve", "value": "modelmesh-serving|meshserve"},
         "description": "Regex of the fabric's pod-name prefixes: runtime pools (<inferenceServiceName>-<runtime>) "
                        "and the chart's router and controller (<release fullname>)."},
        {"name": "deployment", "label": "Runtime pool", "type": "query", "datasource": DS, "refresh": 2,
         "multi": True, "includeAll": True,
         "query": {"query": 'label_values(modelmesh_instance_capacity_bytes{namespace="$namespace", '
                            'pod=~"($service)-.*"}, pod)', "refId": "deployment"},
         "definition": 'label_values(modelmesh_instance_capacity_bytes{namespace="$namespace", pod=~"($service)-.*"}, pod)',
         "regex": "/^(.+)-[a-z0-9]+-[a-z0-9]+$/", "current": {}},
    ]}


def dashboard() -> dict[str, Any]:
    d = Layout()
    global_row(d)
    capacity_row(d)
    pool_row(d)
    return {
        "title": "meshserve", "uid": "meshserve-fabric", "tags": ["meshserve", "modelmesh"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "timezone": "", "graphTooltip": 1, "annotations": {"list": []}, "links": [],
        "description": "A meshserve fabric under ModelMesh's metric names (docs/operations.md).",
        "templating": templating(), "panels": d.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv[1:]:
        sys.exit(0 if all(out.exists() and out.read_text() == text for out in OUTS) else 1)
    for out in OUTS:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
