"""XGBoost boosters fitted here (JSON, UBJSON, .bst, .model), served by a real runtime process, asked
through tritonclient, and compared with XGBoost's own predict / predict_proba."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support import classic_models

xgb = pytest.importorskip("xgboost")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("xgboost-store")
    built = {
        "binary_json": classic_models.xgboost_classifier(root / "binary_json" / "model.json"),
        "multi_ubj": classic_models.xgboost_classifier(root / "multi_ubj" / "model.ubj", classes=3),
        "regressor_bst": classic_models.xgboost_regressor_booster(root / "regressor_bst" / "model.bst"),
        "regressor_model": classic_models.xgboost_regressor_booster(root / "regressor_model" / "model.model"),
    }
    corrupt = root / "corrupt" / "model.json"
    corrupt.parent.mkdir()
    corrupt.write_text(built["binary_json"][0].read_text()[:200])  # a copy cut short
    lightgbm_text = root / "lightgbm" / "model.bst"
    lightgbm_text.parent.mkdir()
    lightgbm_text.write_text("tree\nversion=v4\nnum_class=1\n")  # LightGBM's format, asked for as xgboost
    return {"built": built, "corrupt": corrupt.parent, "lightgbm": lightgbm_text.parent}


@pytest.fixture(scope="module")
def served(runtime, store):
    for name, (path, _) in store["built"].items():
        assert runtime.load(f"xgb-{name}", path.parent, "xgboost").sizeInBytes > 0
    return runtime


@pytest.fixture
def client(served):
    with grpcclient.InferenceServerClient(served.address) as client:
        yield client


def _input(array, name="input-0", datatype="FP32"):
    return classic_models.v2_input(array, name, datatype)


def _rows(seed=20, rows=9):
    return np.random.default_rng(seed).random((rows, classic_models.FEATURES)).astype(np.float32)


BOTH = [grpcclient.InferRequestedOutput("predict"), grpcclient.InferRequestedOutput("predict_proba")]


@pytest.mark.parametrize("name", ["binary_json", "multi_ubj"])
def test_a_classifier_answers_as_xgbclassifier(client, store, name):
    _, model = store["built"][name]
    x = _rows()
    result = client.infer(f"xgb-{name}", [_input(x)], outputs=BOTH)
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), rtol=1e-6)
    default = client.infer(f"xgb-{name}", [_input(x, name="features")])  # any input name; predict only
    np.testing.assert_array_equal(default.as_numpy("predict"), model.predict(x))
    assert default.as_numpy("predict_proba") is None


@pytest.mark.parametrize("name", ["regressor_bst", "regressor_model"])
def test_a_regressor_answers_as_booster_predict(client, store, name):
    _, booster = store["built"][name]
    x = _rows(21).astype(np.float64)
    result = client.infer(f"xgb-{name}", [_input(x, datatype="FP64")])
    np.testing.assert_allclose(result.as_numpy("predict"), booster.predict(xgb.DMatrix(x)), rtol=1e-6)


def test_metadata_comes_from_the_booster(client):
    metadata = client.get_model_metadata("xgb-multi_ubj")
    assert metadata.platform == "xgboost"
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input-0", [-1, classic_models.FEATURES])]
    assert {t.name: list(t.shape) for t in metadata.outputs} == {"predict": [-1], "predict_proba": [-1, 3]}


def test_the_wrong_number_of_features_is_invalid_argument(client):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("xgb-binary_json", [_input(np.zeros((2, 5), np.float32))])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 4]" in refused.value.message()


def test_a_regressor_has_no_predict_proba(client):
    with pytest.raises(InferenceServerException) as refused:
        client.infer("xgb-regressor_bst", [_input(_rows())], outputs=BOTH)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "predict_proba" in refused.value.message()


def test_the_files_tell_the_format_without_a_type(served, store, client):
    path, model = store["built"]["binary_json"]
    served.load("xgb-auto", path.parent, "")
    x = _rows(22)
    np.testing.assert_array_equal(client.infer("xgb-auto", [_input(x)]).as_numpy("predict"), model.predict(x))
    assert client.get_model_metadata("xgb-auto").platform == "xgboost"
    served.unload("xgb-auto")


@pytest.mark.parametrize("case, reason", [
    ("corrupt", "XGBoost cannot load model.json:"),
    ("lightgbm", "XGBoost cannot load model.bst:"),
])
def test_unreadable_files_fail_the_load_with_xgboosts_reason(served, store, case, reason):
    with pytest.raises(grpc.RpcError) as refused:
        served.load(f"xgb-bad-{case}", store[case], "xgboost")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details()
    assert "Stack trace" not in refused.value.details() and len(refused.value.details().splitlines()) == 1


def test_concurrent_requests_each_get_their_own_answer(served, store):
    """Eight clients at once on one model (the runtime runs them on its worker threads)."""
    _, model = store["built"]["multi_ubj"]
    batches = [_rows(100 + n).astype(np.float32) for n in range(8)]

    def ask(x):
        predict = [grpcclient.InferRequestedOutput("predict")]
        with grpcclient.InferenceServerClient(served.address) as client:
            return [client.infer("xgb-multi_ubj", [_input(x, datatype="FP32")], outputs=predict).as_numpy("predict")
                    for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, batches))
    for x, replies in zip(batches, answers):
        expected = model.predict(x)
        for reply in replies:
            np.testing.assert_allclose(reply, expected, rtol=1e-6)
