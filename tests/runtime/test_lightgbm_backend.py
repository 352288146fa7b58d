"""LightGBM boosters fitted here (text `.txt` and `.bst`), served by a real runtime process, asked
through tritonclient, and compared with LightGBM's own predict."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support import classic_models

pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightgbm-store")
    built = {
        "regressor": classic_models.lightgbm_regressor(root / "regressor" / "model.txt"),
        "multiclass": classic_models.lightgbm_multiclass(root / "multiclass" / "model.bst"),
    }
    corrupt = root / "corrupt" / "model.txt"
    corrupt.parent.mkdir()
    corrupt.write_text(built["regressor"][0].read_text()[:300])  # a copy cut short
    xgboost_json = root / "xgboost" / "model.txt"
    xgboost_json.parent.mkdir()
    xgboost_json.write_text('{"learner": {"attributes": {}}, "version": [3, 0, 0]}')  # XGBoost's, asked for as lightgbm
    return {"built": built, "corrupt": corrupt.parent, "xgboost": xgboost_json.parent}


@pytest.fixture(scope="module")
def served(runtime, store):
    for name, (path, _) in store["built"].items():
        assert runtime.load(f"lgb-{name}", path.parent, "lightgbm").sizeInBytes > 0
    return runtime


@pytest.fixture
def client(served):
    with grpcclient.InferenceServerClient(served.address) as client:
        yield client


def _input(array, name="input-0", datatype="FP64"):
    return classic_models.v2_input(array, name, datatype)


def _rows(seed=30, rows=8):
    return np.random.default_rng(seed).random((rows, classic_models.FEATURES))


def test_a_regressor_answers_as_booster_predict(client, store):
    _, booster = store["built"]["regressor"]
    x = _rows()
    np.testing.assert_allclose(client.infer("lgb-regressor", [_input(x)]).as_numpy("predict"), booster.predict(x))


def test_a_multiclass_model_answers_its_probabilities(client, store):
    _, model = store["built"]["multiclass"]
    x = _rows(31).astype(np.float32)
    result = client.infer("lgb-multiclass", [_input(x, name="predict", datatype="FP32")])  # any input name
    np.testing.assert_allclose(result.as_numpy("predict"), model.predict_proba(x), rtol=1e-9)
    np.testing.assert_allclose(result.as_numpy("predict"), model.booster_.predict(x), rtol=1e-12)


def test_metadata_comes_from_the_booster(client):
    metadata = client.get_model_metadata("lgb-multiclass")
    assert metadata.platform == "lightgbm"
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input-0", [-1, classic_models.FEATURES])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("predict", "FP64", [-1, 3])]


def test_the_wrong_number_of_features_is_invalid_argument(client):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("lgb-regressor", [_input(np.zeros((2, 6)))])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 4]" in refused.value.message()


def test_bytes_inputs_are_invalid_argument(client):
    tensor = grpcclient.InferInput("input-0", [1, 4], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b", b"c", b"d"]], dtype=object))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("lgb-regressor", [tensor])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "BYTES" in refused.value.message()


def test_the_files_tell_the_format_without_a_type(served, store, client):
    path, booster = store["built"]["multiclass"]  # model.bst: LightGBM's text, not XGBoost's
    served.load("lgb-auto", path.parent, "")
    x = _rows(32)
    np.testing.assert_allclose(client.infer("lgb-auto", [_input(x)]).as_numpy("predict"), booster.predict_proba(x))
    served.unload("lgb-auto")


@pytest.mark.parametrize("case, reason", [
    ("corrupt", "LightGBM cannot load model.txt:"),
    ("xgboost", "LightGBM cannot load model.txt: Unknown model format"),
])
def test_unreadable_files_fail_the_load_with_lightgbms_reason(served, store, case, reason):
    with pytest.raises(grpc.RpcError) as refused:
        served.load(f"lgb-bad-{case}", store[case], "lightgbm")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details()


def test_concurrent_requests_each_get_their_own_answer(served, store):
    """Eight clients at once on one model (the runtime runs them on its worker threads)."""
    _, model = store["built"]["multiclass"]
    batches = [_rows(100 + n).astype(np.float32) for n in range(8)]

    def ask(x):
        predict = [grpcclient.InferRequestedOutput("predict")]
        with grpcclient.InferenceServerClient(served.address) as client:
            return [client.infer("lgb-multiclass", [_input(x, datatype="FP32")], outputs=predict).as_numpy("predict")
                    for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, batches))
    for x, replies in zip(batches, answers):
        expected = model.predict_proba(x)
        for reply in replies:
            np.testing.assert_allclose(reply, expected, rtol=1e-6)
