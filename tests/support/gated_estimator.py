"""A scikit-learn-style estimator that stands in for a slow model: `predict` marks that it
started (a new file in `started_dir`) and then waits until the file `gate` exists (at most
`limit_s`), so a test decides when a call in flight finishes, with no timing involved.
It answers `X[:, 0] + offset`, so a test can tell which copy answered.

Saved with joblib and loaded by a runtime process through its scikit-learn backend; the
runtime imports this module to unpickle it (runtime processes start in the repository root).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

#: How often a waiting predict looks at the gate (it stands in for compute, not for a test's wait).
POLL_S = 0.01


class GatedEstimator:
    n_features_in_ = 1

    def __init__(self, gate: Path, started_dir: Path, offset: float = 0.0, limit_s: float = 30.0) -> None:
        self.gate = str(gate)
        self.started_dir = str(started_dir)
        self.offset = offset
        self.limit_s = limit_s

    def predict(self, features):
        (Path(self.started_dir) / uuid.uuid4().hex).touch()
        until = time.monotonic() + self.limit_s
        while not Path(self.gate).exists() and time.monotonic() < until:
            time.sleep(POLL_S)
        return np.asarray(features, dtype=np.float64)[:, 0] + self.offset


def gated_model(folder: Path, gate: Path, started_dir: Path, offset: float = 0.0) -> Path:
    """`folder/model.joblib` holding a GatedEstimator; returns the folder."""
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    started_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(GatedEstimator(gate, started_dir, offset), folder / "model.joblib")
    return folder


def started(started_dir: Path) -> int:
    """How many predict calls have started."""
    return sum(1 for _ in Path(started_dir).iterdir())
