"""Latency of scikit-learn, XGBoost and LightGBM models served by a runtime, against the library itself.

What it measures: for each of a LogisticRegression (joblib), an XGBClassifier (JSON, 8 trees)
and a LightGBM regressor (text, 10 trees), fitted here on the tests' generated data, the
median and p99 wall time of one ModelInfer (tritonclient's sync gRPC client, one caller,
`--rows` rows of 4 features, `predict` only) against a real `meshserve runtime` process on
loopback; and, in the same run, the median time of the library's own predict on the same
rows in this process (the baseline: what the model costs with no serving at all). The ratio
served/library says how much of a request's time is the serving path (gRPC, checks,
conversions, the worker thread) rather than the model. The first row, the tests' tiny ONNX
model (y = x + 1, FP32 [rows, 4]) through the same runtime and client, is the serving path's
own floor: a format's p50 minus it is what that format's model and conversions add.

Caveat: client and runtime share the machine's cores (2 on the project's development
machine); the output says how many there were.

    python bench/classic_formats.py [--requests 500] [--rows 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from tests.support import classic_models, models  # noqa: E402
from tests.support.runtime_process import start_runtime_process  # noqa: E402


def _timed(call, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e6)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        built = {
            "sklearn": classic_models.sklearn_logistic(root / "sklearn" / "model.joblib"),
            "xgboost": classic_models.xgboost_classifier(root / "xgboost" / "model.json"),
            "lightgbm": classic_models.lightgbm_regressor(root / "lightgbm" / "model.txt"),
        }
        x = np.random.default_rng(0).random((args.rows, classic_models.FEATURES))
        runtime = start_runtime_process(root / "runtime", capacity="256MiB")
        try:
            rows = []
            with grpcclient.InferenceServerClient(runtime.address) as client:
                onnx = models.add_onnx(root / "onnx" / "model.onnx")
                runtime.load("onnx", onnx.parent, "onnx")
                floor = grpcclient.InferInput("x", [args.rows, 4], "FP32")
                floor.set_data_from_numpy(x.astype(np.float32))
                _timed(lambda: client.infer("onnx", [floor]), 50)
                served = _timed(lambda: client.infer("onnx", [floor]), args.requests)
                rows.append(("onnx add", statistics.median(served), np.percentile(served, 99), float("nan")))
                for name, (path, model) in built.items():
                    runtime.load(name, path.parent, name)
                    tensor = grpcclient.InferInput("input-0", list(x.shape), "FP64")
                    tensor.set_data_from_numpy(x)
                    _timed(lambda: client.infer(name, [tensor]), 50)  # warm-up (first runs, inline promotion)
                    served = _timed(lambda: client.infer(name, [tensor]), args.requests)
                    library = _timed(lambda: model.predict(x), args.requests)
                    rows.append((name, statistics.median(served), np.percentile(served, 99), statistics.median(library)))
        finally:
            runtime.stop()
    print(f"{args.requests} requests of {args.rows} row(s) each, one caller, {os.cpu_count()} cores")
    print(f"{'format':<10} {'served p50 us':>14} {'served p99 us':>14} {'library p50 us':>15} {'served/library':>15}")
    for name, p50, p99, library in rows:
        if library != library:  # the ONNX floor has no library baseline
            print(f"{name:<10} {p50:>14.0f} {p99:>14.0f} {'-':>15} {'-':>15}")
        else:
            print(f"{name:<10} {p50:>14.0f} {p99:>14.0f} {library:>15.0f} {p50 / library:>15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
