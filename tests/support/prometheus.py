"""A real Prometheus (Debian's `prometheus` binary) scraping given targets, for tests.

`PrometheusServer.start` writes a scrape config (one job per `ScrapeTarget`, with its static
labels: outside Kubernetes nothing adds `namespace` and `pod`, so the test says what they
are, standing in for the Kubernetes service discovery a cluster would use), starts the
binary on a free loopback port with its own TSDB folder and waits for `/-/ready`. `query`
runs an instant PromQL query through the HTTP API and returns `data` (raising on an error
status, with Prometheus' own message).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port
from tests.support.runtime_process import stop_process
from tests.support.waiting import wait_until

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    ca_file: str = ""  # with https: the CA (here the self-signed certificate) to verify against


class QueryError(AssertionError):
    pass


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[ScrapeTarget], scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, dict[str, Any]] = {}
        for target in self.targets:  # one job per name, one static config (its labels) per target
            job = jobs.setdefault(target.job, {"job_name": target.job, "scheme": target.scheme,
                                               "metrics_path": "/metrics", "static_configs": []})
            job["static_configs"].append({"targets": [target.address], "labels": target.labels})
            if target.ca_file:
                job["tls_config"] = {"ca_file": target.ca_file}
        return {"global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                           "evaluation_interval": self.scrape_interval},
                "scrape_configs": list(jobs.values())}

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        log_path = self.workdir / "prometheus.log"
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [BINARY, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}", "--storage.tsdb.retention.time=1h"],
                stdout=log_file, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.process.poll() is not None:
                return True  # said below, at once
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return reply.status == 200

        wait_until(ready, 30, "prometheus to be ready")
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:  # 400/422: a bad expression, with Prometheus' reason
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise QueryError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def targets_up(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, "prometheus", 20, log=self.log)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
