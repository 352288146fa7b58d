"""The router in a whole fabric (issue #5): a real etcd, runtime processes with their
agents, a controller and a router process; tritonclient is the client.

`MESHSERVE_TEST_TRAFFIC_S` sets how long the random-traffic test runs (default 60 s, the
issue's minute); it is marked `slow`, so `make test-fast` (`-m "not slow"`) leaves it out.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from protos import model_mesh_pb2 as mm
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from runtimes.sizes import disk_size
from tests.support.fabric import Fabric
from tests.support.models import add_onnx
from tests.support.waiting import wait_until

MODELS = 50
PER_INSTANCE = 5  # three runtimes: room for fifteen of the fifty models
TRAFFIC_S = float(os.environ.get("MESHSERVE_TEST_TRAFFIC_S", "60"))


def model_dir(root: Path, model_id: str, offset: float) -> Path:
    # ~16 KiB of weights so capacity can be counted in models; y = x + offset tells the
    # models apart, so a call answered by the wrong model is caught.
    return add_onnx(root / model_id / "model.onnx", offset=offset, weights=4096).parent


def register(router, model_id: str, uri: str, key: str = "") -> None:
    info = mm.ModelInfo(type="onnx", path=uri, key=key)
    router.mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)


def infer(client: triton.InferenceServerClient, model_id: str, x: np.ndarray, timeout: float = 60) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model_id, [tensor], client_timeout=timeout).as_numpy("y")


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("routed")
    fabric = Fabric(workdir, lease_ttl_s=2)
    try:
        fabric.start_etcd()
        probe = model_dir(workdir / "probe", "probe", 0.0)
        # Each model is charged its tensors' bytes alone and predicted at its bytes on disk (a
        # few bytes more), so that room for five is five, whatever a model's fixed cost measures.
        size = max(constant_tensor_bytes(probe / "model.onnx"), disk_size(probe)) + 1
        for n in range(3):
            fabric.add_runtime(f"rt{n}", str(PER_INSTANCE * size + 1024), "--model-fixed-cost", "0", "--size-factor", "1.0")
        fabric.add_controller()
        router = fabric.add_router()
        for n in range(MODELS):
            register(router, f"m{n:02d}", str(model_dir(workdir / "store", f"m{n:02d}", float(n))))
        yield fabric
    finally:
        fabric.close()


@pytest.fixture
def client(fabric):
    with triton.InferenceServerClient(f"127.0.0.1:{fabric.routers[0].port}") as client:
        yield client


@pytest.mark.slow  # TRAFFIC_S of traffic (60 s by default)
def test_random_traffic_from_eight_callers_is_answered_correctly(fabric):
    address = f"127.0.0.1:{fabric.routers[0].port}"
    loads_before = fabric.loads_done()
    deadline = time.monotonic() + TRAFFIC_S
    answered = [0] * 8
    wrong: list[str] = []

    def caller(index: int) -> None:
        rng = random.Random(index)
        with triton.InferenceServerClient(address) as client:
            while time.monotonic() < deadline and len(wrong) < 10:
                n = rng.randrange(MODELS)
                x = np.array([[rng.random() for _ in range(4)]], dtype=np.float32)
                try:
                    y = infer(client, f"m{n:02d}", x)
                except InferenceServerException as error:
                    wrong.append(f"m{n:02d}: {error.status()} {error.message()}")
                    continue
                if not np.allclose(y, x + n):
                    wrong.append(f"m{n:02d}: {y} for {x}")
                answered[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TRAFFIC_S + 120)
    assert not wrong, wrong[:5]
    assert all(answered), answered
    # Fifty models through room for fifteen: the fabric loaded and evicted as it went.
    assert fabric.loads_done() - loads_before > 3 * PER_INSTANCE
    for record in fabric.instances().values():
        assert record.used_bytes + record.loading_bytes <= record.capacity_bytes


def test_sixteen_simultaneous_first_calls_load_once(fabric, tmp_path):
    register(fabric.routers[0], "cold", str(model_dir(tmp_path, "cold", 7.0)))
    loads_before = fabric.loads_done()
    address = f"127.0.0.1:{fabric.routers[0].port}"
    start = threading.Barrier(16)
    results: list[object] = []

    def first_call() -> None:
        with triton.InferenceServerClient(address) as client:
            x = np.ones((1, 4), dtype=np.float32)
            start.wait(30)
            try:
                results.append(infer(client, "cold", x).tolist())
            except InferenceServerException as error:
                results.append(error)

    threads = [threading.Thread(target=first_call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == [[[8.0, 8.0, 8.0, 8.0]]] * 16
    assert fabric.loads_done() - loads_before == 1


def test_unknown_model_is_not_found_and_a_bad_tensor_passes_the_runtimes_error(client):
    with pytest.raises(InferenceServerException) as unknown:
        infer(client, "no-such-model", np.ones((1, 4), dtype=np.float32))
    assert unknown.value.status() == "StatusCode.NOT_FOUND" and "no-such-model" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad:
        infer(client, "m01", np.ones((1, 5), dtype=np.float32))  # the model takes [-1, 4]
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "'x'" in bad.value.message()


class GatedModelServer:
    """An HTTP server holding one model file that answers only once `release()` is called:
    a storage backend slower than a call's deadline."""

    def __init__(self, model_file: Path) -> None:
        gate = self.gate = threading.Event()
        data = model_file.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                gate.wait(120)
                body, status = data, 200
                if self.headers.get("Range") == "bytes=0-0":
                    body, status = data[:1], 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes 0-0/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/model.onnx"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_load_slower_than_the_deadline_fails_the_call_but_serves_the_next(fabric, client, tmp_path):
    model_file = model_dir(tmp_path, "slow", 3.0) / "model.onnx"
    storage = GatedModelServer(model_file)
    try:
        # The runtime cannot see a remote model's size before fetching it: the key says it
        # (ModelMesh's disk_size_bytes), else it would reserve the 1 MiB default.
        register(fabric.routers[0], "slow", storage.url, json.dumps({"disk_size_bytes": model_file.stat().st_size}))
        loads_before = fabric.loads_done()
        with pytest.raises(InferenceServerException) as late:
            infer(client, "slow", np.ones((1, 4), dtype=np.float32), timeout=1.5)
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "slow" in late.value.message() and "not loaded" in late.value.message(), late.value.message()
        storage.gate.set()
        assert infer(client, "slow", np.ones((1, 4), dtype=np.float32)).tolist() == [[4.0] * 4]
        assert fabric.loads_done() - loads_before == 1, "the first load should have gone on, not restarted"
    finally:
        storage.close()


def test_sigkill_of_an_instance_serving_a_hot_model_fails_no_call(fabric, client, tmp_path):
    register(fabric.routers[0], "hot", str(model_dir(tmp_path, "hot", 5.0)))
    x = np.ones((1, 4), dtype=np.float32)
    assert infer(client, "hot", x).tolist() == [[6.0] * 4]
    first = fabric.holders("hot")[0]
    # A second copy, loaded through the instance's own SPI (its agent publishes it).
    second = next(i for i in fabric.runtimes if i != first)
    fabric.runtimes[second].load("hot", model_dir(tmp_path, "hot", 5.0), "onnx")
    wait_until(lambda: fabric.holders("hot") == sorted([first, second]), 30, "two copies of 'hot'")

    address = f"127.0.0.1:{fabric.routers[0].port}"
    stop = threading.Event()
    answered_after_kill = [0] * 4
    failures: list[str] = []
    killed = threading.Event()

    def traffic(index: int) -> None:
        with triton.InferenceServerClient(address) as caller:
            while not stop.is_set():
                try:
                    ok = infer(caller, "hot", x, timeout=30).tolist() == [[6.0] * 4]
                except InferenceServerException as error:
                    failures.append(f"{error.status()} {error.message()}")
                    continue
                if not ok:
                    failures.append("wrong answer")
                elif killed.is_set():
                    answered_after_kill[index] += 1

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        victim = fabric.runtimes[first]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        killed.set()
        wait_until(lambda: sum(answered_after_kill) >= 200, 60, "traffic to go on on the other copy")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # Calls in flight to the killed instance are retried on the other copy by the router.
    assert not failures, failures[:5]
    wait_until(lambda: first not in fabric.instances(), fabric.lease_ttl_s + 10, "the killed instance to leave")
