"""Runtime processes standing in for the pods of the Deployments the operator writes.

No kubelet runs here. For each runtime-pool Deployment in the emulated API server with
replicas > 0, `StandInPods.sync()` starts ONE real process running the command line of the
Deployment's meshserve container (`meshserve runtime ...` or `meshserve agent ...`), with
what a pod would give it replaced by local equivalents: `$(POD_NAME)` / `$(POD_IP)`, free
loopback ports, and the secret mounts (etcd connection, storage-config) as local files. A
Deployment scaled to zero has its process stopped. One process per Deployment, not one per
replica, keeps the 2-core test machine usable; placement across several instances is
tested elsewhere.

A pool of a runtime that is not meshserve's (Triton or MLServer behind modelmesh-runtime-
adapter, whose images cannot run here) has a `meshserve agent` container: its pod gets a
plain `meshserve runtime` (no etcd) standing in for the runtime container, serving the
model-runtime SPI and V2 inference on one port, and the agent is pointed at it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.fabric import REPO
from tests.support.kube_api import KubeApi
from tests.support.ports import free_port
from tests.support.runtime_process import RuntimeProcess, start_runtime_process

__all__ = ["StandInPods"]


@dataclass
class _Pod:
    deployment: str
    process: subprocess.Popen
    log_path: Path
    port: int
    runtime: RuntimeProcess | None = None  # the stand-in for a foreign runtime container, beside the agent

    def log(self) -> str:
        own = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return own + (f"\n--- its runtime stand-in:\n{self.runtime.log()}" if self.runtime else "")


class StandInPods:
    def __init__(self, api: KubeApi, namespace: str, workdir: Path, *, etcd_endpoint: str,
                 storage_config_dir: Path | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.workdir = workdir
        self.storage_config_dir = storage_config_dir
        self.etcd_connection = workdir / "etcd_connection"
        self.etcd_connection.write_text(json.dumps({"endpoints": f"http://{etcd_endpoint}"}))
        self.pods: dict[str, _Pod] = {}

    def deployments(self) -> dict[str, dict]:
        found = {}
        for (resource, namespace, name), obj in self.api.emulator.objects.items():
            if resource.plural == "deployments" and namespace == self.namespace and not obj.deleted:
                found[name] = obj.raw
        return found

    def sync(self) -> None:
        """Start a process for each Deployment with replicas > 0; stop those scaled to zero or gone."""
        deployments = self.deployments()
        for name, pod in list(self.pods.items()):
            if deployments.get(name, {}).get("spec", {}).get("replicas", 1) == 0 or name not in deployments:
                self.stop(name)
        for name, deployment in deployments.items():
            if name not in self.pods and deployment["spec"].get("replicas", 1) > 0:
                self.pods[name] = self._start(name, deployment)

    def _start(self, name: str, deployment: dict) -> _Pod:
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                         if c.get("command") == ["meshserve"])
        port = free_port()
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env.update(POD_NAME=f"{name}-0", POD_NAMESPACE=self.namespace, POD_IP="127.0.0.1")
        args = [self._local(arg, env, port) for arg in container["args"]]
        args = _replace_value(args, "--metrics-port", "0")
        runtime = None
        if args[0] == "agent":
            runtime = start_runtime_process(
                self.workdir / f"{name}-runtime", "--storage-config-dir",
                str(self.storage_config_dir or self.workdir / "no-storage-config"))
            runtime_address = f"127.0.0.1:{runtime.port}"
            env.update(MESHSERVE_AGENT_RUNTIME_ADDRESS=runtime_address, MESHSERVE_AGENT_RUNTIME_DATA_ADDRESS=runtime_address,
                       MESHSERVE_AGENT_PORT=str(port), MESHSERVE_AGENT_METRICS_PORT="0",
                       MESHSERVE_AGENT_INSTANCE_ID=env["POD_NAME"], MESHSERVE_AGENT_ADVERTISE_ADDRESS=f"127.0.0.1:{port}")
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "mesh.cli", *args], stdout=log_file,
                                       stderr=subprocess.STDOUT, cwd=REPO,
                                       env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
        return _Pod(name, process, log_path, port, runtime)

    def _local(self, arg: str, env: dict[str, str], port: int) -> str:
        arg = arg.replace("$(POD_NAME)", env["POD_NAME"]).replace("$(POD_IP)", "127.0.0.1")
        if arg.startswith("127.0.0.1:"):
            return f"127.0.0.1:{port}"
        if arg.endswith("/etcd_connection"):
            return str(self.etcd_connection)
        if arg == "/storage-config":
            return str(self.storage_config_dir or self.workdir / "no-storage-config")
        if arg == "/models":
            return str(self.workdir / "models" / env["POD_NAME"])
        if arg.isdigit() and int(arg) in (8085, 8089):  # the container's own port
            return str(port)
        return arg

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        pod = self.pods.pop(name)
        if pod.process.poll() is None:
            pod.process.send_signal(sig)
            try:
                pod.process.wait(20)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait(10)
        if pod.runtime is not None:
            pod.runtime.stop()

    def close(self) -> None:
        for name in list(self.pods):
            self.stop(name)


def _replace_value(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == flag:
            out[i + 1] = value
    return out
