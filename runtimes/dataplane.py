"""The V2 inference service, free of any transport.

The gRPC servicer (and a REST handler, later) convert their messages with
`converters`, call this service, and convert the reply. Checks of a request
against the model's signature live here, so every transport gets the same
INVALID_ARGUMENT messages.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from runtimes.backends import LoadedModel, TensorSpec
from runtimes.backends.triton_layout import DynamicBatching
from runtimes.datatypes import v2_datatype_of
from runtimes.errors import InvalidInput
from runtimes.model_manager import ModelEntry, ModelManager, State

SERVER_NAME = "meshserve"
# Triton extension names for what this server really implements.
EXTENSIONS = ("model_configuration", "statistics", "parameters")


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferRequest:
    model_id: str
    inputs: list[InferInput]
    output_names: list[str] = field(default_factory=list)
    request_id: str = ""
    parameters: dict = field(default_factory=dict)
    deadline: float | None = None  # time.perf_counter() seconds by which it must have run; None: none


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferResponse:
    model_id: str
    outputs: list[InferOutput]
    request_id: str = ""


@dataclass(frozen=True)
class ModelSignature:
    name: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    version: str = "1"  # a Triton folder's version served; "1" for a plain model
    max_batch_size: int = 0  # config.pbtxt's; 0: shapes include the batch dimension
    dynamic_batching: DynamicBatching | None = None


class SignatureIndex:
    """A model's inputs by name and its output names, built once per loaded model.

    Every request is checked against it; building the lookups per request cost
    more than the checks themselves for small models.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.inputs = {spec.name: spec for spec in model.inputs}
        self.outputs = frozenset(spec.name for spec in model.outputs)
        # A model that takes its one input under any name: that spec checks whatever comes.
        self.any_name = model.inputs[0] if model.any_input_name and len(model.inputs) == 1 else None

    def check_inputs(self, model_id: str, inputs: list[InferInput]) -> None:
        """InvalidInput naming the input and what was expected, for the first mismatch."""
        by_name = self.inputs
        if self.any_name is not None and len(inputs) == 1:
            by_name = {inputs[0].name: self.any_name}
        seen = set()
        for tensor in inputs:
            spec = by_name.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"model '{model_id}' has no input '{tensor.name}'; its inputs are {sorted(by_name)}")
            if tensor.name in seen:
                raise InvalidInput(f"input '{tensor.name}' is given twice")
            seen.add(tensor.name)
            if spec.datatype and tensor.datatype != spec.datatype:
                raise InvalidInput(f"input '{tensor.name}': datatype {tensor.datatype}, expected {spec.datatype}")
            if spec.shape and not _shape_matches(tensor.shape, spec.shape):
                raise InvalidInput(f"input '{tensor.name}': shape {list(tensor.shape)}, expected {list(spec.shape)} (-1: any size)")
        if len(seen) != len(by_name):
            missing = [name for name in by_name if name not in seen]
            raise InvalidInput(f"model '{model_id}' needs inputs {missing} that the request does not give")

    def check_outputs(self, model_id: str, names: list[str]) -> None:
        for name in names:
            if self.outputs and name not in self.outputs:
                raise InvalidInput(f"model '{model_id}' has no output '{name}'; its outputs are {sorted(self.outputs)}")


def _shape_matches(shape: list[int], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(e < 0 or e == s for s, e in zip(shape, expected))


class InferenceService:
    """ModelInfer, metadata, readiness, config and statistics over a ModelManager."""

    def __init__(self, manager: ModelManager, version: str) -> None:
        self._manager = manager
        self.version = version
        self._indexes: weakref.WeakKeyDictionary[LoadedModel, SignatureIndex] = weakref.WeakKeyDictionary()

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, self.version, EXTENSIONS

    def model_ready(self, model_id: str) -> bool:
        entry = self._manager.entries().get(model_id)
        return entry is not None and entry.state is State.LOADED

    def signature(self, model_id: str) -> ModelSignature:
        entry = self._manager.get(model_id)
        model = entry.model
        config = model.triton_config
        version, max_batch_size, batching = "1", 0, None
        if config is not None:
            version, max_batch_size, batching = config.version, config.max_batch_size, config.dynamic_batching
        if entry.batcher is not None:  # what the model's requests really run under
            policy = entry.batcher.policy
            max_batch_size = max_batch_size or policy.max_batch_size
            batching = DynamicBatching(policy.preferred_batch_sizes, policy.max_queue_delay_us)
        return ModelSignature(model_id, model.platform, list(model.inputs), list(model.outputs), version,
                              max_batch_size, batching)

    def statistics(self, model_id: str) -> list[tuple[str, ModelEntry]]:
        if model_id:
            return [(model_id, self._manager.get(model_id))]
        return sorted((m, e) for m, e in self._manager.entries().items() if e.model is not None)

    async def infer(self, request: InferRequest) -> InferResponse:
        checked_at = time.perf_counter_ns()
        entry = self._manager.get(request.model_id)
        index = self._index(entry.model)
        index.check_inputs(request.model_id, request.inputs)
        index.check_outputs(request.model_id, request.output_names)
        arrays = {tensor.name: tensor.data for tensor in request.inputs}
        input_ns = time.perf_counter_ns() - checked_at
        results = await self._manager.run(request.model_id, arrays, list(request.output_names), request.deadline)
        output_started = time.perf_counter_ns()
        outputs = [_output(name, array) for name, array in results.items()]
        entry.stats.record_conversions(input_ns, time.perf_counter_ns() - output_started)
        return InferResponse(request.model_id, outputs, request.request_id)

    def _index(self, model: LoadedModel) -> SignatureIndex:
        index = self._indexes.get(model)
        if index is None:
            index = self._indexes[model] = SignatureIndex(model)
        return index


def _output(name: str, array: np.ndarray) -> InferOutput:
    if type(array) is not np.ndarray:  # backends may hand back scalars or lists
        array = np.asarray(array)
    return InferOutput(name, v2_datatype_of(array), list(array.shape), array)
