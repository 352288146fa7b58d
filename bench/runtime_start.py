"""How long a `meshserve runtime` takes to be READY, and its resident memory then, with size
calibration on (the default: each backend calibrates at its first load) and off
(`--model-fixed-cost 0`), and how long the first load of a model of each format takes (the
backend's import and calibration happen there).

Each start is a fresh process on loopback; the figures are medians of `--starts` starts, so
compare them within one run (the machine's load moves them all).

    python bench/runtime_start.py [--starts 3] [--no-first-loads]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def first_load_models(root: Path) -> dict[str, Path]:
    """One small model of each format that is installed: format -> folder."""
    from tests.support import models

    found = {"onnx": models.add_onnx(root / "onnx" / "model.onnx").parent}
    try:
        from tests.support import classic_models

        found["sklearn"] = classic_models.sklearn_logistic(root / "sklearn" / "model.joblib")[0].parent
    except ImportError:
        pass
    try:
        found["pytorch"] = models.torchscript_linear(root / "pytorch" / "model.pt")[0].parent
    except ImportError:
        pass
    return found


def one_start(work: Path, extra: list[str], loads: dict[str, Path]) -> tuple[float, int, dict[str, float]]:
    from tests.support.runtime_process import start_runtime_process

    started = time.perf_counter()
    runtime = start_runtime_process(work, *extra)
    ready_s = time.perf_counter() - started
    try:
        rss = runtime.rss_bytes()
        load_s = {}
        for model_type, path in loads.items():
            began = time.perf_counter()
            runtime.load(f"first-{model_type}", path, model_type)
            load_s[model_type] = time.perf_counter() - began
    finally:
        runtime.stop()
    return ready_s, rss, load_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="starts of each kind (default 3)")
    parser.add_argument("--no-first-loads", action="store_true", help="only time the starts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-start-") as tmp:
        work = Path(tmp)
        loads = {} if args.no_first_loads else first_load_models(work / "models")
        firsts = " | ".join(f"first {t} load p50" for t in loads)
        print(f"| calibration | READY p50 | RSS at READY p50 | {firsts} |")
        print("|---" * (3 + len(loads)) + "|")
        for label, extra in (("on (default)", []), ("off (--model-fixed-cost 0)", ["--model-fixed-cost", "0"])):
            runs = [one_start(work / f"rt-{label[:3]}-{i}", extra, loads) for i in range(args.starts)]
            ready = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            firsts = [statistics.median(r[2][t] for r in runs) for t in loads]
            print(f"| {label} | {ready:.2f} s | {rss / 2**20:.0f} MiB | "
                  + " | ".join(f"{s:.2f} s" for s in firsts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
