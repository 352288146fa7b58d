"""XGBoost backend: a Booster saved as `.json`, `.ubj`, or `.bst`/`.model` (UBJSON or the old binary).

Signature, as MLServer's xgboost runtime has it: one input under any name (metadata calls
it `input-0`), 2-D `[rows, num_features]`; output `predict`, and for classifiers
`predict_proba` when the request names it. A classifier is a booster with objective
`binary:logistic` or `multi:softprob`: `predict` is then the class index and
`predict_proba` the class probabilities (what XGBClassifier.predict / predict_proba
return); for any other objective `predict` is Booster.predict's value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from runtimes.backends.base import Backend, Device, LoadedModel, Probe, TensorSpec
from runtimes.errors import InvalidInput, InvalidModel

INPUT_NAME = "input-0"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
_CLASSIFIER_OBJECTIVES = ("binary:logistic", "multi:softprob")
# XGBoost's messages start "[13:28:13] /path/to/c_api.cc:1532: Check failed: ..." and go on with a stack trace.
_MESSAGE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
_JSON_MODEL = re.compile(rb'^\s*\{\s*"learner"')

if TYPE_CHECKING:
    import xgboost as xgb


def _xgboost():
    import xgboost  # on first use: importing it costs a second at every process start

    return xgboost


def xgboost_reason(error: Exception) -> str:
    """The first line of an XGBoost error, without its timestamp and source location."""
    return _MESSAGE_PREFIX.sub("", str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


class XGBoostModel(LoadedModel):
    platform = "xgboost"
    any_input_name = True

    def __init__(self, booster: "xgb.Booster") -> None:
        self._booster = booster
        self._error = _xgboost().core.XGBoostError
        learner = json.loads(booster.save_config())["learner"]
        self.objective = learner["objective"]["name"]
        classes = int(learner["learner_model_param"].get("num_class") or 0)
        self._classifier = self.objective in _CLASSIFIER_OBJECTIVES
        self.inputs = [TensorSpec(INPUT_NAME, "", (-1, booster.num_features()))]
        if self._classifier:
            width = 2 if self.objective.startswith("binary:") else classes
            self.outputs = [TensorSpec(PREDICT, "INT64", (-1,)), TensorSpec(PREDICT_PROBA, "FP32", (-1, width))]
        else:
            targets = int(learner["learner_model_param"].get("num_target") or 1)
            self.outputs = [TensorSpec(PREDICT, "FP32", (-1,) if targets == 1 else (-1, targets))]

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        (features,) = inputs.values()
        if features.dtype == object:
            raise InvalidInput("XGBoost models take numeric inputs, not BYTES")
        try:
            raw = np.asarray(self._booster.inplace_predict(features))  # thread-safe, unlike Booster.predict
        except (self._error, ValueError, TypeError) as error:
            raise InvalidInput(f"the model rejected the inputs: {xgboost_reason(error)}") from None
        names = output_names or [PREDICT]
        if not self._classifier:
            return {name: raw for name in names}
        proba = np.stack([1 - raw, raw], axis=1) if raw.ndim == 1 else raw
        results = {PREDICT: np.argmax(proba, axis=1).astype(np.int64), PREDICT_PROBA: proba}
        return {name: results[name] for name in names}

    def size_bytes(self) -> int:
        return 0  # unmeasured: the manager charges bytes on disk times its size factor

    def unload(self) -> None:
        self._booster = None


class XGBoostBackend(Backend):
    """Loads XGBoost boosters (any file Booster.load_model reads) onto the CPU."""

    name = "xgboost"
    file_suffixes = (".json", ".ubj", ".bst", ".model")
    versions = ("1", "2", "3")  # XGBoost 1.x-3.x; newer releases read older models

    def __init__(self, threads: int = 1) -> None:
        self._threads = max(1, threads)

    def recognizes(self, model_file: Path) -> bool:
        """`.json`: an object whose first key is "learner"; `.ubj` always; `.bst`/`.model`: not LightGBM's text."""
        head = _head(model_file)
        if model_file.suffix == ".json":
            return bool(_JSON_MODEL.match(head))
        return model_file.suffix == ".ubj" or not head.startswith(b"tree")

    def prepare(self) -> None:
        _xgboost()

    def load(self, model_file: Path, device: Device) -> XGBoostModel:
        xgb = _xgboost()
        booster = xgb.Booster(params={"nthread": self._threads})
        try:
            booster.load_model(str(model_file))
            booster.set_param({"nthread": self._threads})
            return XGBoostModel(booster)
        except (xgb.core.XGBoostError, ValueError, KeyError) as error:
            raise InvalidModel(f"XGBoost cannot load {model_file.name}: {xgboost_reason(error)}") from None

    def write_probe(self, folder: Path) -> Probe:
        """A booster of two depth-2 trees on four features, saved as JSON."""
        xgb = _xgboost()
        x = np.arange(32, dtype=np.float32).reshape(8, 4) % 5
        booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=np.arange(8) % 2), num_boost_round=2)
        path = folder / "model.json"
        booster.save_model(str(path))
        return Probe(path, {INPUT_NAME: np.zeros((1, 4), np.float32)})


def _head(path: Path, size: int = 256) -> bytes:
    with path.open("rb") as file:
        return file.read(size)
