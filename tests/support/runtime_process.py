"""A real `meshserve runtime` process on loopback, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from protos.tls import ClientTls, sync_channel
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def stop_process(process: subprocess.Popen, what: str, timeout: float, sig: int = signal.SIGTERM,
                 log: Callable[[], str] | None = None) -> int:
    """Send `sig` and wait for the exit status; SIGKILL and AssertionError (with the log's
    tail) if it does not stop within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            tail = f":\n{log()[-3000:]}" if log is not None else ""
            raise AssertionError(f"{what} did not stop on {signal.Signals(sig).name} within {timeout}s{tail}") from None
    return process.returncode


@dataclass
class RuntimeProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    tls: ClientTls | None = None  # the test's calls to it go over TLS with this
    _channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self._channel = sync_channel(f"127.0.0.1:{self.port}", tls=self.tls)
        self.spi = rt_grpc.ModelRuntimeStub(self._channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self._channel)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def load(self, model_id: str, path: Path | str, model_type: str = "", key: str = "") -> rt.LoadModelResponse:
        return self.spi.loadModel(rt.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path), modelKey=key), timeout=60)

    def unload(self, model_id: str) -> None:
        self.spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=60)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS for the runtime process")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        self._channel.close()
        return stop_process(self.process, "runtime", timeout)


def start_runtime_process(workdir: Path, *extra: str, capacity: str = "1GiB", env: dict | None = None,
                          tls: ClientTls | None = None) -> RuntimeProcess:
    """Start `meshserve runtime` and wait until it answers ServerReady."""
    port, metrics_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"runtime-{port}.log"
    command = [sys.executable, "-m", "mesh.cli", "runtime", "--host", "127.0.0.1", "--port", str(port),
               "--metrics-port", str(metrics_port), "--capacity", capacity, "--models-dir", str(workdir / "cache"),
               *extra]
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=process_env,
                                   cwd=Path(__file__).resolve().parents[2])
    runtime = RuntimeProcess(process, port, metrics_port, log_path, tls)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"runtime exited with {process.returncode}:\n{runtime.log()}")
        return runtime.inference.ServerReady(pb.ServerReadyRequest(), timeout=1).ready

    try:
        wait_until(ready, 60, "the runtime to answer ServerReady")
    except BaseException:
        runtime.stop()
        raise
    return runtime
