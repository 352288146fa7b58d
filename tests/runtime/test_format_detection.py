"""Which backend takes a folder when no model type is named, for suffixes formats share
(.json, .bst, .model, .txt): real files of each library, told apart by their first bytes;
and what the registry advertises."""

from __future__ import annotations

import pytest

from runtimes.backends import BackendRegistry
from runtimes.errors import InvalidModel
from tests.support import classic_models, models

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def registry():
    return BackendRegistry.default()


@pytest.mark.parametrize("build, file_name, expected", [
    (classic_models.xgboost_classifier, "model.json", "xgboost"),
    (classic_models.xgboost_classifier, "model.ubj", "xgboost"),
    (classic_models.xgboost_regressor_booster, "model.bst", "xgboost"),
    (classic_models.xgboost_regressor_booster, "model.model", "xgboost"),
    (classic_models.lightgbm_regressor, "model.bst", "lightgbm"),
    (classic_models.lightgbm_regressor, "model.txt", "lightgbm"),
    (classic_models.sklearn_logistic, "model.joblib", "sklearn"),
])
def test_the_content_tells_the_format(registry, tmp_path, build, file_name, expected):
    build(tmp_path / "m" / file_name)
    backend, model_file = registry.select("", tmp_path / "m")
    assert (backend.name, model_file.name) == (expected, file_name)


def test_a_json_beside_the_model_is_not_taken_for_it(registry, tmp_path):
    folder = tmp_path / "m"
    classic_models.lightgbm_regressor(folder / "model.txt")
    (folder / "a-metadata.json").write_text('{"owner": "team-a"}')  # sorts first, and is no model
    (folder / "notes.txt").write_text("trained on Tuesday")
    backend, model_file = registry.select("", folder)
    assert (backend.name, model_file.name) == ("lightgbm", "model.txt")


def test_with_a_type_the_recognized_file_comes_first(registry, tmp_path):
    folder = tmp_path / "m"
    classic_models.xgboost_classifier(folder / "zz.json")
    (folder / "model.json").write_text('{"not": "a booster"}')  # named model.*, but not XGBoost's
    backend, model_file = registry.select("xgboost", folder)
    assert (backend.name, model_file.name) == ("xgboost", "zz.json")


def test_files_that_only_look_like_models_by_name_are_named(registry, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.json").write_text('{"owner": "team-a"}')
    (folder / "model.txt").write_text("hello")
    with pytest.raises(InvalidModel, match=r"model.json, model.txt matched by name, not by content"):
        registry.select("", folder)


def test_an_onnx_file_still_wins_over_nothing_else(registry, tmp_path):
    models.add_onnx(tmp_path / "m" / "model.onnx")
    backend, _ = registry.select("", tmp_path / "m")
    assert backend.name == "onnx"


def test_the_registry_advertises_each_type_with_versions(registry):
    formats = registry.formats()
    for name in ("onnx", "sklearn", "xgboost", "lightgbm", "triton"):
        assert name in registry.model_types and formats[name], name
    assert "0" in formats["sklearn"] and "1" in formats["xgboost"] and "3" in formats["lightgbm"]


def test_a_type_not_installed_is_refused_naming_it(tmp_path):
    only_onnx = BackendRegistry([b for b in BackendRegistry.default().backends() if b.name == "onnx"])
    classic_models.sklearn_logistic(tmp_path / "m" / "model.joblib")
    with pytest.raises(InvalidModel, match="model type 'sklearn' is not served here"):
        only_onnx.select("sklearn", tmp_path / "m")
    assert only_onnx.model_types == ["onnx", "triton"]
