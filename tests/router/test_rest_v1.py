"""KServe V1 REST (issue #16) through a whole fabric of real processes: a private etcd, a
runtime process joined by its instance agent, and a `meshserve router` process serving
REST; the models are registered through the router's mmesh.ModelMesh API and load on
their first call (the router's real cache miss). Calls are plain HTTP (urllib).

V1 answers are compared with V2 REST inference of the same model in the same fabric.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

from mesh.domain.records import ModelRecord
from protos import grpc_service_pb2 as pb
from protos import model_mesh_pb2 as mm
from router.rest_codec import BadTensor
from router.rest_v1 import SignatureCache
from router.rest_v1_codec import Signature, TensorSpec, predict_request, predictions_json
from tests.support.fabric import Fabric
from tests.support.models import add_onnx, identity_onnx
from tests.support.ports import free_port
from tests.support.waiting import wait_until



def _runtime_serves(model_type: str) -> bool:
    """Whether this tree's runtime knows the model type (the sklearn backend is issue #14's)."""
    from runtimes.errors import InvalidInput
    from runtimes.model_type import resolve_model_type

    try:
        resolve_model_type(model_type, {})
    except InvalidInput:
        return False
    return True


HAS_SKLEARN_BACKEND = _runtime_serves("sklearn")


def pair_onnx(path: Path) -> Path:
    """Two inputs a, b (FP32 [-1, 2]); outputs `difference` = a - b first, then `predict` = a + b:
    V1 must answer with `predict`, not the first output."""
    graph = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["difference"]), helper.make_node("Add", ["a", "b"], ["predict"])],
        "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("difference", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("predict", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the runtime's onnxruntime reads
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class Http:
    """JSON over HTTP to the router's REST port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: bytes | dict | None = None, timeout: float = 90) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def register(router, model_id: str, path: Path, model_type: str = "onnx") -> None:
    info = mm.ModelInfo(type=model_type, path=str(path))
    router.mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rest-v1")
    fabric = Fabric(workdir)
    try:
        fabric.start_etcd()
        fabric.add_runtime("rt0", "256MiB")
        rest_port = free_port()
        router = fabric.add_router("--rest-port", str(rest_port))
        store = workdir / "store"
        register(router, "add", add_onnx(store / "add" / "model.onnx").parent)
        register(router, "first", add_onnx(store / "first" / "model.onnx", offset=10.0).parent)
        register(router, "cold", add_onnx(store / "cold" / "model.onnx").parent)
        register(router, "pair", pair_onnx(store / "pair" / "model.onnx").parent)
        register(router, "words", identity_onnx(store / "words" / "model.onnx", "BYTES").parent)
        router.mesh.setVModel(mm.SetVModelRequest(vModelId="add-latest", targetModelId="add"), timeout=30)
        fabric.http = Http(rest_port)
        fabric.store = store
        yield fabric
    finally:
        fabric.close()


@pytest.fixture
def http(fabric) -> Http:
    return fabric.http


def test_a_registered_model_not_loaded_yet_loads_on_its_first_predict(fabric, http):
    assert fabric.holders("first") == []
    status, body = http.call("GET", "/v1/models/first")
    assert status == 503 and body["ready"] is False and "not ready" in body["error"]

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    status, body = http.call("POST", "/v1/models/first:predict", {"instances": x.tolist()})
    assert status == 200, body
    assert body == {"predictions": (x + 10).tolist()}  # y, the first output, one row per instance
    assert fabric.holders("first") == ["rt0"]
    assert http.call("GET", "/v1/models/first") == (200, {"name": "first", "ready": True})


def test_predictions_are_what_v2_infers(http):
    x = [[0.5, -1.25, 3.0, 1e6]]
    status, v1 = http.call("POST", "/v1/models/add:predict", {"instances": x})
    assert status == 200, v1
    v2_request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]}
    status, v2 = http.call("POST", "/v2/models/add/infer", v2_request)
    assert status == 200, v2
    y = next(o for o in v2["outputs"] if o["name"] == "y")
    assert np.array(v1["predictions"]).ravel().tolist() == y["data"]


def test_inputs_is_taken_as_kserve_does(http):
    x = [[1.0, 2.0, 3.0, 4.0]]
    assert http.call("POST", "/v1/models/add:predict", {"inputs": x}) == (200, {"predictions": [[2.0, 3.0, 4.0, 5.0]]})
    # KServe reads `inputs` first when both are there.
    status, body = http.call("POST", "/v1/models/add:predict", {"inputs": x, "instances": [[9.0, 9.0, 9.0, 9.0]]})
    assert (status, body) == (200, {"predictions": [[2.0, 3.0, 4.0, 5.0]]})


def test_a_vmodel_predicts_as_its_active_model(http):
    status, body = http.call("POST", "/v1/models/add-latest:predict", {"instances": [[0.0, 0.0, 0.0, 1.0]]})
    assert (status, body) == (200, {"predictions": [[1.0, 1.0, 1.0, 2.0]]})


def test_list_models_names_registered_models_and_vmodels(http):
    status, body = http.call("GET", "/v1/models")
    assert status == 200 and body["models"] == sorted(body["models"])
    assert {"add", "add-latest", "cold", "first", "pair", "words"} <= set(body["models"])


def test_unknown_model_is_404_in_v1_shape(http):
    status, body = http.call("POST", "/v1/models/nope:predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]})
    assert status == 404 and "nope" in body["error"] and set(body) == {"error"}
    status, body = http.call("GET", "/v1/models/nope")
    assert status == 404 and "nope" in body["error"]


def test_explain_is_501(http):
    status, body = http.call("POST", "/v1/models/add:explain", {"instances": [[1.0, 2.0, 3.0, 4.0]]})
    assert status == 501 and "explain" in body["error"]


@pytest.mark.parametrize("payload, fragment", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[[1, 2, 3, 4]]", "JSON object"),
    (b"{}", "no 'instances'"),
    (b'{"instances": []}', "non-empty list"),
    (b'{"instances": {"x": [1, 2, 3, 4]}}', "non-empty list"),
    (b'{"inputs": 3}', "'inputs' must be a non-empty list"),
])
def test_malformed_bodies_are_400_before_any_load(fabric, http, payload, fragment):
    status, body = http.call("POST", "/v1/models/cold:predict", payload)
    assert status == 400 and fragment in body["error"] and set(body) == {"error"}
    assert fabric.holders("cold") == []  # refused before the model was asked for


@pytest.mark.parametrize("instances, fragment", [
    ([[1, 2, 3, 4], [1, 2]], "ragged instances: instance 1 has 2 values where instance 0 has 4"),
    ([[1, 2, 3, 4], 5], "instance 1 has the single value 5"),
    ([[1, 2, 3]], "takes shape [-1, 4] (each instance [4], -1: any size); the instances make [1, 3]"),
    ([1, 2, 3, 4], "the instances make [4]"),
    ([[[1, 2, 3, 4]]], "the instances make [1, 1, 4]"),
    ([["a", "b", "c", "d"]], "FP32 data must hold numbers"),
    ([[1, 2, 3, True]], "FP32 data must hold numbers"),
    ([{"q": [1, 2, 3, 4]}], "one input 'x'"),
])
def test_instances_that_do_not_fit_the_model_are_400(http, instances, fragment):
    status, body = http.call("POST", "/v1/models/add:predict", {"instances": instances})
    assert status == 400 and fragment in body["error"], body


def test_multi_input_model_takes_objects_and_answers_its_predict_output(http):
    instances = [{"a": [1.0, 2.0], "b": [10.0, 20.0]}, {"a": [3.0, 4.0], "b": [0.5, 0.5]}]
    status, body = http.call("POST", "/v1/models/pair:predict", {"instances": instances})
    assert (status, body) == (200, {"predictions": [[11.0, 22.0], [3.5, 4.5]]})


@pytest.mark.parametrize("instances, fragment", [
    ([[1.0, 2.0]], "has 2 inputs (a, b): give each instance as an object"),
    ([{"a": [1.0, 2.0]}], "instance 0: missing 'b'"),
    ([{"a": [1.0, 2.0], "b": [1.0, 2.0], "c": [0.0]}], "instance 0: no input named 'c'"),
    ([{"a": [1.0, 2.0], "b": [1.0]}], "input 'b'"),
])
def test_multi_input_instances_that_do_not_fit_are_400(http, instances, fragment):
    status, body = http.call("POST", "/v1/models/pair:predict", {"instances": instances})
    assert status == 400 and fragment in body["error"], body


def test_a_single_input_may_be_named_in_each_instance(http):
    status, body = http.call("POST", "/v1/models/add:predict", {"instances": [{"x": [1.0, 1.0, 1.0, 1.0]}]})
    assert (status, body) == (200, {"predictions": [[2.0, 2.0, 2.0, 2.0]]})


def test_strings_go_as_bytes(http):
    instances = [["a", "été", ""], ["x", "y", "z"]]
    assert http.call("POST", "/v1/models/words:predict", {"instances": instances}) == (200, {"predictions": instances})
    status, body = http.call("POST", "/v1/models/words:predict", {"instances": [[1, 2, 3]]})
    assert status == 400 and "BYTES elements must be strings" in body["error"]


@pytest.mark.skipif(not HAS_SKLEARN_BACKEND, reason="the runtime does not serve model type 'sklearn' yet "
                                                    "(issue #14's backend, runtimes/backends/sklearn_backend.py)")
def test_an_sklearn_model_as_in_kserves_quick_start(fabric, http):
    import joblib
    from sklearn import datasets, svm

    iris = datasets.load_iris()
    model = svm.SVC(gamma="scale").fit(iris.data, iris.target)
    folder = fabric.store / "sklearn-iris"
    folder.mkdir(parents=True)
    joblib.dump(model, folder / "model.joblib")
    register(fabric.routers[0], "sklearn-iris", folder, "sklearn")
    instances = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
    status, body = http.call("POST", "/v1/models/sklearn-iris:predict", {"instances": instances})
    assert status == 200, body
    assert body == {"predictions": model.predict(np.array(instances)).tolist()}


def test_a_model_replaced_under_the_same_registration_is_not_served_its_old_signature(fabric, http):
    # Same id, type and path, other files: the router's kept signature matches the
    # registration, so only its second look (fresh metadata before a 400) can tell.
    router = fabric.routers[0]
    folder = add_onnx(fabric.store / "swap" / "model.onnx").parent
    register(router, "swap", folder)
    assert http.call("POST", "/v1/models/swap:predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]})[0] == 200
    router.mesh.unregisterModel(mm.UnregisterModelRequest(modelId="swap"), timeout=30)
    wait_until(lambda: not fabric.holders("swap"), 30, "the old 'swap' to be unloaded")
    add_onnx(folder / "model.onnx", width=3)
    register(router, "swap", folder)
    wait_until(lambda: http.call("GET", "/v2/models/swap")[1].get("inputs", [{}])[0].get("shape") == [-1, 3],
               60, "the new 'swap' to answer its metadata")
    status, body = http.call("POST", "/v1/models/swap:predict", {"instances": [[1.0, 2.0, 3.0]]})
    assert (status, body) == (200, {"predictions": [[2.0, 3.0, 4.0]]})


class _View:
    """Stands in for the router's FabricView: only the registration records the cache reads."""

    def __init__(self) -> None:
        self.records: dict[str, ModelRecord] = {}

    def model(self, model_id: str) -> ModelRecord | None:
        return self.records.get(model_id)


def _signature(width: int) -> Signature:
    return Signature((TensorSpec("x", "FP32", (-1, width)),), (TensorSpec("y", "FP32", (-1, width)),))


def test_signature_cache_holds_per_registration_and_is_bounded():
    view = _View()
    cache = SignatureCache(view, max_entries=2)
    view.records["m"] = ModelRecord("m", "onnx", "/models/m-1")
    cache.put("m", _signature(4))
    assert cache.get("m") == _signature(4)
    view.records["m"] = ModelRecord("m", "onnx", "/models/m-2")  # registered again elsewhere
    assert cache.get("m") is None
    cache.put("m", _signature(3))
    cache.put("a", _signature(1))
    assert cache.get("m") == _signature(3)  # used last: "a" goes first
    cache.put("b", _signature(2))
    assert cache.get("a") is None and cache.get("m") == _signature(3) and cache.get("b") == _signature(2)
    cache.drop("m")
    assert cache.get("m") is None


def test_prediction_output_is_predict_else_the_first():
    assert _signature(2).prediction_output == "y"
    both = Signature((), (TensorSpec("label", "INT64", (-1,)), TensorSpec("predict", "INT64", (-1,))))
    assert both.prediction_output == "predict"
    assert Signature((), ()).prediction_output is None


def test_predictions_nest_typed_and_raw_outputs_by_their_shape():
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="INT32", shape=[2, 2, 2]).contents.int_contents.extend(range(8))
    assert json.loads(predictions_json(response.SerializeToString(), _signature(2))) == {
        "predictions": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]}
    raw = pb.ModelInferResponse(model_name="m")
    raw.outputs.add(name="z", datatype="BOOL", shape=[3])
    raw.outputs.add(name="y", datatype="FP64", shape=[1, 2])
    raw.raw_output_contents.extend([b"\x01\x00\x01", np.array([0.5, -2.0]).tobytes()])
    assert json.loads(predictions_json(raw.SerializeToString(), _signature(2))) == {"predictions": [[0.5, -2.0]]}


def test_predict_request_asks_for_the_prediction_output_with_the_models_datatype():
    outputs = (TensorSpec("a", "FP32", ()), TensorSpec("predict", "INT8", ()))
    signature = Signature((TensorSpec("x", "INT8", (-1, 2)),), outputs)
    request = predict_request("m", [[1, -2], [3, 4]], signature)
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("x", "INT8", [2, 2])]
    assert request.raw_input_contents[0] == np.array([1, -2, 3, 4], dtype=np.int8).tobytes()
    assert [o.name for o in request.outputs] == ["predict"]
    with pytest.raises(BadTensor, match="do not fit INT8"):
        predict_request("m", [[1, 300]], signature)


@pytest.mark.parametrize("instances, datatype, raw", [
    ([[1, 2]], "INT64", np.array([1, 2], dtype=np.int64).tobytes()),
    ([[1, 2.5]], "FP64", np.array([1.0, 2.5]).tobytes()),
    ([[True, False]], "BOOL", b"\x01\x00"),
    ([["ab", ""]], "BYTES", b"\x02\x00\x00\x00ab\x00\x00\x00\x00"),
])
def test_an_input_without_a_datatype_takes_the_values_own(instances, datatype, raw):
    signature = Signature((TensorSpec("input-0", "", (-1, -1)),), ())
    request = predict_request("m", instances, signature)
    assert request.inputs[0].datatype == datatype and request.raw_input_contents[0] == raw
    assert not request.outputs  # none listed: the model answers with what it has
