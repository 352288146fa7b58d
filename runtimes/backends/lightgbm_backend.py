"""LightGBM backend: a Booster saved as text (`model.txt`, or `model.bst` as MLServer and KServe name it).

Signature, as MLServer's lightgbm runtime has it: one input under any name (metadata calls
it `input-0`), 2-D `[rows, num_feature()]`; one output, `predict`, which is Booster.predict's
value (probabilities for a classifier: `[rows]` for binary, `[rows, classes]` for multiclass).
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from runtimes.backends.base import Backend, Device, LoadedModel, TensorSpec
from runtimes.errors import InvalidInput, InvalidModel

INPUT_NAME = "input-0"
PREDICT = "predict"
#: LightGBM's text model format begins with this line.
TEXT_MAGIC = b"tree"

if TYPE_CHECKING:
    import lightgbm as lgb


def _lightgbm():
    import lightgbm  # on first use: importing it costs a second at every process start

    return lightgbm


class LightGBMModel(LoadedModel):
    platform = "lightgbm"
    any_input_name = True

    def __init__(self, booster: "lgb.Booster", threads: int) -> None:
        self._booster = booster
        self._error = _lightgbm().basic.LightGBMError
        self._threads = threads
        self.inputs = [TensorSpec(INPUT_NAME, "", (-1, booster.num_feature()))]
        classes = int(booster.params.get("num_class") or 1)
        self.outputs = [TensorSpec(PREDICT, "FP64", (-1,) if classes <= 1 else (-1, classes))]

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        (features,) = inputs.values()
        if features.dtype == object:
            raise InvalidInput("LightGBM models take numeric inputs, not BYTES")
        try:
            prediction = np.asarray(self._booster.predict(features, num_threads=self._threads))
        except (self._error, ValueError, TypeError) as error:
            raise InvalidInput(f"the model rejected the inputs: {error}") from None
        return {name: prediction for name in output_names or [PREDICT]}

    def size_bytes(self) -> int:
        return 0  # unmeasured: the manager charges bytes on disk times its size factor

    def unload(self) -> None:
        self._booster = None


class LightGBMBackend(Backend):
    """Loads LightGBM text models on the CPU."""

    name = "lightgbm"
    file_suffixes = (".txt", ".bst")
    versions = ("2", "3", "4")  # LightGBM 2.x-4.x text models

    def __init__(self, threads: int = 1) -> None:
        self._threads = max(1, threads)

    def recognizes(self, model_file: Path) -> bool:
        with model_file.open("rb") as file:
            return file.read(len(TEXT_MAGIC)) == TEXT_MAGIC

    def prepare(self) -> None:
        _lightgbm()

    def load(self, model_file: Path, device: Device) -> LightGBMModel:
        lgb = _lightgbm()
        try:
            booster = lgb.Booster(model_file=str(model_file))
        except (lgb.basic.LightGBMError, ValueError, OSError) as error:
            raise InvalidModel(f"LightGBM cannot load {model_file.name}: {error}") from None
        return LightGBMModel(booster, self._threads)

    # No write_probe: LightGBM is not calibrated at start-up. Probe boosters loaded and
    # unloaded on the runtime's load threads left 16-30 MiB of freed memory that the next
    # models (of any format) reused, hiding their growth, and its cost per model read 20 KiB
    # in some runs and 400 KiB in others. Its models are charged `model_fixed_cost` plus bytes
    # on disk x size_factor.
