"""The scikit-learn backend's size of a model: the bytes of the arrays the fitted estimator
holds, checked against numpy's own counts of the arrays the test reads out of it."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes.backends.held_arrays import array_bytes

pytest.importorskip("sklearn")


def _data(rows: int = 400, features: int = 6):
    rng = np.random.default_rng(0)
    return rng.random((rows, features)), rng.integers(0, 3, rows)  # random labels: deep trees


def test_plain_objects_containers_and_views():
    weights = np.ones((10, 10))  # 800 bytes

    class Holder:
        def __init__(self):
            self.weights = weights
            self.row = weights[0]  # a view: no bytes of its own
            self.parts = [np.zeros(3, np.int32), {"bias": np.zeros(2, np.float32)}, (weights,)]
            self.name = "h"

    assert array_bytes(Holder()) == 800 + 12 + 8
    assert array_bytes([Holder(), Holder()]) == 800 + 2 * (12 + 8)  # the shared array counts once


def test_a_linear_model_counts_its_coefficients():
    from sklearn.linear_model import LogisticRegression

    x, y = _data()
    model = LogisticRegression(max_iter=500).fit(x, y)
    expected = model.coef_.nbytes + model.intercept_.nbytes + model.classes_.nbytes + model.n_iter_.nbytes
    assert array_bytes(model) == expected


def test_a_forest_in_a_pipeline_counts_every_trees_nodes():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=7, random_state=0)).fit(x, y)
    forest = model[-1]
    tree_bytes = sum(t.tree_.__getstate__()["nodes"].nbytes + t.tree_.value.nbytes for t in forest.estimators_)
    assert tree_bytes > 7 * 10_000  # deep trees: nodes dominate
    counted = array_bytes(model)
    assert tree_bytes <= counted <= tree_bytes + 4096  # plus the scaler's and the forest's small arrays


def test_the_sklearn_backend_reports_the_arrays_as_the_models_size(tmp_path):
    import joblib
    from sklearn.tree import DecisionTreeClassifier

    from runtimes.backends import Device
    from runtimes.backends.sklearn_backend import SklearnBackend

    x, y = _data()
    tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    joblib.dump(tree, tmp_path / "model.joblib", compress=3)  # compressed: the file says little
    loaded = SklearnBackend().load(tmp_path / "model.joblib", Device())
    nodes = tree.tree_.__getstate__()["nodes"].nbytes + tree.tree_.value.nbytes
    assert nodes <= loaded.size_bytes() <= nodes + 1024
    assert loaded.size_bytes() > (tmp_path / "model.joblib").stat().st_size


@pytest.mark.parametrize("backend_name", ["sklearn", "xgboost"])
def test_classic_probes_load_and_answer(tmp_path, backend_name):
    from runtimes.backends import BackendRegistry, Device

    backends = {b.name: b for b in BackendRegistry.default().backends()}
    if backend_name not in backends:
        pytest.skip(f"{backend_name} is not installed")
    backend = backends[backend_name]
    probe = backend.write_probe(tmp_path)
    model = backend.load(probe.model_file, Device())
    assert model.infer(probe.inputs, [])["predict"].shape[0] == 1
