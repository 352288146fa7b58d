"""The fabric commands (`meshserve register/unregister/list/status/vmodel/infer/top`):
their pure parts, then the real command line as a subprocess against a real fabric (etcd,
two runtime processes, one controller process, whose port serves mmesh.ModelMesh and
meshserve.admin.MeshAdmin like a router's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mesh.cli.common import CliError, check_storage_uri
from mesh.cli.render import age, bar, size, top_frame
from mesh.cli.tensors import decode_outputs, encode_input, read_input
from protos import grpc_service_pb2 as pb
from protos import mesh_admin_pb2 as admin
from tests.support.fabric import REPO, Fabric
from tests.support.models import add_onnx
from tests.support.ports import free_port
from tests.support.waiting import wait_until

# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://bucket/models/m", "https://host/m.onnx", "http://h:8080/m",
                                 "pvc://claim/m", "file:///models/m", "/models/m",
                                 "https://acct.blob.core.windows.net/models/m"])
def test_storage_uris_the_puller_resolves_are_accepted(uri):
    assert check_storage_uri(f" {uri} ", None) == uri


@pytest.mark.parametrize("uri, storage_key, why", [
    ("gs://bucket/m", None, "unsupported storage URI scheme 'gs://'"),
    ("az://c/m", None, "unsupported storage URI scheme 'az://'"),
    ("s3:///m", None, "names no bucket"),
    ("s3:bucket/m", None, "a scheme needs '://'"),
    ("models/m", None, "relative path 'models/m'"),
    ("", None, "--uri is empty"),
])
def test_storage_uris_the_puller_cannot_resolve_are_refused(uri, storage_key, why):
    with pytest.raises(CliError, match=re.escape(why)):
        check_storage_uri(uri, storage_key)


def test_a_relative_path_is_fine_inside_a_storage_config_entry():
    assert check_storage_uri("models/m", "minio") == "models/m"


def test_inputs_round_trip_through_v2_raw_contents(tmp_path):
    array = read_input("[[1, 2, 3, 4]]", None)
    assert array.dtype == np.float32 and array.shape == (1, 4)
    assert read_input("[1, 2]", "INT64").dtype == np.int64
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.int32).reshape(2, 3))
    from_file = read_input(str(tmp_path / "x.npy"), None)
    assert from_file.dtype == np.int32 and from_file.shape == (2, 3)
    for array in (from_file, read_input('["a", "bé"]', "BYTES"), read_input("[1.5, 2]", "BF16")):
        request = pb.ModelInferRequest()
        encode_input(request, "in", array)
        # A response carrying the same tensor decodes to the same values.
        response = pb.ModelInferResponse(raw_output_contents=request.raw_input_contents)
        response.outputs.add(name="in", datatype=request.inputs[0].datatype, shape=request.inputs[0].shape)
        datatype, decoded = decode_outputs(response)["in"]
        assert datatype == request.inputs[0].datatype and decoded.tolist() == array.tolist()
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="y", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    assert decode_outputs(typed)["y"][1].tolist() == [1.0, 2.0]
    for bad, why in (("[[1, 2], [3]]", "not a rectangular array"), ("{nope", "neither a .npy file nor JSON"),
                     (str(tmp_path / "missing.npy"), "does not exist")):
        with pytest.raises(CliError, match=why):
            read_input(bad, None)


def test_sizes_ages_and_bars():
    assert (size(0), size(512), size(16 * 1024), size(3 * 2**30 // 2)) == ("0 B", "512 B", "16.0 KiB", "1.5 GiB")
    assert (age(0), age(45), age(725), age(3 * 3600 + 300), age(2 * 86400 + 4 * 3600)) == (
        "-", "45s", "12m05s", "3h05m", "2d04h")
    assert bar(50, 0, 100, 10) == "[#####.....]"
    assert bar(50, 1, 100, 10) == "[#####+....]"  # a load in progress always shows
    assert bar(1, 0, 1000, 10) == "[#.........]"  # and so does memory in use
    assert bar(100, 50, 100, 10) == "[#########!]"  # over capacity is flagged
    assert bar(0, 0, 0, 4) == "[????]"


def test_top_frame_shows_every_instance_and_the_fabric_figures():
    status = admin.FabricStatus(
        instances=[admin.InstanceStatus(id="rt0", address="h:1", capacity_bytes=100, used_bytes=50, models_total=3,
                                        loads_in_progress=1, request_rate_per_min=7.5, lru_age_seconds=42),
                   admin.InstanceStatus(id="rt1", capacity_bytes=100, shutting_down=True)],
        global_lru_age_seconds=42, models_registered=5, models_loaded=3, models_failed=1, vmodels=2,
        capacity_bytes=200, used_bytes=50, in_sync=False)
    frame = top_frame(status, "127.0.0.1:8033", bar_width=10)
    assert "global LRU age 42s" in frame
    assert "models registered 5  loaded 3  loading 0  failed 1" in frame and "vmodels 2" in frame
    rt0 = next(line for line in frame.splitlines() if line.startswith("rt0"))
    assert "[#####.....]" in rt0 and "7.5" in rt0 and "42s" in rt0
    assert "rt1 (draining)" in frame and "may be stale" in frame


# -- the command line against a real fabric ---------------------------------------------------


def meshserve(*args: str, router: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """`python -m mesh.cli ARGS [--router ROUTER]`, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    command = [sys.executable, "-m", "mesh.cli", *args, *(["--router", router] if router else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    """The failure was reported as exactly one line on stderr, with no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meshserve {command}: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    fabric = Fabric(tmp_path_factory.mktemp("cli"))
    try:
        fabric.start_etcd()
        fabric.add_runtime("rt0")
        fabric.add_runtime("rt1")
        fabric.add_controller("--no-scaling")
        yield fabric
    finally:
        fabric.close()


@pytest.fixture(scope="module")
def router(fabric) -> str:
    return f"127.0.0.1:{fabric.controllers[0].port}"


def model_dir(fabric: Fabric, model_id: str) -> Path:
    return add_onnx(fabric.workdir / "store" / model_id / "model.onnx").parent


def register_loaded(fabric: Fabric, router: str, model_id: str) -> subprocess.CompletedProcess:
    result = meshserve("register", model_id, "--type", "onnx", "--uri", str(model_dir(fabric, model_id)),
                       "--load-now", "--timeout", "60", router=router)
    assert result.returncode == 0, result
    return result


def test_register_load_now_then_status_list_and_top(fabric, router):
    registered = register_loaded(fabric, router, "m1")
    assert "state:   LOADED" in registered.stdout
    holder = fabric.holders("m1")[0]

    status = meshserve("status", "m1", router=router)
    assert status.returncode == 0, status
    assert "state:   LOADED" in status.stdout
    copy_line = next(line for line in status.stdout.splitlines() if line.strip().startswith(holder))
    assert fabric.runtimes[holder].address in copy_line and "LOADED" in copy_line

    def listed() -> str | None:
        result = meshserve("list", router=router)
        assert result.returncode == 0, result
        row = next((line for line in result.stdout.splitlines() if line.startswith("m1 ")), None)
        return row if row and "LOADED" in row and holder in row else None
    row = wait_until(listed, 30, "list to show m1 loaded")  # the view follows etcd by a watch
    assert "onnx" in row.split()

    def top_once() -> str | None:
        result = meshserve("top", "--once", router=router)
        assert result.returncode == 0, result
        return result.stdout if "loaded 1" in result.stdout or "loaded 2" in result.stdout else None
    frame = wait_until(top_once, 30, "top to count m1 as loaded")
    lines = frame.splitlines()
    for instance_id in ("rt0", "rt1"):
        line = next(line for line in lines if line.startswith(instance_id))
        assert "[" in line and "]" in line and "%" in line and "MiB" in line
    assert "global LRU age" in frame and "models registered" in frame
    holder_line = next(line for line in lines if line.startswith(holder))
    assert "#" in holder_line.split("[", 1)[1].split("]", 1)[0]  # its bar shows the memory m1 uses


def test_infer_prints_the_models_outputs(fabric, router, tmp_path):
    register_loaded(fabric, router, "m2")
    # The controller serves no V2 inference; a runtime holding the model does.
    runtime = fabric.runtimes[fabric.holders("m2")[0]].address
    result = meshserve("infer", "m2", "--input", "[[1, 2, 3, 4]]", "--input-name", "x", "--datatype", "FP32",
                       router=runtime)
    assert result.returncode == 0, result
    outputs = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    assert outputs["y"] == "y FP32 [1, 4]: [[2.0, 3.0, 4.0, 5.0]]"  # add_onnx: y = x + 1
    assert outputs["z"] == "z FP32 [1, 4]: [[2.0, 4.0, 6.0, 8.0]]"  # and z = x * 2
    # A .npy input, the input's name from the model's metadata, JSON output, one output asked for.
    np.save(tmp_path / "x.npy", np.array([[0.5, 1.5, 2.5, 3.5], [0, 0, 0, 0]], dtype=np.float32))
    result = meshserve("infer", "m2", "--input", str(tmp_path / "x.npy"), "--output", "y", "--json", router=runtime)
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == {"y": {"datatype": "FP32", "shape": [2, 4],
                                               "data": [[1.5, 2.5, 3.5, 4.5], [1.0, 1.0, 1.0, 1.0]]}}


def test_a_model_that_cannot_be_fetched_shows_loading_failed_with_the_reason(fabric, router):
    missing = fabric.workdir / "store" / "no-such-model"
    result = meshserve("register", "broken", "--type", "onnx", "--uri", f"file://{missing}", "--load-now",
                       "--timeout", "60", router=router)
    assert "LOADING_FAILED" in result.stdout
    assert "registered but not loaded (LOADING_FAILED)" in one_line_error(result, "register")
    status = meshserve("status", "broken", router=router)
    assert status.returncode == 0, status
    assert "state:   LOADING_FAILED" in status.stdout
    failure = next(line for line in status.stdout.splitlines() if line.startswith("last failure:"))
    assert "no-such-model" in failure  # the reason names what could not be found


def test_an_unsupported_scheme_is_refused_before_anything_is_registered(fabric, router):
    result = meshserve("register", "gcs-model", "--type", "onnx", "--uri", "gs://bucket/model", router=router)
    assert "unsupported storage URI scheme 'gs://'" in one_line_error(result, "register")
    assert result.returncode == 1
    assert "gcs-model" not in fabric.models()


def test_unknown_models_and_vmodels_exit_non_zero_with_one_line(fabric, router):
    assert "model 'ghost' is not registered" in one_line_error(meshserve("status", "ghost", router=router), "status")
    assert "'ghost' is not registered" in one_line_error(meshserve("unregister", "ghost", router=router), "unregister")
    assert "vmodel 'ghost' does not exist" in one_line_error(
        meshserve("vmodel", "status", "ghost", router=router), "vmodel")
    runtime = fabric.runtimes["rt0"].address
    message = one_line_error(meshserve("infer", "ghost", "--input", "[[1, 2, 3, 4]]", router=runtime), "infer")
    assert "ghost" in message
    # The controller's port has no V2 inference: the message says the address is the wrong kind of server.
    message = one_line_error(meshserve("infer", "m", "--input", "[1]", router=router), "infer")
    assert "does not serve" in message and "inference.GRPCInferenceService" in message


def test_an_unreachable_router_exits_non_zero_with_one_line():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    for command in (["list"], ["status", "m"], ["top", "--once"], ["register", "m", "--type", "onnx", "--uri", "/m"]):
        result = meshserve(*command, router=address)
        assert result.returncode == 1
        assert f"cannot reach the router at {address}" in one_line_error(result, command[0])


def test_vmodel_set_status_delete_and_unregister(fabric, router):
    result = meshserve("vmodel", "set", "v1", "m3", "--type", "onnx", "--uri", str(model_dir(fabric, "m3")),
                       "--wait", "--timeout", "60", router=router)
    assert result.returncode == 0, result
    status = meshserve("vmodel", "status", "v1", router=router)
    assert status.returncode == 0, status
    assert "state:   DEFINED" in status.stdout and "active:  m3 (LOADED)" in status.stdout
    deleted = meshserve("vmodel", "delete", "v1", router=router)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted
    assert meshserve("vmodel", "status", "v1", router=router).returncode == 1
    assert meshserve("vmodel", "delete", "v1", "--ignore-missing", router=router).returncode == 0
    gone = meshserve("unregister", "m3", router=router)
    assert gone.returncode == 0, gone
    assert "not registered" in one_line_error(meshserve("status", "m3", router=router), "status")
