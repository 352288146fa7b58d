"""A whole fabric over TLS: etcd over TLS with a user and password (from the etcd_connection
JSON, as the model-serving-etcd secret mounts it), runtime, controller and router serving
gRPC (and the router REST) with mutual TLS required, certificates from a CA the test makes.

tritonclient (`ssl=True`) is the independent V2 client. What is checked: plaintext, a wrong
CA and a missing client certificate are refused; calls go through; a certificate rotated
during traffic fails no call and new connections see the new certificate; and no log of any
process holds the etcd password or a private key.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_mesh_pb2 as mm
from protos.tls import sync_channel
from tests.support.etcd_server import EtcdServer, EtcdServerTls
from tests.support.fabric import REPO, Fabric
from tests.support.models import add_onnx
from tests.support.ports import free_port
from tests.support.tls import Pki, make_pki, served_serial
from tests.support.waiting import wait_until

PASSWORD = "etcd-s3cret-Z9q"
MODEL = "tls-add"
X = np.ones((1, 4), dtype=np.float32)


def _tls_flags(pki: Pki) -> list[str]:
    return ["--tls-cert-file", str(pki.server.cert_file), "--tls-key-file", str(pki.server.key_file),
            "--tls-ca-file", str(pki.ca_file), "--tls-client-auth", "require"]


def _connection_file(folder: Path, etcd: EtcdServer, pki: Pki, password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "etcd_connection"
    path.write_text(json.dumps({"endpoints": f"https://{etcd.endpoint}", "userid": "meshserve", "password": password,
                                "certificate_file": str(pki.ca_file)}))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fabric(tmp_path_factory, pki) -> Iterator[Fabric]:
    workdir = tmp_path_factory.mktemp("tls-fabric")
    etcd = EtcdServer(name="tls-fabric", tls=EtcdServerTls(pki.server.cert_file, pki.server.key_file, pki.ca_file))
    etcd.start()
    etcd.enable_auth("meshserve", PASSWORD)
    built = Fabric(workdir, etcd=etcd, etcd_connection_file=_connection_file(workdir / "secret", etcd, pki, PASSWORD),
                   tls=pki.client_files().client())
    try:
        built.add_runtime("tls-0", "64MiB", *_tls_flags(pki))
        built.add_controller(*_tls_flags(pki))
        built.add_router("--rest-port", str(free_port()), *_tls_flags(pki))
        add_onnx(workdir / "store" / MODEL / "model.onnx")
        built.routers[0].mesh.registerModel(mm.RegisterModelRequest(
            modelId=MODEL, modelInfo=mm.ModelInfo(type="onnx", path=str(workdir / "store" / MODEL))), timeout=30)
        yield built
    finally:
        built.close()
        etcd.close()


def _rest_port(fabric: Fabric) -> int:
    args = fabric.routers[0].process.args  # the last --rest-port given wins, as argparse reads it
    return int(args[max(i for i, a in enumerate(args) if a == "--rest-port") + 1])


def _triton(fabric: Fabric, pki: Pki, *, with_cert: bool = True, ca: Path | None = None) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        f"127.0.0.1:{fabric.routers[0].port}", ssl=True, root_certificates=str(ca or pki.ca_file),
        private_key=str(pki.client.key_file) if with_cert else None,
        certificate_chain=str(pki.client.cert_file) if with_cert else None)


def _infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer(MODEL, [tensor], client_timeout=60).as_numpy("y")


def test_tritonclient_with_ssl_infers_through_the_router_and_rest_takes_https_with_a_client_certificate(fabric, pki):
    with _triton(fabric, pki) as client:
        assert _infer(client).tolist() == (X + 1).tolist()
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.client.cert_file), str(pki.client.key_file))
    with urllib.request.urlopen(f"https://127.0.0.1:{_rest_port(fabric)}/v2/health/ready", context=context,
                                timeout=10) as reply:
        assert reply.status == 200


@pytest.mark.parametrize("who", ["router", "runtime", "controller"])
def test_plaintext_a_wrong_ca_and_no_client_certificate_are_refused(fabric, pki, who):
    port = {"router": fabric.routers[0].port, "runtime": fabric.runtimes["tls-0"].port,
            "controller": fabric.controllers[0].port}[who]
    ready = pb.ServerReadyRequest()
    attempts = {"plaintext": sync_channel(f"127.0.0.1:{port}"),
                "wrong CA": sync_channel(f"127.0.0.1:{port}", tls=pki.client_files(ca_file=pki.other_ca_file).client()),
                "no client certificate": sync_channel(f"127.0.0.1:{port}", tls=pki.client_files(with_cert=False).client())}
    for what, channel in attempts.items():
        with channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(ready, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
    with sync_channel(f"127.0.0.1:{port}", tls=pki.client_files().client()) as allowed:  # the same call, allowed
        try:
            pb_grpc.GRPCInferenceServiceStub(allowed).ServerReady(ready, timeout=10)
        except grpc.RpcError as error:  # the controller serves no V2: refused by the service, not the handshake
            assert who == "controller" and error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rest_refuses_plaintext_and_clients_without_a_certificate(fabric, pki):
    port = _rest_port(fabric)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/health/ready", timeout=10,
                               context=ssl.create_default_context(cafile=str(pki.ca_file)))


def test_with_tritonclient_a_wrong_ca_or_no_client_certificate_fails_the_call(fabric, pki):
    for client in (_triton(fabric, pki, ca=pki.other_ca_file), _triton(fabric, pki, with_cert=False)):
        with client, pytest.raises(Exception, match="(?i)unavailable|handshake|failed to connect"):
            client.is_server_ready(client_timeout=5)


def test_a_certificate_rotated_during_traffic_fails_no_call_and_new_connections_get_it(fabric, pki):
    router_port, rest_port = fabric.routers[0].port, _rest_port(fabric)
    old = served_serial(router_port, pki)
    assert old == pki.server.serial
    calls, failures, stop = [0], [], threading.Event()

    def kept_connection() -> None:
        with _triton(fabric, pki) as client:  # one connection, made before the rotation and kept through it
            while not stop.is_set():
                try:
                    assert _infer(client).tolist() == (X + 1).tolist()
                    calls[0] += 1
                except Exception as error:  # noqa: BLE001 - every failure is the finding
                    failures.append(repr(error))

    def new_connections() -> None:
        while not stop.is_set():  # a handshake per call, some of them while the files are being replaced
            try:
                with _triton(fabric, pki) as client:
                    assert _infer(client).tolist() == (X + 1).tolist()
            except Exception as error:  # noqa: BLE001
                failures.append(repr(error))

    threads = [threading.Thread(target=kept_connection, name="tls-kept"),
               threading.Thread(target=new_connections, name="tls-new")]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: calls[0] >= 20 or failures, 60, "traffic before the rotation")
        fresh = pki.rotate_server()
        wait_until(lambda: served_serial(router_port, pki) == fresh.serial, 30, "the router to serve the new certificate")
        wait_until(lambda: served_serial(rest_port, pki) == fresh.serial, 30, "REST to serve the new certificate")
        wait_until(lambda: served_serial(fabric.runtimes["tls-0"].port, pki) == fresh.serial, 30,
                   "the runtime to serve the new certificate")
        after = calls[0]
        wait_until(lambda: calls[0] >= after + 20 or failures, 60, "traffic after the rotation")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    with _triton(fabric, pki) as client:  # a new client after the rotation
        assert _infer(client).tolist() == (X + 1).tolist()


def _secrets(pki: Pki) -> dict[str, str]:
    """The password and each private key's PEM body (any one of its lines would give it away)."""
    found = {"etcd password": PASSWORD}
    for name, path in (("server key", pki.server.key_file), ("client key", pki.client.key_file)):
        body = [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
        for i, line in enumerate(body):
            found[f"{name} line {i}"] = line
    return found


def test_no_log_status_or_metrics_hold_the_etcd_password_or_a_private_key_even_when_etcd_refuses_the_password(fabric, pki, tmp_path):
    wrong = "not-" + PASSWORD
    connection = _connection_file(tmp_path / "bad", fabric.etcd, pki, wrong)
    log_path = tmp_path / "refused-router.log"
    argv = [sys.executable, "-m", "mesh.cli", "router", "--etcd-connection-file", str(connection), "--host", "127.0.0.1",
            "--port", str(free_port()), "--rest-port", "0", "--metrics-port", "0", *_tls_flags(pki)]
    with open(log_path, "wb") as log_file:
        refused = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_until(lambda: refused.poll() is not None or "etcd" in log_path.read_text(errors="replace").lower(), 60,
                   "the router with a wrong password to say why it cannot read the fabric")
    finally:
        refused.kill()
        refused.wait(10)
    status = subprocess.run([sys.executable, "-m", "mesh.cli", "status", MODEL, "--router",
                             f"127.0.0.1:{fabric.routers[0].port}", "--tls-ca-file", str(pki.ca_file),
                             "--tls-cert-file", str(pki.client.cert_file), "--tls-key-file", str(pki.client.key_file)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert status.returncode == 0 and MODEL in status.stdout, status.stderr  # the CLI over mutual TLS
    metrics_url = f"http://127.0.0.1:{fabric.runtimes['tls-0'].metrics_port}/metrics"
    logs = {"status": status.stdout + status.stderr,
            "runtime metrics": urllib.request.urlopen(metrics_url, timeout=10).read().decode(),
            "refused router": log_path.read_text(errors="replace"),
            **{f"runtime {n}": r.log() for n, r in fabric.runtimes.items()},
            **{f"controller {i}": c.log() for i, c in enumerate(fabric.controllers)},
            **{f"router {i}": r.log() for i, r in enumerate(fabric.routers)}}
    assert re.search(r"(?i)auth|password|permission|etcd", logs["refused router"]), logs["refused router"]
    secrets = {**_secrets(pki), "wrong password": wrong}
    leaks = [(where, what) for where, text in logs.items() for what, secret in secrets.items() if secret in text]
    assert leaks == []
