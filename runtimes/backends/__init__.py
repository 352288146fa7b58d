"""Model backends, one per format, chosen from the model type and the files found.

PyTorch is optional (the `torch` extra): without it, only ONNX models load.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtimes.backends.base import Backend, Device, LoadedModel, Probe, TensorSpec
from runtimes.errors import InvalidModel

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendRegistry", "Device", "LoadedModel", "Probe", "TensorSpec"]


class BackendRegistry:
    """The backends this runtime can use, by canonical model type."""

    def __init__(self, backends: list[Backend]) -> None:
        self._by_type = {b.name: b for b in backends}

    @classmethod
    def default(cls, threads_per_model: int = 1) -> "BackendRegistry":
        from runtimes.backends.onnx_backend import OnnxBackend

        backends: list[Backend] = [OnnxBackend(threads_per_model)]
        try:
            from runtimes.backends.torch_backend import TorchBackend
        except ImportError:
            log.info("torch is not installed: PyTorch models are not served")
        else:
            backends.append(TorchBackend(threads_per_model))
        return cls(backends)

    @property
    def model_types(self) -> list[str]:
        return sorted(self._by_type)

    def backends(self) -> list[Backend]:
        return list(self._by_type.values())

    def select(self, model_type: str, path: Path) -> tuple[Backend, Path]:
        """The backend and model file for a load; InvalidModel naming what was looked for."""
        if model_type:
            backend = self._by_type.get(model_type)
            if backend is None:
                raise InvalidModel(f"model type '{model_type}' is not served here (install the extra for it)")
            candidates = [backend]
        else:
            candidates = list(self._by_type.values())
        if not path.exists():
            raise InvalidModel(f"model path {path} does not exist")
        for backend in candidates:
            model_file = backend.find_model_file(path)
            if model_file is not None:
                return backend, model_file
        wanted = ", ".join(s for b in candidates for s in b.file_suffixes)
        raise InvalidModel(f"no model file ({wanted}) found in {path.name}")
