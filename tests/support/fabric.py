"""A whole local fabric of real processes for end-to-end tests: one private etcd, runtime
processes with their instance agents, controller processes serving the management API.

Everything is started on free loopback ports in a work directory and stopped by
`close()`; records are read straight from etcd with a synchronous client so tests can
sample the fabric while they drive it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mesh.etcd.keys import Keys
from mesh.domain.records import InstanceRecord, ModelRecord, RecordError, from_document, to_document
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from protos.tls import ClientTls, sync_channel
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port
from tests.support.runtime_process import RuntimeProcess, start_runtime_process, stop_process
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def loads_done(runtime: RuntimeProcess) -> float:
    """Successful loads so far, from one runtime's Prometheus metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(r'^modelmesh_loadmodel_milliseconds_count (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class MeshProcess:
    """A controller or router process: its gRPC port serves mmesh.ModelMesh (`.mesh`)."""

    process: subprocess.Popen
    port: int
    log_path: Path
    tls: ClientTls | None = None
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = sync_channel(f"127.0.0.1:{self.port}", tls=self.tls)
        self.mesh = mm_grpc.ModelMeshStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.channel.close()
        return stop_process(self.process, "controller", timeout, sig, self.log)


class Fabric:
    """etcd + runtimes + controllers of one fabric name, all real processes.

    `etcd_connection_file`: the processes read etcd from that etcd_connection JSON instead of
    `--etcd`; `tls`: the test's own calls to the processes go over TLS with it (the
    processes' TLS flags are the test's to give)."""

    def __init__(self, workdir: Path, *, lease_ttl_s: int = 3, etcd: EtcdServer | None = None,
                 etcd_connection_file: Path | None = None, tls: ClientTls | None = None) -> None:
        self.etcd_connection_file = etcd_connection_file
        self.tls = tls
        self.workdir = workdir
        self.lease_ttl_s = lease_ttl_s
        self.keys = Keys(fabric=f"e2e-{uuid.uuid4().hex[:8]}")
        self.etcd = etcd or EtcdServer(name="fabric")
        self._own_etcd = etcd is None
        self.runtimes: dict[str, RuntimeProcess] = {}
        self.controllers: list[MeshProcess] = []
        self.routers: list[MeshProcess] = []

    def start_etcd(self) -> None:
        if self._own_etcd:
            self.etcd.start()

    @property
    def fabric_flags(self) -> list[str]:
        etcd = (["--etcd-connection-file", str(self.etcd_connection_file)] if self.etcd_connection_file
                else ["--etcd", self.etcd.endpoint])
        return [*etcd, "--fabric", self.keys.fabric, "--lease-ttl-s", str(self.lease_ttl_s)]

    def add_runtime(self, instance_id: str, capacity: str = "64MiB", *extra: str) -> RuntimeProcess:
        runtime = start_runtime_process(self.workdir / instance_id, *self.fabric_flags, "--instance-id", instance_id,
                                        *extra, capacity=capacity, tls=self.tls)
        self.runtimes[instance_id] = runtime
        wait_until(lambda: self.instance(instance_id) is not None, 30, f"instance {instance_id} to register")
        return runtime

    def _spawn(self, command: str, *flags: str) -> MeshProcess:
        """`meshserve <command>` of this fabric on a free loopback port, logging to the workdir."""
        port = free_port()
        log_path = self.workdir / f"{command}-{port}.log"
        argv = [sys.executable, "-m", "mesh.cli", command, *self.fabric_flags, "--host", "127.0.0.1",
                "--port", str(port), "--metrics-port", "0", *flags]
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return MeshProcess(process, port, log_path, self.tls)

    def _wait_ready(self, started: MeshProcess, ready, what: str) -> MeshProcess:
        def check() -> bool:
            if started.process.poll() is not None:
                raise AssertionError(f"{what} exited with {started.process.returncode}:\n{started.log()}")
            return ready()

        wait_until(check, 60, f"the {what} to answer")
        return started

    def add_controller(self, *extra: str) -> MeshProcess:
        controller = self._spawn("controller", *extra)
        self.controllers.append(controller)

        def answers() -> bool:
            try:
                controller.mesh.getModelStatus(mm.GetStatusRequest(modelId="probe"), timeout=1)
            except grpc.RpcError as error:
                return error.code() != grpc.StatusCode.UNAVAILABLE
            return True

        return self._wait_ready(controller, answers, "controller")

    def add_router(self, *extra: str) -> MeshProcess:
        """A `meshserve router` process (V2 gRPC + mmesh.ModelMesh on one port, no REST)."""
        router = self._spawn("router", "--rest-port", "0", *extra)
        self.routers.append(router)
        inference = pb_grpc.GRPCInferenceServiceStub(router.channel)
        return self._wait_ready(router, lambda: inference.ServerReady(pb.ServerReadyRequest(), timeout=1).ready,
                                "router")

    def loads_done(self) -> float:
        """Successful model loads so far, summed over the runtimes' Prometheus metrics."""
        return sum(loads_done(runtime) for runtime in self.runtimes.values())

    # -- reading etcd -----------------------------------------------------------------------
    def _get_prefix(self, prefix: str) -> dict[str, dict]:
        """Every record under `prefix`, read through etcd's JSON gateway (one consistent range read)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        reply = self.etcd.gateway("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
        return {base64.b64decode(kv["key"]).decode()[len(prefix):]: json.loads(base64.b64decode(kv["value"]))
                for kv in reply.get("kvs", [])}

    def instances(self) -> dict[str, InstanceRecord]:
        return {name: from_document(InstanceRecord, doc) for name, doc in self._get_prefix(self.keys.instances).items()}

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self.instances().get(instance_id)

    def models(self) -> dict[str, ModelRecord]:
        found = {}
        for name, doc in self._get_prefix(self.keys.models).items():
            try:
                found[name] = from_document(ModelRecord, doc)
            except RecordError:
                continue
        return found

    def put_model(self, record: ModelRecord) -> None:
        """Write a model record straight into etcd: one registered before today's registration
        checks (or by another tool), which the fabric must still serve and show."""
        self.etcd.gateway("/v3/kv/put", {"key": _b64(self.keys.model(record.model_id)),
                                         "value": _b64(json.dumps(to_document(record)))})

    def leader(self) -> dict | None:
        """The controller leader's record (`{"id", "address"}`), None while no replica leads."""
        return self._get_prefix(self.keys.leader).get("")

    def holders(self, model_id: str) -> list[str]:
        return sorted(i for i, r in self.instances().items()
                      if model_id in r.copies and not r.copies[model_id].loading)

    def close(self) -> None:
        for controller in [*self.routers, *self.controllers]:
            if controller.process.poll() is None:
                controller.process.kill()
                controller.process.wait(10)
            controller.channel.close()
        for runtime in self.runtimes.values():
            if runtime.process.poll() is None:
                runtime.process.kill()
                runtime.process.wait(10)
        if self._own_etcd:
            self.etcd.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
