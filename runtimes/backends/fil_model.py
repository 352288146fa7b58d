"""A Triton FIL folder (`backend: "fil"`): an XGBoost or LightGBM booster under FIL's signature.

modelmesh-serving's Triton runtime serves tree models through Triton's FIL backend, and its
samples (the `xgboost-fil` Predictor and InferenceService) point at such folders:

    <model>/config.pbtxt    backend "fil", parameters model_type, is_classifier (output_class
                            before Triton 24.x), predict_proba, threshold
    <model>/1/xgboost.json  (xgboost.ubj, xgboost.model, or model.txt for LightGBM)

Here the booster is loaded by meshserve's own XGBoost or LightGBM backend and answered as FIL
answers: one FP32 input `input__0` [batch, features], one FP32 output `output__0`:

- a regressor (is_classifier false): the booster's prediction, [batch, 1];
- a classifier without predict_proba: the class id, by `threshold` (0.5) for two classes,
  else the most probable class, [batch, 1];
- a classifier with predict_proba: the probability of every class, [batch, classes]; a
  binary model's output may have one column, the positive class's (FIL's compact form).

What config.pbtxt declares must agree with the booster (features, output width), else the
load fails naming the disagreement. FIL's performance parameters (algo, storage_type,
threads, chunk_size, ...) change how FIL runs, not what it computes, and are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from runtimes.backends.base import LoadedModel, TensorSpec
from runtimes.errors import InvalidInput, InvalidModel

__all__ = ["FIL_BACKEND", "FIL_FILENAMES", "FIL_MODEL_TYPES", "configure_fil"]

FIL_BACKEND = "fil"
INPUT, OUTPUT = "input__0", "output__0"
#: FIL's `model_type` parameter -> the backend that loads it here.
FIL_MODEL_TYPES = {"xgboost": "xgboost", "xgboost_json": "xgboost", "xgboost_ubj": "xgboost", "lightgbm": "lightgbm"}
#: The file FIL looks for in a version folder, by `model_type` (config.pbtxt may name another).
FIL_FILENAMES = {"xgboost": "xgboost.model", "xgboost_json": "xgboost.json", "xgboost_ubj": "xgboost.ubj",
                 "lightgbm": "model.txt"}
_PROBA, _PREDICT = "predict_proba", "predict"
_CONFIG = "config.pbtxt"


def _flag(parameters: Mapping[str, str], *names: str) -> bool:
    for name in names:
        if name in parameters:
            value = parameters[name].strip().lower()
            if value not in ("true", "false"):
                raise InvalidModel(f"{_CONFIG} parameter {name} must be \"true\" or \"false\", not {parameters[name]!r}")
            return value == "true"
    return False


class FilModel(LoadedModel):
    """A booster answering as Triton's FIL backend does (see the module docstring)."""

    platform = FIL_BACKEND

    def __init__(self, inner: LoadedModel, *, classifier: bool, predict_proba: bool, threshold: float,
                 max_batch_size: int, width: int, classes: int) -> None:
        self._inner = inner
        self._inner_input = inner.inputs[0].name
        self._classifier = classifier
        self._predict_proba = predict_proba
        self._threshold = threshold
        self._max_batch_size = max_batch_size
        self._classes = classes
        features = inner.inputs[0].shape[-1] if inner.inputs[0].shape else -1
        self.inputs = [TensorSpec(INPUT, "FP32", (-1, features))]
        self.outputs = [TensorSpec(OUTPUT, "FP32", (-1, width))]
        self._inner_outputs = {spec.name for spec in inner.outputs}

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        (features,) = inputs.values()
        if self._max_batch_size > 0 and features.ndim and features.shape[0] > self._max_batch_size:
            raise InvalidInput(f"input '{INPUT}': batch of {features.shape[0]} is over {_CONFIG}'s max_batch_size "
                               f"{self._max_batch_size}")
        feeds = {self._inner_input: np.asarray(features, dtype=np.float32)}
        if not self._classifier:
            values = self._inner.infer(feeds, [_PREDICT])[_PREDICT]
            return {OUTPUT: np.asarray(values, np.float32).reshape(features.shape[0], -1)}
        proba = self._probabilities(feeds)
        if self._predict_proba:
            out = proba[:, 1:] if self.outputs[0].shape[-1] == 1 else proba
        elif proba.shape[1] == 2:
            out = (proba[:, 1] > self._threshold).astype(np.float32)[:, None]
        else:
            out = np.argmax(proba, axis=1).astype(np.float32)[:, None]
        return {OUTPUT: np.ascontiguousarray(out, np.float32)}

    def _probabilities(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # XGBoost's backend names them predict_proba; a LightGBM booster's predict is them.
        name = _PROBA if _PROBA in self._inner_outputs else _PREDICT
        proba = np.asarray(self._inner.infer(feeds, [name])[name], np.float32)
        return np.stack([1 - proba, proba], axis=1) if proba.ndim == 1 else proba

    def size_bytes(self) -> int:
        return self._inner.size_bytes()

    def unload(self) -> None:
        self._inner.unload()


def _classes(inner: LoadedModel) -> int:
    """Classes of a classifier booster (2 for a binary one); 0 when it cannot be one."""
    for spec in inner.outputs:
        if spec.name == _PROBA:
            return spec.shape[-1] if len(spec.shape) > 1 else 2
    if getattr(inner, "objective", None) is not None:
        return 0  # XGBoost says what it is: without predict_proba its objective is not a classifier's
    shape = inner.outputs[0].shape  # LightGBM: a classifier's predict is its probabilities
    return shape[-1] if len(shape) > 1 else 2


def configure_fil(inner: LoadedModel, config) -> FilModel:
    """`inner` (a booster) under FIL's signature and config.pbtxt's parameters (`config`: a
    `TritonModelConfig`); InvalidModel naming what disagrees."""
    parameters = config.parameters
    classifier = _flag(parameters, "is_classifier", "output_class")
    predict_proba = _flag(parameters, "predict_proba")
    try:
        threshold = float(parameters.get("threshold", "0.5"))
    except ValueError:
        raise InvalidModel(f"{_CONFIG} parameter threshold must be a number, not {parameters['threshold']!r}") from None
    if predict_proba and not classifier:
        raise InvalidModel(f"{_CONFIG} asks for predict_proba of a model it does not say is a classifier "
                           "(is_classifier / output_class \"true\")")
    classes = _classes(inner) if classifier else 0
    if classifier and not classes:
        raise InvalidModel(f"{_CONFIG} says the model is a classifier, but the booster's objective "
                           f"({getattr(inner, 'objective', 'unknown')}) gives no class probabilities")
    width = classes if predict_proba else 1
    declared = {t.name: t for t in config.inputs}, {t.name: t for t in config.outputs}
    for kind, tensors, name in (("input", declared[0], INPUT), ("output", declared[1], OUTPUT)):
        if tensors and set(tensors) != {name}:
            raise InvalidModel(f"a FIL model has one {kind}, '{name}'; {_CONFIG} declares {sorted(tensors)}")
        tensor = tensors.get(name)
        if tensor is not None and tensor.datatype not in ("", "FP32"):
            raise InvalidModel(f"FIL's {kind} '{name}' is FP32; {_CONFIG} says {tensor.datatype}")
    model = FilModel(inner, classifier=classifier, predict_proba=predict_proba, threshold=threshold,
                     max_batch_size=config.max_batch_size, width=width, classes=classes)
    features = model.inputs[0].shape[-1]
    if (tensor := declared[0].get(INPUT)) is not None and tensor.dims and features >= 0 and tensor.dims[-1] != features:
        raise InvalidModel(f"{_CONFIG} gives {INPUT} {tensor.dims[-1]} features; the booster takes {features}")
    if (tensor := declared[1].get(OUTPUT)) is not None and tensor.dims:
        binary_compact = predict_proba and classes == 2 and tensor.dims[-1] == 1
        if tensor.dims[-1] != width and not binary_compact:
            what = f"{classes} class probabilities" if predict_proba else "one value per row"
            raise InvalidModel(f"{_CONFIG} gives {OUTPUT} width {tensor.dims[-1]}; this model answers {what}")
        if binary_compact:
            model.outputs = [TensorSpec(OUTPUT, "FP32", (-1, 1))]
    return model
