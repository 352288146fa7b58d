"""bench/gpu_check.py is how a session with a GPU checks the backends there; keep it working.

On this CPU-only machine it runs its steps with `--device cpu` and a small large-model size.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("meshserve_bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_step_passes_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert _gpu_check().main(["--device", "cpu", "--size-mb", "16", "--cycles", "3", "--cycle-size-mb", "4",
                              "--batching-seconds", "0.3", "--out", str(out)]) == 0
    table = out.read_text()
    for step in ("TorchScript Linear", "torch.export MLP", "TorchScript x*2 FP16", "TorchScript x*2 BF16", "ONNX add",
                 "TorchScript ~16 MB", "ONNX ~16 MB", "TorchScript 3 load/unload cycles", "ONNX 3 load/unload cycles"):
        assert f"| {step} | ok |" in table, table
    assert "| batching on vs off (TorchScript 4x1024 MLP) | ok |" in table, table  # the batched answers equal
    assert "32 callers: off " in table and "mean batch" in table, table
    assert "FAILED" not in table
    assert "every check passed" in capsys.readouterr().out
