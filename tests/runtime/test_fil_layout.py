"""Triton FIL folders (`backend: "fil"`, as modelmesh-serving's xgboost-fil samples are stored):
boosters loaded by meshserve's own XGBoost and LightGBM backends and answered as FIL answers.
Loads through the BackendRegistry where only the config matters, through a real runtime
process for the client's view and the status of a refused load."""

from __future__ import annotations

import textwrap

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

pytest.importorskip("xgboost")

from runtimes.backends import BackendRegistry, Device  # noqa: E402
from runtimes.errors import InvalidModel  # noqa: E402
from tests.support import classic_models  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    return BackendRegistry.default()


def load(registry: BackendRegistry, folder, model_type: str = ""):
    backend, model_file = registry.select(model_type, folder, {})
    return backend.load(model_file, Device()), model_file


def _rows(booster, rows: int = 16) -> np.ndarray:
    rng = np.random.default_rng(11)
    return (rng.random((rows, booster.num_features())) < 0.3).astype(np.float32)


def test_a_mushroom_like_fil_folder_answers_class_probabilities_through_the_runtime(runtime, tmp_path):
    folder, booster = classic_models.fil_xgboost_classifier(tmp_path / "mushroom-fil")
    runtime.load("fil-proba", folder, "xgboost")
    x = _rows(booster)
    with grpcclient.InferenceServerClient(runtime.address) as client:
        metadata = client.get_model_metadata("fil-proba", as_json=True)
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("input__0", "FP32", ["-1", "126"])]
        assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [("output__0", ["-1", "2"])]
        tensor = grpcclient.InferInput("input__0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        out = client.infer("fil-proba", [tensor]).as_numpy("output__0")
    positive = booster.inplace_predict(x)
    np.testing.assert_allclose(out, np.stack([1 - positive, positive], axis=1), rtol=1e-6)
    runtime.unload("fil-proba")


def test_without_predict_proba_a_classifier_answers_its_class_by_the_threshold(registry, tmp_path):
    folder, booster = classic_models.fil_xgboost_classifier(tmp_path / "fil", predict_proba=False)
    model, model_file = load(registry, folder, "triton")
    assert model_file.name == "xgboost.json" and model.platform == "fil"
    x = _rows(booster)
    out = model.infer({"input__0": x}, [])["output__0"]
    assert out.shape == (16, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], (booster.inplace_predict(x) > 0.5).astype(np.float32))


def test_a_binary_fil_output_of_one_column_is_the_positive_class(registry, tmp_path):
    folder, booster = classic_models.fil_xgboost_classifier(tmp_path / "fil", width=1)
    model, _ = load(registry, folder, "xgboost")
    x = _rows(booster)
    np.testing.assert_allclose(model.infer({"input__0": x}, [])["output__0"][:, 0], booster.inplace_predict(x), rtol=1e-6)


def test_a_lightgbm_regressor_in_a_fil_folder(registry, tmp_path):
    pytest.importorskip("lightgbm")
    path, booster = classic_models.lightgbm_regressor(tmp_path / "fil" / "1" / "model.txt")
    (tmp_path / "fil" / "config.pbtxt").write_text(textwrap.dedent("""
        backend: "fil"
        max_batch_size: 64
        input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
        parameters [ { key: "model_type" value: { string_value: "lightgbm" } },
                     { key: "is_classifier" value: { string_value: "false" } } ]
    """))
    model, model_file = load(registry, tmp_path / "fil", "lightgbm")
    assert model_file == path
    x, _ = classic_models.data(rows=5, seed=9)
    out = model.infer({"input__0": x.astype(np.float32)}, [])["output__0"]
    np.testing.assert_allclose(out[:, 0], booster.predict(x.astype(np.float32)), rtol=1e-5)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda c: c.replace("dims: [ 126 ]", "dims: [ 10 ]"), "input__0 10 features; the booster takes 126"),
    (lambda c: c.replace("dims: [ 2 ]", "dims: [ 3 ]"), "output__0 width 3"),
    (lambda c: c.replace('"xgboost_json"', '"treelite_checkpoint"'), "must give model_type"),
    (lambda c: c.replace('key: "output_class" value: { string_value: "true" }',
                         'key: "output_class" value: { string_value: "false" }'), "predict_proba of a model"),
    (lambda c: c.replace('string_value: "true" } },\n  { key: "output_class"', 'string_value: "yes" } },\n  { key: "output_class"'),
     "must be \"true\" or \"false\""),
    (lambda c: c.replace('"input__0"', '"features"'), "one input, 'input__0'"),
])
def test_a_fil_config_that_contradicts_the_booster_fails_the_load_naming_it(registry, tmp_path, edit, reason):
    folder, _ = classic_models.fil_xgboost_classifier(tmp_path / "fil")
    config = folder / "config.pbtxt"
    config.write_text(edit(config.read_text()))
    with pytest.raises(InvalidModel, match=reason):
        load(registry, folder, "xgboost")


def test_a_refused_fil_folder_is_invalid_argument_at_the_runtime(runtime, tmp_path):
    folder, _ = classic_models.fil_xgboost_classifier(tmp_path / "bad-fil")
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 126 ]", "dims: [ 12 ]"))
    with pytest.raises(grpc.RpcError) as refused:
        runtime.load("fil-bad", folder, "xgboost")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the booster takes 126" in refused.value.details()
