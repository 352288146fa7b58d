"""scikit-learn backend: an estimator or Pipeline saved with joblib or pickle.

Files: `model.joblib`, `model.pkl`, `model.pickle` (joblib.load reads both kinds).
Loading one runs code from the file: model storage must be trusted (as KServe and
MLServer say of theirs).

Signature, as MLServer's sklearn runtime has it: one input, taken under any name
(metadata calls it `input-0`), 2-D `[rows, n_features_in_]`; outputs `predict`, and
`predict_proba` when the estimator has it and the request names it (a request that names
no output gets `predict` only, as MLServer answers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.backends.base import Backend, Device, LoadedModel, Probe, TensorSpec
from runtimes.backends.held_arrays import array_bytes
from runtimes.datatypes import v2_datatype_of
from runtimes.errors import InvalidInput, InvalidModel

INPUT_NAME = "input-0"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


class SklearnModel(LoadedModel):
    platform = "sklearn"
    any_input_name = True

    def __init__(self, estimator) -> None:
        self._estimator = estimator
        self._size = array_bytes(estimator)  # its coefficients, trees, support vectors
        features = getattr(estimator, "n_features_in_", None)
        self.inputs = [TensorSpec(INPUT_NAME, "", (-1, int(features) if features else -1))]
        classes = getattr(estimator, "classes_", None)
        label_type = v2_datatype_of(np.asarray(classes)) if classes is not None and np.ndim(classes) == 1 else ""
        targets = getattr(estimator, "n_outputs_", 1)
        self.outputs = [TensorSpec(PREDICT, label_type, (-1,) if targets == 1 else (-1, int(targets)))]
        if hasattr(estimator, PREDICT_PROBA):
            width = len(classes) if classes is not None and np.ndim(classes) == 1 else -1
            self.outputs.append(TensorSpec(PREDICT_PROBA, "FP64", (-1, width)))

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        (features,) = inputs.values()
        results = {}
        for name in output_names or [PREDICT]:
            try:
                results[name] = np.asarray(getattr(self._estimator, name)(features))
            except (ValueError, TypeError) as error:
                raise InvalidInput(f"the model rejected the inputs: {error}") from None
        return results

    def size_bytes(self) -> int:
        return self._size

    def unload(self) -> None:
        self._estimator = None


class SklearnBackend(Backend):
    """Loads joblib/pickle files holding anything with `predict` (estimators, Pipelines)."""

    name = "sklearn"
    file_suffixes = (".joblib", ".pkl", ".pickle")
    versions = ("0", "1")  # scikit-learn 0.x and 1.x, as ModelMesh's and KServe's runtimes list them

    def __init__(self, threads: int = 1) -> None:
        pass  # an estimator keeps the n_jobs it was saved with

    def prepare(self) -> None:
        import joblib  # on the first load, not at start: importing scikit-learn costs a second
        import sklearn.base

        del joblib, sklearn

    def load(self, model_file: Path, device: Device) -> SklearnModel:
        import joblib  # on first use: importing scikit-learn costs a second at every process start

        try:
            estimator = joblib.load(model_file)
        except Exception as error:  # unpickling raises whatever the bytes lead to
            raise InvalidModel(f"joblib cannot load {model_file.name}: {type(error).__name__}: {error}") from None
        if not callable(getattr(estimator, PREDICT, None)):
            raise InvalidModel(f"{model_file.name} holds a {type(estimator).__name__}, which has no predict()")
        _check_fitted(model_file, estimator)
        return SklearnModel(estimator)

    def write_probe(self, folder: Path) -> Probe:
        """A LogisticRegression on four features, the commonest small scikit-learn model."""
        import joblib
        from sklearn.linear_model import LogisticRegression

        x = np.arange(32, dtype=np.float64).reshape(8, 4) % 5
        path = folder / "model.joblib"
        joblib.dump(LogisticRegression().fit(x, np.arange(8) % 2), path)
        return Probe(path, {INPUT_NAME: np.zeros((1, 4))})


def _check_fitted(model_file: Path, estimator) -> None:
    """InvalidModel for an estimator saved before `fit` (else every request would fail as if its input were wrong)."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError as error:
        raise InvalidModel(f"{model_file.name}: {error}") from None
    except TypeError:
        pass  # not a scikit-learn estimator, only something with predict(): nothing to check
