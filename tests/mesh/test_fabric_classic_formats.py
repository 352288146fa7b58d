"""scikit-learn, XGBoost and LightGBM models end to end (issue #16): a real etcd, two runtime
processes with their agents, a controller and a router; models fitted here are registered
with the type names ModelMesh and KServe use (plain, versioned label expressions, a model key),
placed by the runtimes' `mt:` labels, and asked through the router with tritonclient."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from protos import model_mesh_pb2 as mm
from tests.support import classic_models
from tests.support.fabric import Fabric

pytest.importorskip("sklearn")
pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

Status = mm.ModelStatusInfo.ModelStatus


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("classic")
    fabric = Fabric(workdir, lease_ttl_s=2)
    try:
        fabric.start_etcd()
        for name in ("rt0", "rt1"):
            fabric.add_runtime(name, "128MiB", "--labels", "rt:meshserve-1.x")
        fabric.add_controller()
        fabric.add_router()
        yield fabric
    finally:
        fabric.close()


@pytest.fixture(scope="module")
def store(fabric):
    root = fabric.workdir / "store"
    return {
        "iris-sklearn": classic_models.sklearn_pipeline_with_text_labels(root / "iris-sklearn" / "model.joblib"),
        "boost-xgb": classic_models.xgboost_classifier(root / "boost-xgb" / "model.json", classes=3),
        "trees-lgb": classic_models.lightgbm_regressor(root / "trees-lgb" / "model.bst"),
    }


@pytest.fixture
def client(fabric):
    with triton.InferenceServerClient(f"127.0.0.1:{fabric.routers[0].port}") as client:
        yield client


def register(fabric, model_id: str, path, model_type: str, key: str = "") -> None:
    info = mm.ModelInfo(type=model_type, path=str(path), key=key)
    fabric.routers[0].mesh.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)


def _features(array: np.ndarray, name: str = "input-0") -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), "FP64")
    tensor.set_data_from_numpy(array)
    return tensor


def _rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((6, classic_models.FEATURES))


def test_the_runtimes_advertise_the_new_types_with_versions(fabric):
    for record in fabric.instances().values():
        labels = set(record.labels)
        assert {"mt:sklearn", "mt:sklearn:0", "mt:xgboost", "mt:xgboost:1", "mt:lightgbm", "mt:lightgbm:3",
                "mt:triton", "mt:onnx"} <= labels, labels


def test_sklearn_through_the_router_matches_the_estimator(fabric, store, client):
    path, model = store["iris-sklearn"]
    register(fabric, "iris-sklearn", path.parent, "sklearn")
    x = _rows(40)
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("iris-sklearn", [_features(x, "predict")], outputs=outputs, client_timeout=60)
    assert [v.decode() for v in result.as_numpy("predict")] == list(model.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), rtol=1e-9)


def test_xgboost_with_a_versioned_label_expression_matches_xgbclassifier(fabric, store, client):
    path, model = store["boost-xgb"]
    register(fabric, "boost-xgb", path.parent, "mt:xgboost:1|pv:grpc-v2")  # as modelmesh-serving writes it
    x = _rows(41).astype(np.float32)
    tensor = triton.InferInput("input-0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("boost-xgb", [tensor], outputs=outputs, client_timeout=60)
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), rtol=1e-6)


def test_lightgbm_typed_by_the_model_key_matches_booster_predict(fabric, store, client):
    path, booster = store["trees-lgb"]
    key = json.dumps({"model_type": {"name": "lightgbm", "version": "4"}})
    register(fabric, "trees-lgb", path.parent, "rt:meshserve-1.x", key)  # no mt: label: the key names the format
    x = _rows(42)
    np.testing.assert_allclose(client.infer("trees-lgb", [_features(x)], client_timeout=60).as_numpy("predict"),
                               booster.predict(x))


def test_a_model_of_the_wrong_format_fails_with_the_librarys_reason(fabric, store, client):
    path, _ = store["trees-lgb"]  # LightGBM's text, registered as XGBoost
    register(fabric, "not-xgb", path.parent, "xgboost")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("not-xgb", [_features(_rows(43))], client_timeout=60)
    assert "XGBoost cannot load model.bst" in refused.value.message()
    status = fabric.routers[0].mesh.getModelStatus(mm.GetStatusRequest(modelId="not-xgb"), timeout=10)
    assert status.status == Status.LOADING_FAILED
    assert any("XGBoost cannot load model.bst" in error for error in status.errors), status.errors
