"""The shipped Grafana dashboard, read as JSON: current with its generator (docs and chart
copies), no datasource uid written in, every query scoped by the namespace and service
variables, the panels ModelMesh users know and the ones their board lacks.
(tests/test_metrics_in_prometheus.py runs every query against a real Prometheus.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "dashboards" / "meshserve.json"
CHART = REPO / "charts" / "meshserve" / "dashboards" / "meshserve.json"


def _dashboard() -> dict:
    return json.loads(DOCS.read_text())


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_both_copies_are_what_the_generator_writes():
    check = subprocess.run([sys.executable, str(REPO / "docs" / "dashboards" / "gen_dashboard.py"), "--check"])
    assert check.returncode == 0, "run .venv/bin/python docs/dashboards/gen_dashboard.py"
    assert DOCS.read_text() == CHART.read_text()


def test_no_datasource_uid_is_hard_coded():
    dashboard = _dashboard()
    uids = set(re.findall(r'"uid": "([^"]*)"', json.dumps(dashboard)))
    assert uids == {"${datasource}", dashboard["uid"]}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "service", "deployment"} <= set(variables)


def test_every_query_is_scoped_by_namespace_and_the_fabrics_pods():
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            selectors = re.findall(r"\w+\{([^}]*)\}", expr)
            assert selectors, expr
            for selector in selectors:
                assert 'namespace="$namespace"' in selector, expr
                assert 'pod=~"($service)-.*"' in selector or 'pod=~"$deployment-' in selector, expr
            assert "[$__rate_interval]" in expr or "rate(" not in expr, expr
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_titles_do_not_promise_a_fixed_window_over_rate_interval():
    for panel in _panels(_dashboard()):
        assert not re.search(r"per \d+ ?min", panel["title"]), panel["title"]


def test_the_panels_users_know_and_the_new_ones_are_there():
    titles = {panel["title"] for panel in _panels(_dashboard())}
    for wanted in ("Global LRU age", "Age at eviction (median, p10)", "Fleet capacity vs used", "Instances", "Models",
                   "Models per instance", "Inference request rate: external vs internal",
                   "Average request and response size", "Request rate per instance (OK)",
                   "Mean response time per instance (OK)", "Queue delay per instance (mean)", "Cache misses",
                   "Cache miss rate", "Mean cache miss delay", "Loads, unloads, evictions, load failures",
                   "Mean loaded model size", "Model load, sizing and loading-queue times (p90)",
                   "Capacity used per instance", "Loads in progress", "Hit rate per model (per-model labels on)",
                   "Hottest models (per-model labels on)", "Runtime pool $deployment"):
        assert wanted in titles, wanted
    rows = [p for p in _dashboard()["panels"] if p["type"] == "row"]
    assert any(row.get("repeat") == "deployment" for row in rows)
    ids = [panel["id"] for panel in _panels(_dashboard())]
    assert len(ids) == len(set(ids))


def test_the_alert_suggestions_in_operations_md_are_valid_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package has it)")
    text = (REPO / "docs" / "operations.md").read_text()
    rules = text.split("## Alert suggestions", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "rules.yml"
    path.write_text(rules)
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
