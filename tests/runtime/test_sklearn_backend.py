"""scikit-learn models fitted here, served by a real runtime process, asked through tritonclient,
and compared with the estimator's own predict / predict_proba."""

from __future__ import annotations

import json
import pickle

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support import classic_models, models

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402  (after the skip)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sklearn-store")
    built = {
        "logistic": classic_models.sklearn_logistic(root / "logistic" / "model.joblib"),
        "pipeline": classic_models.sklearn_pipeline_with_text_labels(root / "pipeline" / "model.pkl"),
        "regressor": classic_models.sklearn_regressor(root / "regressor" / "model.pickle"),
    }
    corrupt = root / "corrupt" / "model.joblib"
    corrupt.parent.mkdir()
    whole = built["logistic"][0].read_bytes()
    corrupt.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    not_an_estimator = root / "dict" / "model.pkl"
    not_an_estimator.parent.mkdir()
    not_an_estimator.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    unfitted = root / "unfitted" / "model.joblib"
    unfitted.parent.mkdir()
    unfitted.write_bytes(pickle.dumps(LogisticRegression()))
    onnx_named_joblib = models.add_onnx(root / "onnx" / "model.onnx")
    onnx_named_joblib = onnx_named_joblib.rename(onnx_named_joblib.with_suffix(".joblib"))
    return {"built": built, "corrupt": corrupt.parent, "dict": not_an_estimator.parent, "unfitted": unfitted.parent,
            "onnx": onnx_named_joblib.parent}


@pytest.fixture(scope="module")
def served(runtime, store):
    for name, (path, _) in store["built"].items():
        assert runtime.load(f"sk-{name}", path.parent, "sklearn").sizeInBytes > 0
    return runtime


@pytest.fixture
def client(served):
    with grpcclient.InferenceServerClient(served.address) as client:
        yield client


def _input(array, name="input-0", datatype="FP64"):
    return classic_models.v2_input(array, name, datatype)


def _rows(seed=10, rows=7):
    return np.random.default_rng(seed).random((rows, classic_models.FEATURES))


def test_predict_matches_the_estimator(client, store):
    _, model = store["built"]["logistic"]
    x = _rows()
    result = client.infer("sk-logistic", [_input(x)])
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(x))
    assert result.as_numpy("predict_proba") is None  # only when asked for, as MLServer answers


def test_predict_proba_when_the_request_names_it(client, store):
    _, model = store["built"]["logistic"]
    x = _rows(11)
    outputs = [grpcclient.InferRequestedOutput("predict"), grpcclient.InferRequestedOutput("predict_proba")]
    result = client.infer("sk-logistic", [_input(x)], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), rtol=1e-12)


def test_any_input_name_and_fp32_are_taken(client, store):
    """ModelMesh's sklearn example calls its input `predict`; FP32 is cast by scikit-learn."""
    _, model = store["built"]["logistic"]
    x = _rows(12).astype(np.float32)
    result = client.infer("sk-logistic", [_input(x, name="predict", datatype="FP32")])
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(x))


def test_a_pipeline_with_string_labels_answers_bytes(client, store):
    _, model = store["built"]["pipeline"]
    x = _rows(13)
    outputs = [grpcclient.InferRequestedOutput("predict"), grpcclient.InferRequestedOutput("predict_proba")]
    result = client.infer("sk-pipeline", [_input(x)], outputs=outputs)
    assert result.get_output("predict").datatype == "BYTES"
    assert [v.decode() for v in result.as_numpy("predict")] == list(model.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), rtol=1e-9)


def test_a_regressor_predicts_and_has_no_predict_proba(client, store):
    _, model = store["built"]["regressor"]
    x = _rows(14)
    np.testing.assert_allclose(client.infer("sk-regressor", [_input(x)]).as_numpy("predict"), model.predict(x))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sk-regressor", [_input(x)], outputs=[grpcclient.InferRequestedOutput("predict_proba")])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "predict_proba" in refused.value.message()


def test_metadata_comes_from_the_estimator(client):
    metadata = client.get_model_metadata("sk-pipeline")
    assert metadata.platform == "sklearn"
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input-0", [-1, classic_models.FEATURES])]
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs == {"predict": ("BYTES", [-1]), "predict_proba": ("FP64", [-1, 3])}


def test_the_wrong_number_of_features_is_invalid_argument(client):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sk-logistic", [_input(np.zeros((2, 3)))])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 4]" in refused.value.message()


def test_the_type_may_come_from_the_files_a_label_or_the_key(served, store, client):
    path, model = store["built"]["logistic"]
    key = json.dumps({"model_type": {"name": "sklearn", "version": "1"}})
    for model_id, model_type, model_key in (("sk-auto", "", ""), ("sk-label", "mt:sklearn:0|pv:grpc-v2", ""),
                                            ("sk-key", "rt:meshserve-1.x", key)):
        served.load(model_id, path.parent, model_type, key=model_key)
        x = _rows(15)
        np.testing.assert_array_equal(client.infer(model_id, [_input(x)]).as_numpy("predict"), model.predict(x))
        served.unload(model_id)


@pytest.mark.parametrize("case, reason", [
    ("corrupt", "joblib cannot load model.joblib: EOFError"),
    ("dict", "model.pkl holds a dict, which has no predict()"),
    ("unfitted", "model.joblib: This LogisticRegression instance is not fitted yet"),
    ("onnx", "joblib cannot load model.joblib"),
])
def test_files_that_are_not_estimators_fail_the_load_with_the_reason(served, store, case, reason):
    with pytest.raises(grpc.RpcError) as refused:
        served.load(f"sk-bad-{case}", store[case], "sklearn")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details()
