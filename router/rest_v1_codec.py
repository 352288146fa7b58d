"""KServe V1 JSON (`{"instances": [...]}` -> `{"predictions": [...]}`) <-> V2 protobuf (no I/O).

V1 carries no names, datatypes or shapes: they come from the model's V2 metadata
(`Signature`); an input whose metadata names no datatype (scikit-learn models take what
they are given) gets the JSON values' own: strings BYTES, booleans BOOL, integers
INT64, other numbers FP64. As KServe's own servers read V1 (`kserve.utils.get_predict_input`),
`inputs` is taken when present, else `instances`; either is a list with one entry per
instance. A model with one input gets one tensor: the instances stacked, so the batch
dimension is `len(instances)` and the rest must be rectangular and fit the input's
fixed dimensions. A model with several inputs takes each instance as an object naming
them (`{"a": ..., "b": ...}`, KServe's dict instances), one tensor per input.

`predictions` is one output, in its own shape (nested lists, one entry per instance for
a batched output): the one named `predict` when the model has it (MLServer's sklearn
convention: what `model.predict` returns), else the model's first output. V1 has no
field to name another; V2 REST serves every output.

Every problem with the body raises `BadTensor` (HTTP 400) saying what was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import V2_TO_NUMPY
from router.rest_codec import BadTensor, output_data, parse_json, tensor_bytes

__all__ = ["PREDICT_OUTPUT", "Signature", "TensorSpec", "predict_request", "predictions_json", "read_instances"]

#: The output V1 answers with when a model has it (MLServer's sklearn runtime's default output).
PREDICT_OUTPUT = "predict"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size; () also when the model does not say


@dataclass(frozen=True)
class Signature:
    """What V1 needs of a model's V2 metadata: its inputs and outputs, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(cls, data: bytes) -> Signature:
        """From a serialized ModelMetadataResponse."""
        response = pb.ModelMetadataResponse.FromString(data)

        def specs(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

        return cls(specs(response.inputs), specs(response.outputs))

    @property
    def prediction_output(self) -> str | None:
        """The output V1 returns (None: the model lists none; the first one it answers with)."""
        names = [o.name for o in self.outputs]
        if PREDICT_OUTPUT in names:
            return PREDICT_OUTPUT
        return names[0] if names else None


def read_instances(body: bytes) -> list:
    """The instances of a V1 predict body: `inputs` if present (as KServe), else `instances`."""
    parsed = parse_json(body)
    if not isinstance(parsed, dict):
        raise BadTensor("the body must be a JSON object with 'instances'")
    field = "inputs" if "inputs" in parsed else "instances"
    if field not in parsed:
        raise BadTensor("the body has no 'instances' (or 'inputs') list")
    instances = parsed[field]
    if not isinstance(instances, list) or not instances:
        raise BadTensor(f"'{field}' must be a non-empty list, one entry per instance")
    return instances


def _count(n: int) -> str:
    return f"{n} value" if n == 1 else f"{n} values"


def _dims_and_flat(data: list, where: str) -> tuple[list[int], list]:
    """The shape of rectangular nested lists and their elements, row-major; BadTensor if ragged."""
    dims = [len(data)]
    level = data
    while level and isinstance(level[0], list):
        size = len(level[0])
        for index, item in enumerate(level):
            if not isinstance(item, list) or len(item) != size:
                got = _count(len(item)) if isinstance(item, list) else f"the single value {item!r}"
                at, first = ((f"instance {index}", "instance 0") if len(dims) == 1
                             else (f"a list at depth {len(dims)}", "the first"))
                raise BadTensor(f"{where}: ragged instances: {at} has {got} where {first} has {_count(size)}")
        dims.append(size)
        level = [value for item in level for value in item]
    if any(isinstance(value, list) for value in level):
        raise BadTensor(f"{where}: ragged instances: lists and single values mixed at depth {len(dims)}")
    return dims, level


def _check_shape(spec: TensorSpec, dims: list[int], model: str) -> None:
    if not spec.shape:
        return  # the model does not say; the instance checks
    where = f"model '{model}' input '{spec.name}'"
    if len(dims) != len(spec.shape) or any(want >= 0 and want != got for want, got in zip(spec.shape, dims)):
        per_instance = list(spec.shape[1:])
        raise BadTensor(f"{where} takes shape {list(spec.shape)} (each instance {per_instance}, -1: any size); "
                        f"the instances make {dims} (each instance {dims[1:]})")


def _datatype_of(flat: list) -> str:
    """For an input whose model names no datatype (a scikit-learn model takes what it is
    given): what JSON's values are, as numpy would read them."""
    if flat and isinstance(flat[0], str):
        return "BYTES"
    if flat and all(isinstance(value, bool) for value in flat):
        return "BOOL"
    if all(isinstance(value, int) for value in flat):
        return "INT64"
    return "FP64"


def _tensor(request: pb.ModelInferRequest, spec: TensorSpec, data: list, model: str) -> None:
    if spec.datatype and spec.datatype not in V2_TO_NUMPY:
        raise BadTensor(f"model '{model}' input '{spec.name}' has datatype {spec.datatype!r}, which V1 cannot fill")
    where = f"input '{spec.name}'"
    dims, flat = _dims_and_flat(data, where)
    _check_shape(spec, dims, model)
    datatype = spec.datatype or _datatype_of(flat)
    raw = tensor_bytes(datatype, flat, math.prod(dims), where)
    request.inputs.add(name=spec.name, datatype=datatype, shape=dims)
    request.raw_input_contents.append(raw)


def predict_request(model: str, instances: list, signature: Signature) -> pb.ModelInferRequest:
    """The ModelInferRequest for V1 `instances` of `model`, asking for the prediction output."""
    if not signature.inputs:
        raise BadTensor(f"model '{model}' lists no inputs in its metadata: V1 cannot map instances onto it")
    request = pb.ModelInferRequest(model_name=model)
    names = [spec.name for spec in signature.inputs]
    as_objects = all(isinstance(instance, dict) for instance in instances)
    if len(names) > 1 or (as_objects and all(set(i) == {names[0]} for i in instances)):
        if not as_objects:
            raise BadTensor(f"model '{model}' has {len(names)} inputs ({', '.join(names)}): "
                            f"give each instance as an object naming them")
        for index, instance in enumerate(instances):
            unknown = sorted(set(instance) - set(names))
            missing = [n for n in names if n not in instance]
            if unknown or missing:
                raise BadTensor(f"instance {index}: " + "; ".join(
                    ([f"no input named {', '.join(repr(u) for u in unknown)}"] if unknown else [])
                    + ([f"missing {', '.join(repr(m) for m in missing)}"] if missing else []))
                    + f" (model '{model}' inputs: {', '.join(names)})")
        for spec in signature.inputs:
            _tensor(request, spec, [instance[spec.name] for instance in instances], model)
    else:
        if any(isinstance(instance, dict) for instance in instances):
            raise BadTensor(f"model '{model}' has one input '{names[0]}': give each instance as its value "
                            f"(or as an object with just '{names[0]}')")
        _tensor(request, signature.inputs[0], instances, model)
    output = signature.prediction_output
    if output is not None:
        request.outputs.add(name=output)
    return request


def _nested(values: list, shape: list[int], datatype: str) -> Any:
    if len(shape) <= 1:
        return values
    if math.prod(shape) != len(values):
        raise ValueError(f"the instance answered {len(values)} {datatype} values for shape {shape}")
    # An object array keeps each value as it is: numpy's own choice for [0, 2**63 + 1] is float64.
    return np.array(values, dtype=object).reshape(shape).tolist()


def predictions_json(data: bytes, signature: Signature) -> bytes:
    """`{"predictions": ...}` of a serialized ModelInferResponse: the prediction output, nested."""
    response = pb.ModelInferResponse.FromString(data)
    if not response.outputs:
        raise ValueError(f"model '{response.model_name}' answered with no outputs")
    wanted = signature.prediction_output
    index = next((i for i, t in enumerate(response.outputs) if t.name == wanted), 0)
    tensor = response.outputs[index]
    predictions = _nested(output_data(response, index), list(tensor.shape), tensor.datatype)
    return json.dumps({"predictions": predictions}, separators=(",", ":")).encode()
