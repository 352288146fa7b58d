"""A model from a Triton layout: the backend's own model, with config.pbtxt checked against it.

config.pbtxt may name inputs and outputs, their datatypes and dims, and `max_batch_size`
(> 0: dims leave out a variable batch dimension, and a request's batch may not exceed it).
Where the config and the model both say something they must agree, else the load fails
(InvalidModel) naming what disagrees; where only one says it (TorchScript has no datatypes,
ONNX a dynamic dimension the config fixes), the more precise one is the signature.

`reshape` (the model's shape, where clients send and get `dims`): inputs are reshaped on the
way in and outputs on the way out, the batch dimension kept.

Names: ONNX tensors match by name. PyTorch tensors have no names Triton can see, so config
names map by position: `INPUT__0`/`OUTPUT__1` by the number after `__` (Triton's
convention), other names in the order the config lists them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from runtimes.backends.base import Backend, Device, LoadedModel, TensorSpec
from runtimes.backends.fil_model import FIL_BACKEND, configure_fil
from runtimes.backends.triton_layout import CONFIG_FILE, ConfigTensor, TritonModelConfig
from runtimes.errors import InvalidInput, InvalidModel

_INDEXED_NAME = re.compile(r".*__(\d+)$")


class TritonConfiguredModel(LoadedModel):
    """The backend's model under config.pbtxt's names and shapes; `triton_config` keeps the config."""

    def __init__(self, inner: LoadedModel, config: TritonModelConfig, inputs: list[TensorSpec],
                 outputs: list[TensorSpec], input_names: dict[str, str], output_names: dict[str, str]) -> None:
        self._inner = inner
        self.platform = inner.platform
        self.triton_config = config
        self.inputs = inputs
        self.outputs = outputs
        self._input_names = input_names if any(k != v for k, v in input_names.items()) else None
        self._output_names = output_names if any(k != v for k, v in output_names.items()) else None
        self._all_outputs = [spec.name for spec in outputs]
        self._reshape_in = {t.name: t.reshape for t in config.inputs if t.reshape is not None}
        self._reshape_out = {t.name: t.dims for t in config.outputs if t.reshape is not None}

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        limit = self.triton_config.max_batch_size
        if limit > 0:
            for name, array in inputs.items():
                if array.ndim and array.shape[0] > limit:
                    raise InvalidInput(f"input '{name}': batch of {array.shape[0]} is over {CONFIG_FILE}'s max_batch_size {limit}")
        if self._reshape_in:
            inputs = {k: self._reshaped(k, v, self._reshape_in.get(k)) for k, v in inputs.items()}
        feeds = inputs if self._input_names is None else {self._input_names[k]: v for k, v in inputs.items()}
        names = output_names or self._all_outputs
        if self._output_names is None:
            results = self._inner.infer(feeds, names)
        else:
            everything = self._inner.infer(feeds, [])
            results = {name: everything[self._output_names[name]] for name in names}
        if self._reshape_out:
            results = {k: self._reshaped(k, v, self._reshape_out.get(k)) for k, v in results.items()}
        return results

    def _reshaped(self, name: str, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
        if shape is None:
            return array
        target = (array.shape[0], *shape) if self.triton_config.max_batch_size > 0 and array.ndim else shape
        try:
            return np.asarray(array).reshape(target)
        except ValueError:
            raise InvalidInput(f"'{name}' of shape {list(array.shape)} cannot be reshaped to {list(target)} "
                               f"as {CONFIG_FILE}'s reshape says") from None

    def size_bytes(self) -> int:
        return self._inner.size_bytes()

    def unload(self) -> None:
        self._inner.unload()


class TritonLayoutBackend(Backend):
    """One load from a Triton layout: `inner` loads the file, then the config is applied."""

    def __init__(self, inner: Backend, config: TritonModelConfig) -> None:
        self.inner = inner
        self.config = config
        self.name = inner.name
        self.file_suffixes = inner.file_suffixes
        self.uses_device = inner.uses_device

    def load(self, model_file: Path, device: Device) -> LoadedModel:
        model = self.inner.load(model_file, device)
        if not self.config.from_file:
            return model  # version folders alone: nothing to apply, and no wrapper on the hot path
        try:
            if self.config.backend == FIL_BACKEND:
                return configure_fil(model, self.config)
            return configure(model, self.config)
        except InvalidModel:
            model.unload()
            raise


def configure(model: LoadedModel, config: TritonModelConfig) -> TritonConfiguredModel:
    """`model` under `config`'s signature; InvalidModel naming the first disagreement."""
    positional = model.platform.startswith("pytorch")
    inputs, input_names = _match("input", config, config.inputs, model.inputs, positional)
    outputs, output_names = _match("output", config, config.outputs, model.outputs, positional)
    return TritonConfiguredModel(model, config, inputs, outputs, input_names, output_names)


def _match(kind: str, config: TritonModelConfig, declared: tuple[ConfigTensor, ...], actual: list[TensorSpec],
           positional: bool) -> tuple[list[TensorSpec], dict[str, str]]:
    """The signature and the map from config names to the model's own names."""
    if not declared:
        for spec in actual:
            _check_batch(kind, config, spec)
        return list(actual), {spec.name: spec.name for spec in actual}
    by_name = {spec.name: spec for spec in actual}
    if all(d.name in by_name for d in declared):
        undeclared = [s.name for s in actual if s.name not in {d.name for d in declared}]
        if kind == "input" and undeclared:
            raise InvalidModel(f"the model's input '{undeclared[0]}' is not in {CONFIG_FILE}")
        pairs = [(d, by_name[d.name]) for d in declared]
    elif positional:
        if (actual or kind == "input") and len(actual) != len(declared):
            raise InvalidModel(f"{CONFIG_FILE} declares {len(declared)} {kind}s, the model has {len(actual)} "
                               f"({[s.name for s in actual]})")
        order = _positions(declared)
        pairs = [(d, actual[i] if actual else TensorSpec(f"OUTPUT__{i}", "", ())) for d, i in zip(declared, order)]
    else:
        missing = next(d.name for d in declared if d.name not in by_name)
        raise InvalidModel(f"{CONFIG_FILE} {kind} '{missing}' is not an {kind} of the model (its {kind}s: {sorted(by_name)})")
    specs = []
    for tensor, spec in pairs:
        _check_batch(kind, config, spec)
        specs.append(_merge(kind, config, tensor, spec))
    return specs, {tensor.name: spec.name for tensor, spec in pairs}


def _positions(declared: tuple[ConfigTensor, ...]) -> list[int]:
    indexes = [_INDEXED_NAME.match(d.name) for d in declared]
    numbers = [int(m.group(1)) for m in indexes if m]
    if len(numbers) == len(declared) and sorted(numbers) == list(range(len(declared))):
        return numbers
    return list(range(len(declared)))


def _check_batch(kind: str, config: TritonModelConfig, spec: TensorSpec) -> None:
    if config.max_batch_size > 0 and spec.shape and spec.shape[0] >= 0:
        raise InvalidModel(f"{CONFIG_FILE}'s max_batch_size {config.max_batch_size} needs a variable first dimension, "
                           f"but the model's {kind} '{spec.name}' has shape {list(spec.shape)}")


def _merge(kind: str, config: TritonModelConfig, tensor: ConfigTensor, spec: TensorSpec) -> TensorSpec:
    if tensor.datatype and spec.datatype and tensor.datatype != spec.datatype:
        raise InvalidModel(f"{CONFIG_FILE} says {kind} '{tensor.name}' is {tensor.datatype}, the model's is {spec.datatype}")
    shape = config.exposed_shape(tensor)
    if tensor.reshape is not None:  # the model's shape is the reshape (checked as dims would be); clients use the dims
        _merge(kind, config, ConfigTensor(tensor.name, tensor.datatype, tensor.reshape), spec)
        return TensorSpec(tensor.name, tensor.datatype or spec.datatype, shape)
    if spec.shape:
        agree = len(shape) == len(spec.shape) and all(a < 0 or b < 0 or a == b for a, b in zip(shape, spec.shape))
        if not agree:
            batch = f" (max_batch_size {config.max_batch_size}: a batch dimension first)" if config.max_batch_size > 0 else ""
            raise InvalidModel(f"{CONFIG_FILE} gives {kind} '{tensor.name}' shape {list(shape)}{batch}, "
                               f"the model's is {list(spec.shape)}")
        shape = tuple(a if a >= 0 else b for a, b in zip(shape, spec.shape))
    return TensorSpec(tensor.name, tensor.datatype or spec.datatype, shape)
