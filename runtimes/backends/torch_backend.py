"""PyTorch backend: TorchScript (`.pt`, `.torchscript`) and `torch.export` programs (`.pt2`).

torch itself is imported on the first load (`prepare`), not when the backend registers:
importing it costs seconds and ~100 MiB at every start of a runtime that may never serve a
PyTorch model. What is done with torch lives in `torch_model`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from runtimes.backends.base import Backend, Device, LoadedModel, Probe

if TYPE_CHECKING:
    from runtimes.backends import torch_model


class TorchBackend(Backend):
    """Loads TorchScript and torch.export programs onto the CPU or a CUDA device
    (sizes: `torch_model.load_model`)."""

    name = "pytorch"
    file_suffixes = (".pt2", ".pt", ".torchscript")
    versions = ("1", "2")  # "1" as ModelMesh's and KServe's runtimes list PyTorch; "2" for torch.export
    uses_device = True

    def __init__(self, threads: int = 1) -> None:
        self._threads = max(1, threads)
        self._cuda_lock = threading.Lock()
        self._torch_model: "torch_model | None" = None
        self._importing = threading.Lock()  # loads run on several threads

    def prepare(self) -> None:
        self._library()

    def _library(self):
        with self._importing:
            if self._torch_model is None:
                from runtimes.backends import torch_model

                torch_model.torch.set_num_threads(self._threads)
                self._torch_model = torch_model
        return self._torch_model

    def load(self, model_file: Path, device: Device) -> LoadedModel:
        return self._library().load_model(model_file, device, self._cuda_lock)

    def write_probe(self, folder: Path) -> Probe:
        return self._library().write_probe(folder)
