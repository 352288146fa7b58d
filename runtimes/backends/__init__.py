"""Model backends, one per format, chosen from the model type and the files found.

ONNX is always served. PyTorch (the `torch` extra) and scikit-learn, XGBoost and LightGBM
(the `classic` extra) are registered only when their library imports, so the runtime runs
without them. A Triton model folder (`config.pbtxt`, version folders) is a layout, not a
format: `triton_layout` reads it, the format's backend loads the file, `triton_model`
applies the config.

Which backend, without a model type: the first (ONNX, PyTorch, scikit-learn, XGBoost,
LightGBM) that finds a file it recognizes. Suffixes that formats share are told apart by
content: a LightGBM model is text starting with `tree`; an XGBoost `.json` starts with
`{"learner"`; any other `.bst`/`.model` is XGBoost's. With a model type, that backend alone
looks, by suffix, and a file it cannot read fails with its library's reason.

May import: `protos` (Triton's ModelConfig), `runtimes.errors`, `runtimes.datatypes`,
`runtimes.sizes`, and each backend's own library.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from runtimes.backends.base import Backend, Device, LoadedModel, Probe, TensorSpec
from runtimes.backends.triton_layout import find_layout, read_layout
from runtimes.backends.triton_model import TritonLayoutBackend
from runtimes.errors import InvalidModel

log = logging.getLogger(__name__)

__all__ = ["TRITON", "Backend", "BackendRegistry", "Device", "LoadedModel", "Probe", "TensorSpec"]

#: The model type of a Triton layout whose config or files say which format it holds.
TRITON = "triton"
#: Versions of the `triton` type, as KServe's Triton ServingRuntime lists them.
TRITON_VERSIONS = ("2",)
#: Formats a Triton layout may hold here (Triton's onnxruntime and pytorch backends).
_LAYOUT_FORMATS = ("onnx", "pytorch")

# The optional backends, in the order they look for files: module, class, the libraries
# it needs, and what to install. The classic ones import their library on first load
# (the registry only checks it is installed), so a runtime that serves none starts as fast.
_OPTIONAL = (
    ("runtimes.backends.torch_backend", "TorchBackend", ("torch",), "the torch extra"),
    ("runtimes.backends.sklearn_backend", "SklearnBackend", ("sklearn", "joblib"), "the classic extra"),
    ("runtimes.backends.xgboost_backend", "XGBoostBackend", ("xgboost",), "the classic extra"),
    ("runtimes.backends.lightgbm_backend", "LightGBMBackend", ("lightgbm",), "the classic extra"),
)


class BackendRegistry:
    """The backends this runtime can use, by canonical model type."""

    def __init__(self, backends: list[Backend]) -> None:
        self._by_type = {b.name: b for b in backends}

    @classmethod
    def default(cls, threads_per_model: int = 1) -> "BackendRegistry":
        from runtimes.backends.onnx_backend import OnnxBackend

        backends: list[Backend] = [OnnxBackend(threads_per_model)]
        for module_name, class_name, libraries, extra in _OPTIONAL:
            missing = [name for name in libraries if importlib.util.find_spec(name) is None]
            try:
                if missing:
                    raise ImportError(name=missing[0])
                module = importlib.import_module(module_name)
            except ImportError as error:
                log.info("%s is not installed (%s): %s models are not served", error.name, extra, class_name)
                continue
            backends.append(getattr(module, class_name)(threads_per_model))
        return cls(backends)

    @property
    def model_types(self) -> list[str]:
        """Canonical model types served: every backend's, and `triton` when a layout format is."""
        return sorted(self.formats())

    def backends(self) -> list[Backend]:
        """Every backend registered."""
        return list(self._by_type.values())

    def get(self, name: str) -> Backend:
        """The backend of a canonical model type (KeyError if it is not served)."""
        return self._by_type[name]

    def formats(self) -> dict[str, tuple[str, ...]]:
        """Each model type served and the format versions it advertises (`mt:<type>:<version>`)."""
        formats = {name: backend.versions for name, backend in self._by_type.items()}
        if any(name in self._by_type for name in _LAYOUT_FORMATS):
            formats[TRITON] = TRITON_VERSIONS
        return formats

    def select(self, model_type: str, path: Path, model_key: dict | None = None) -> tuple[Backend, Path]:
        """The backend and model file for a load; InvalidModel naming what was looked for.

        A Triton layout (`path` holds config.pbtxt or version folders, or is a repository of
        one such model) gets one version folder looked at, and a backend that applies the
        config after its load.
        """
        if model_type and model_type != TRITON and model_type not in self._by_type:
            raise InvalidModel(f"model type '{model_type}' is not served here (install the extra for it)")
        if not path.exists():
            raise InvalidModel(f"model path {path} does not exist")
        layout = find_layout(path)
        if layout is not None:
            return self._select_in_layout(model_type, layout, model_key or {})
        if model_type == TRITON:
            raise InvalidModel(f"model type 'triton' needs a Triton model folder ({path.name} has no config.pbtxt "
                               "and no version folder such as 1/)")
        return self._find(model_type, path, [model_type] if model_type else list(self._by_type))

    def _select_in_layout(self, model_type: str, folder: Path, model_key: dict) -> tuple[Backend, Path]:
        config = read_layout(folder, model_key)
        wanted = "" if model_type == TRITON else model_type
        if config.model_type:
            if wanted and wanted != config.model_type:
                raise InvalidModel(f"model type '{wanted}' was asked for, but config.pbtxt's platform/backend "
                                   f"is {config.model_type}'s")
            if config.model_type not in self._by_type:
                raise InvalidModel(f"config.pbtxt names a {config.model_type} model, which is not served here "
                                   "(install the extra for it)")
            wanted = config.model_type
        allowed = [wanted] if wanted else [t for t in self._by_type if model_type != TRITON or t in _LAYOUT_FORMATS]
        if config.default_model_filename:
            backend, model_file = self._find(wanted, config.version_folder / config.default_model_filename, allowed)
        else:
            backend, model_file = self._find(wanted, config.version_folder, allowed)
        return TritonLayoutBackend(backend, config), model_file

    def _find(self, model_type: str, path: Path, allowed: list[str]) -> tuple[Backend, Path]:
        if not path.exists():
            raise InvalidModel(f"{path.parent.name}/{path.name} (config.pbtxt's default_model_filename) does not exist")
        candidates = [self._by_type[t] for t in allowed]
        for backend in candidates:
            model_file = backend.find_model_file(path, sniff=not model_type)
            if model_file is not None:
                return backend, model_file
        wanted = ", ".join(dict.fromkeys(s for b in candidates for s in b.file_suffixes))
        unrecognized = sorted({p.name for b in candidates for p in _suffix_matches(b, path)})
        hint = f"; {', '.join(unrecognized)} matched by name, not by content" if unrecognized else ""
        raise InvalidModel(f"no model file ({wanted}) found in {path.name}{hint}")


def _suffix_matches(backend: Backend, path: Path) -> list[Path]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [p for p in files if p.name.endswith(backend.file_suffixes)]
