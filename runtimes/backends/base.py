"""The backend interface: one class per model format.

A `Backend` finds the model file in what the puller fetched and loads it into a
`LoadedModel`; a `LoadedModel` runs inference and reports its size. Both are
blocking by design: the model manager calls them from worker threads, and ONNX
Runtime and torch release the GIL while they compute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model's signature; -1 marks a dynamic dimension.

    `datatype` is a V2 name ("FP32", ...), or "" when the format does not say
    (TorchScript without a schema): then any datatype is accepted.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Device:
    """Where a model runs: "cpu" or "cuda" (with an index)."""

    kind: str = "cpu"
    index: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"


class LoadedModel(ABC):
    """A model in memory. `infer` may be called from several threads at once."""

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run the model; `inputs` are already checked against the signature.

        Returns the requested outputs (every output when `output_names` is empty).
        Raises InvalidInput for what the model itself rejects.
        """

    @abstractmethod
    def size_bytes(self) -> int:
        """Memory this model holds, measured after load; 0 when the backend cannot measure it
        (the manager then uses bytes on disk times its size factor)."""

    @abstractmethod
    def unload(self) -> None:
        """Release the model's memory. Called once, with no request in flight."""


class Backend(ABC):
    """Loads one model format. A new format is one subclass registered in `backends`."""

    name: str  # canonical model type, e.g. "onnx"
    file_suffixes: tuple[str, ...]

    @abstractmethod
    def load(self, model_file: Path, device: Device) -> LoadedModel:
        """Load `model_file`; raise InvalidModel with the backend's reason if it cannot."""

    def find_model_file(self, path: Path) -> Path | None:
        """The model file in `path` (a file, or a folder searched recursively), or None."""
        if path.is_file():
            return path if path.name.endswith(self.file_suffixes) else None
        candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(self.file_suffixes))
        preferred = [p for p in candidates if p.stem == "model"]
        return (preferred or candidates or [None])[0]
