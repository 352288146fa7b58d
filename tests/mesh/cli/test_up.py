"""`meshserve up` end to end: a real subprocess starting etcd, a controller, two runtimes and
the router; the example models answer through the router; Ctrl-C leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import socket
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh.cli.examples import iris_dataset
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support.ports import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]
ONNX_EXAMPLES = ("iris", "add")
TORCH_EXAMPLE = "mnist-mlp"  # built only where torch is installed (mesh.cli.examples)


@dataclass
class UpProcess:
    process: subprocess.Popen
    workdir: Path
    output: Path
    port: int
    rest_port: int

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        document = json.loads((self.workdir / "pids.json").read_text())
        return {entry["name"]: entry["pid"] for entry in document["processes"]}


def start_up(workdir: Path, *extra: str) -> UpProcess:
    port, rest_port = free_port(), free_port()
    output = workdir.parent / f"{workdir.name}-up-{port}.out"
    command = [sys.executable, "-m", "mesh.cli", "up", "--workdir", str(workdir), "--port", str(port),
               "--rest-port", str(rest_port), "--metrics-port", "0", "--start-timeout-s", "90", *extra]
    with open(output, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    up = UpProcess(process, workdir, output, port, rest_port)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"meshserve up exited with {process.returncode}:\n{up.text()}")
        return "is ready" in up.text()

    try:
        wait_until(ready, 100, "meshserve up to report the fabric ready")
    except BaseException:
        stop(up, signal.SIGKILL)
        raise
    return up


def stop(up: UpProcess, sig: int = signal.SIGINT, timeout: float = 60) -> int:
    if up.process.poll() is None:
        up.process.send_signal(sig)
        try:
            up.process.wait(timeout)
        except subprocess.TimeoutExpired:
            up.process.kill()
            up.process.wait(10)
            raise AssertionError(f"meshserve up did not stop within {timeout}s:\n{up.text()}")
    return up.process.returncode


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for whoever inherited it to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    running = start_up(tmp_path_factory.mktemp("up") / "workdir", "--runtimes", "2", "--capacity", "256MiB")
    try:
        yield running
    finally:
        stop(running, signal.SIGKILL)


def _status(up: UpProcess, name: str) -> mm.ModelStatusInfo:
    with grpc.insecure_channel(f"127.0.0.1:{up.port}") as channel:
        return mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId=name), timeout=10)


def _cli(up: UpProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args, "--router", f"127.0.0.1:{up.port}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def _listed_loaded(listing: str, name: str) -> bool:
    return re.search(rf"^{re.escape(name)}\s.*LOADED", listing, re.MULTILINE) is not None


def test_examples_are_registered_and_loaded(up):
    for name in ONNX_EXAMPLES:
        status = _status(up, name)
        assert status.status == mm.ModelStatusInfo.LOADED, (name, status)
    assert set(up.pids()) == {"etcd", "controller", "runtime-0", "runtime-1", "router"}
    text = up.text()
    assert f"127.0.0.1:{up.port}" in text and "/v2/models/iris/infer" in text and "meshserve infer iris" in text


def test_list_and_status_show_the_examples(up):
    listing = _cli(up, "list")
    assert listing.returncode == 0, listing.stderr
    for name in ONNX_EXAMPLES:
        assert _listed_loaded(listing.stdout, name), listing.stdout
    status = _cli(up, "status", "iris")
    assert status.returncode == 0 and "LOADED" in status.stdout and "runtime-" in status.stdout, status.stdout
    unknown = _cli(up, "status", "no-such-model")
    assert unknown.returncode != 0 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr


def test_the_torchscript_example_is_loaded_and_listed(up):
    # `up` builds mnist-mlp only where torch is installed; its interpreter is this one.
    pytest.importorskip("torch")
    status = _status(up, TORCH_EXAMPLE)
    assert status.status == mm.ModelStatusInfo.LOADED, status
    listing = _cli(up, "list")
    assert listing.returncode == 0 and _listed_loaded(listing.stdout, TORCH_EXAMPLE), listing.stdout


def _iris_reference(folder: Path, features: np.ndarray) -> np.ndarray:
    """Probabilities computed in numpy from the weights inside the built ONNX file."""
    import onnx
    from onnx import numpy_helper

    params = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
    logits = ((features - params["mean"]) / params["std"]) @ params["weights"] + params["bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_tritonclient_infers_the_onnx_examples(up):
    client = triton.InferenceServerClient(f"127.0.0.1:{up.port}")
    try:
        # iris: rows of every species from the same stand-in data the model was trained on
        features, labels = iris_dataset()
        rows = np.concatenate([features[i * 50:i * 50 + 5] for i in range(3)])
        tensor = triton.InferInput("features", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer("iris", [tensor])
        probabilities, label = result.as_numpy("probabilities"), result.as_numpy("label")
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        reference = _iris_reference(up.workdir / "models" / "iris", rows)
        np.testing.assert_allclose(probabilities, reference, rtol=1e-4, atol=1e-6)
        assert (label == reference.argmax(axis=1)).all()
        assert (label == np.repeat([0, 1, 2], 5)).mean() >= 0.8  # it is a working classifier

        # add: y = x + 1
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        tensor = triton.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("add", [tensor]).as_numpy("y"), x + 1)
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_tritonclient_infers_the_torchscript_example(up):
    torch = pytest.importorskip("torch")
    client = triton.InferenceServerClient(f"127.0.0.1:{up.port}")
    try:
        # mnist-mlp: the TorchScript module from the workdir, run by torch here
        images = np.random.default_rng(7).random((3, 784), dtype=np.float32)
        tensor = triton.InferInput("input", [3, 784], "FP32")
        tensor.set_data_from_numpy(images)
        logits = client.infer(TORCH_EXAMPLE, [tensor]).as_numpy("logits")
        module = torch.jit.load(str(up.workdir / "models" / TORCH_EXAMPLE / "model.pt"))
        with torch.inference_mode():
            expected = module(torch.from_numpy(images)).numpy()
        assert logits.shape == (3, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    finally:
        client.close()


def test_rest_infer_on_iris(up):
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                                   "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{up.rest_port}/v2/models/iris/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["label"]["data"] == [0]  # a setosa
    assert abs(sum(outputs["probabilities"]["data"]) - 1.0) < 1e-5


def test_the_banner_names_the_dashboard_and_it_shows_the_examples(up):
    [url] = re.findall(r"^  dashboard +(http://\S+/dashboard)\b", up.text(), re.MULTILINE)
    assert url == f"http://127.0.0.1:{up.rest_port}/dashboard"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200 and "dashboard.js" in response.read().decode()
    with urllib.request.urlopen(url + "/api/snapshot", timeout=30) as response:
        document = json.loads(response.read())
    assert len(document["instances"]) == 2
    assert set(ONNX_EXAMPLES) <= {m["id"] for m in document["models"]}


def _try_it_lines(banner: str) -> list[str]:
    block = banner.split("Try it:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_try_it_lines_work_as_printed_from_the_repository_root(up):
    """Each line of the banner's "Try it" block, pasted into a shell in the repository root with
    no venv activated (this Python's bin folder is not on PATH), works."""
    _check_try_it_lines(up)


def _check_try_it_lines(up: UpProcess) -> None:
    bin_dir = Path(os.path.realpath(Path(os.path.abspath(sys.executable)).parent))
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and os.path.realpath(p) != str(bin_dir))
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"} | {"PATH": path}
    python_line, curl_line, cli_line = _try_it_lines(up.text())

    shown = shlex.split(python_line)[0]
    if bin_dir.is_relative_to(REPO):  # the repository's .venv: a path relative to the root
        assert shown == os.path.join(os.path.relpath(bin_dir, REPO), Path(sys.executable).name), python_line
    else:
        assert shown == os.path.join(bin_dir, Path(sys.executable).name), python_line
    assert shlex.split(cli_line)[0] == os.path.join(os.path.dirname(shown), "meshserve"), cli_line

    def run(line: str) -> str:
        result = subprocess.run(line, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
        return result.stdout

    printed = run(python_line)  # numpy's print of a (1, 3) array
    probabilities = [float(v) for v in re.findall(r"\d+(?:\.\d*)?(?:e[-+]?\d+)?", printed)]
    assert len(probabilities) == 3 and max(probabilities) == probabilities[0], printed  # a setosa
    listing = run(cli_line)
    assert _listed_loaded(listing, "iris"), listing
    if shutil.which("curl", path=path):
        outputs = {o["name"]: o for o in json.loads(run(curl_line))["outputs"]}
        assert outputs["label"]["data"] == [0]


def test_second_up_in_the_same_workdir_is_refused(up):
    result = subprocess.run([sys.executable, "-m", "mesh.cli", "up", "--workdir", str(up.workdir),
                             "--port", str(free_port()), "--rest-port", "0", "--metrics-port", "0"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "another `meshserve up`" in result.stderr, result.stderr
    assert (up.workdir / "pids.json").exists()  # the refused one left the running one's files alone


def test_sigint_stops_every_process(up):
    # Last in this module: it ends the shared fabric.
    pids = up.pids()
    assert all(not gone(pid) for pid in pids.values())
    assert stop(up, signal.SIGINT) == 0, up.text()
    left = {name: pid for name, pid in pids.items() if not gone(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert "nothing left running" in up.text()
    assert not (up.workdir / "pids.json").exists()


def test_restart_in_the_same_workdir_after_a_crash(tmp_path):
    workdir = tmp_path / "workdir"
    first = start_up(workdir, "--runtimes", "1", "--no-examples")
    pids = first.pids()
    first.process.kill()  # a crash: no orderly stop; the children must die with it
    first.process.wait(10)
    wait_until(lambda: all(gone(pid) for pid in pids.values()), 30, "the children of a killed `up` to die")
    assert (workdir / "pids.json").exists() and (workdir / "up.lock").exists()  # stale files left behind

    second = start_up(workdir, "--runtimes", "1", "--no-examples")
    try:
        assert set(second.pids()) == {"etcd", "controller", "runtime-0", "router"}
    finally:
        assert stop(second) == 0, second.text()


def test_taken_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mesh.cli", "up", "--workdir", str(tmp_path / "w"),
                                 "--port", str(port), "--rest-port", "0", "--metrics-port", "0"],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"port {port}" in result.stderr and "taken" in result.stderr and "--port" in result.stderr
    assert not (tmp_path / "w" / "pids.json").exists()  # nothing was started


@pytest.mark.slow  # a whole `up` of its own, the examples built: over a minute on a busy machine
def test_up_with_tls_serves_only_tls_and_its_try_it_lines_work(tmp_path):
    """`--tls`: a throwaway CA; the router refuses plaintext, and the printed lines (tritonclient
    with ssl=True and the client certificate, curl, `meshserve list --tls-*`) work as printed."""
    tls_up = start_up(tmp_path / "workdir", "--tls", "--runtimes", "1", "--capacity", "256MiB")
    try:
        assert "(TLS, mutual TLS required)" in tls_up.text()
        with grpc.insecure_channel(f"127.0.0.1:{tls_up.port}") as plain, pytest.raises(grpc.RpcError) as refused:
            mm_grpc.ModelMeshStub(plain).getModelStatus(mm.GetStatusRequest(modelId="iris"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (tls_up.workdir / "tls" / "ca.crt").is_file()
        _check_try_it_lines(tls_up)
    finally:
        assert stop(tls_up) == 0, tls_up.text()
