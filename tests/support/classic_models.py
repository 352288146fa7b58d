"""scikit-learn, XGBoost and LightGBM models fitted in the test on generated data, saved for real.

Each builder returns the saved file and the fitted object, whose own predict the served
model is compared with. The libraries are imported inside, so a test module that needs one
can `pytest.importorskip` it first.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np

FEATURES = 4


def v2_input(array: np.ndarray, name: str = "input-0", datatype: str = "FP64"):
    """A tritonclient gRPC input holding `array` (`input-0`: the name the backends' metadata gives)."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def data(rows: int = 120, seed: int = 0, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Features in [0, 1) and integer labels that depend on them (so a model can learn them)."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, FEATURES))
    score = x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2]
    edges = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    return x, np.digitize(score, edges)


def _ready(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sklearn_logistic(path: Path):
    """LogisticRegression on two classes, saved with joblib."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    x, y = data()
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, _ready(path))
    return path, model


def sklearn_pipeline_with_text_labels(path: Path):
    """StandardScaler + RandomForestClassifier on three classes named by strings, saved with plain pickle."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data(classes=3, seed=1)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=5, random_state=0)).fit(x, labels)
    _ready(path).write_bytes(pickle.dumps(model))
    return path, model


def sklearn_regressor(path: Path):
    """LinearRegression (no predict_proba), saved with joblib."""
    import joblib
    from sklearn.linear_model import LinearRegression

    x, _ = data(seed=2)
    model = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5, 3.0]))
    joblib.dump(model, _ready(path))
    return path, model


def xgboost_classifier(path: Path, classes: int = 2):
    """XGBClassifier, saved in the format `path`'s suffix names (.json, .ubj; else UBJSON)."""
    import xgboost as xgb

    x, y = data(classes=classes, seed=3)
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3, random_state=0).fit(x, y)
    model.save_model(str(_ready(path)))
    return path, model


def xgboost_regressor_booster(path: Path):
    """A Booster from xgb.train (reg:squarederror), saved as `path` says."""
    import xgboost as xgb

    x, _ = data(seed=4)
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3}, xgb.DMatrix(x, label=x.sum(axis=1)),
                        num_boost_round=10)
    with warnings.catch_warnings():  # .bst/.model: XGBoost says it writes UBJSON, which is the point
        warnings.simplefilter("ignore", UserWarning)
        booster.save_model(str(_ready(path)))
    return path, booster


def lightgbm_regressor(path: Path):
    """LGBMRegressor's booster, saved as LightGBM text."""
    import lightgbm as lgb

    x, _ = data(seed=5)
    model = lgb.LGBMRegressor(n_estimators=10, min_child_samples=5, verbose=-1).fit(x, x[:, 0] * 2 - x[:, 3])
    model.booster_.save_model(str(_ready(path)))
    return path, model.booster_


def lightgbm_multiclass(path: Path):
    """LGBMClassifier on three classes; its booster saved as LightGBM text."""
    import lightgbm as lgb

    x, y = data(classes=3, seed=6)
    model = lgb.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1).fit(x, y)
    model.booster_.save_model(str(_ready(path)))
    return path, model


#: config.pbtxt of a Triton FIL folder as modelmesh-serving's `xgboost/mushroom-fil` sample has it
#: (the pre-24.x parameter names: output_class for is_classifier; FIL's performance knobs, which
#: change how FIL runs and not what it computes).
FIL_MUSHROOM_CONFIG = """\
backend: "fil"
max_batch_size: 8192
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ %(features)d ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ %(width)d ] } ]
instance_group [ { kind: KIND_CPU } ]
parameters [
  { key: "model_type" value: { string_value: "%(model_type)s" } },
  { key: "predict_proba" value: { string_value: "%(predict_proba)s" } },
  { key: "output_class" value: { string_value: "true" } },
  { key: "threshold" value: { string_value: "0.5" } },
  { key: "algo" value: { string_value: "ALGO_AUTO" } },
  { key: "storage_type" value: { string_value: "AUTO" } }
]
dynamic_batching { }
"""


def fil_xgboost_classifier(folder: Path, features: int = 126, predict_proba: bool = True, width: int | None = None):
    """A Triton FIL folder (`config.pbtxt`, `1/xgboost.json`) holding a binary XGBoost classifier
    on `features` 0/1 features (the mushroom sample's one-hot shape); returns the folder and the booster."""
    import xgboost as xgb

    rng = np.random.default_rng(7)
    x = (rng.random((200, features)) < 0.3).astype(np.float32)
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0.5).astype(np.int64)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, label=y), num_boost_round=8)
    booster.save_model(str(_ready(folder / "1" / "xgboost.json")))
    width = width if width is not None else (2 if predict_proba else 1)
    (folder / "config.pbtxt").write_text(FIL_MUSHROOM_CONFIG % {
        "features": features, "width": width, "model_type": "xgboost_json",
        "predict_proba": "true" if predict_proba else "false"})
    return folder, booster
