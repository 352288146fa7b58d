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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from runtimes.backends.triton_layout import TritonModelConfig


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


@dataclass(frozen=True)
class Probe:
    """A tiny model of a backend's format and a request it answers: what the runtime loads and
    runs before the backend's first load to measure the backend's fixed memory cost per model
    (`runtimes.calibration`)."""

    model_file: Path
    inputs: dict[str, np.ndarray]


class LoadedModel(ABC):
    """A model in memory. `infer` may be called from several threads at once."""

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: A model of one input that takes it under any name (as MLServer's sklearn, xgboost and
    #: lightgbm runtimes do): the request's one tensor is checked against `inputs[0]`.
    any_input_name: bool = False
    #: The config.pbtxt of a Triton layout the model came from (max_batch_size, dynamic_batching).
    triton_config: "TritonModelConfig | None" = None

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run the model; `inputs` are already checked against the signature.

        Returns the requested outputs (every output when `output_names` is empty).
        Raises InvalidInput for what the model itself rejects.
        """

    @abstractmethod
    def size_bytes(self) -> int:
        """Memory this model's own data takes (weights, trees, parameters), measured after load;
        0 when the backend cannot measure it (the manager then uses bytes on disk times its size
        factor). The fixed cost every model of the backend pays besides (sessions, objects,
        buffers of a first run) is the runtime's to add: it is calibrated at the backend's first load."""

    @abstractmethod
    def unload(self) -> None:
        """Release the model's memory. Called once, with no request in flight."""


class Backend(ABC):
    """Loads one model format. A new format is one subclass registered in `backends`."""

    name: str  # canonical model type, e.g. "onnx"
    file_suffixes: tuple[str, ...]
    #: Format versions advertised as `mt:<name>:<version>`, as ServingRuntimes list them.
    versions: tuple[str, ...] = ()
    #: Its models live on a GPU device when the runtime has one (their device memory is
    #: measured around the load); False: CPU only, whatever the device.
    uses_device: bool = False

    @abstractmethod
    def load(self, model_file: Path, device: Device) -> LoadedModel:
        """Load `model_file`; raise InvalidModel with the backend's reason if it cannot."""

    def prepare(self) -> None:
        """Import the backend's library, once, before its first load or probe (blocking, called
        from a worker thread). A backend whose library is costly to import does it here, not at
        registration, so a runtime that never serves its format never pays it; the runtime
        measures the memory this takes and charges it as the backend's one-time overhead."""

    def write_probe(self, folder: Path) -> Probe | None:
        """Write a tiny model of this format into `folder` (an empty folder of its own) for the
        calibration of the fixed cost per model (`runtimes.calibration`); None: this
        backend is not calibrated (its models are charged the runtime's `model_fixed_cost`)."""
        return None

    def recognizes(self, model_file: Path) -> bool:
        """Whether the file's content looks like this format. Formats whose suffixes others
        share (.json, .bst, .txt) look at the first bytes; the default trusts the suffix."""
        return True

    def find_model_file(self, path: Path, sniff: bool = False) -> Path | None:
        """The model file in `path` (a file, or a folder searched recursively), or None.

        With `sniff` (no model type was named) only files this backend `recognizes` count;
        otherwise they come first, then files named `model.*`, then path order.
        """
        if path.is_file():
            matches = [path] if path.name.endswith(self.file_suffixes) else []
        else:
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(self.file_suffixes))
        recognized = {p for p in matches if self.recognizes(p)}
        if sniff:
            matches = [p for p in matches if p in recognized]
        ranked = sorted(matches, key=lambda p: (p not in recognized, p.stem != "model", p))
        return ranked[0] if ranked else None
