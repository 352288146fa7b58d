"""A real `meshserve agent` process on loopback, beside a runtime process, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.runtime_process import stop_process

REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    process: subprocess.Popen
    port: int
    log_path: Path
    metrics_port: int = 0  # 0: off

    def metrics(self) -> str:
        """Its /metrics text (http)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; SIGKILL (and AssertionError) if it does not stop in time."""
        return stop_process(self.process, "agent", timeout, log=self.log)


def start_agent_process(workdir: Path, runtime_address: str, *extra: str, metrics: bool = False) -> AgentProcess:
    """Start `meshserve agent` for the runtime at `runtime_address` (fabric flags in `extra`;
    `metrics`: serve /metrics on a free port); returns at once: wait for its instance record
    to know it is up."""
    port = free_port()
    metrics_port = free_port() if metrics else 0
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"agent-{port}.log"
    command = [sys.executable, "-m", "mesh.cli", "agent", "--host", "127.0.0.1", "--port", str(port),
               "--metrics-port", str(metrics_port), "--runtime-address", runtime_address, *extra]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return AgentProcess(process, port, log_path, metrics_port)
