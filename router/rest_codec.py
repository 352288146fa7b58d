"""KServe V2 REST JSON <-> V2 protobuf messages, for the REST front (no I/O).

Requests: `{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data",
"parameters"}], "outputs": [{"name", "parameters"}]}`; `data` may be nested or flat
(row-major), BYTES elements are strings. Triton's binary extension is understood both
ways: with an `Inference-Header-Content-Length` of N the first N bytes are the JSON
and each input with `parameters.binary_data_size` takes its bytes from what follows;
an output requested with `parameters.binary_data: true` (or every output, with the
request parameter `binary_data_output: true`) comes back after the JSON, named by its
`binary_data_size`. Tensors travel to the instance as raw contents.

Every problem with the input raises `BadTensor` (HTTP 400) naming the input and what
was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import BYTES_LENGTH, CONTENTS_FIELD, ELEMENT_SIZE, FLOAT_DATATYPES, V2_TO_NUMPY

__all__ = ["BadTensor", "Decoded", "flatten", "metadata_to_json", "output_data", "parse_json", "request_from_json",
           "response_to_json", "tensor_bytes"]

_TRANSPORT_PARAMETERS = frozenset({"binary_data", "binary_data_size", "binary_data_output"})
_INT64 = range(-2**63, 2**63)  # what an int64 field (a parameter, a shape dimension) holds


class BadTensor(ValueError):
    """The JSON body or a tensor in it is malformed."""


@dataclass
class Decoded:
    """A ModelInferRequest built from JSON, and which outputs the caller wants as binary."""

    request: pb.ModelInferRequest
    binary_outputs: set[str] = field(default_factory=set)
    all_binary: bool = False


def _parameters(into, values: Any, where: str) -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise BadTensor(f"{where}: 'parameters' must be an object")
    for key, value in values.items():
        if key in _TRANSPORT_PARAMETERS:
            continue
        if isinstance(value, bool):
            into[key].bool_param = value
        elif isinstance(value, int):
            if value not in _INT64:
                raise BadTensor(f"{where}: parameter '{key}' {value} does not fit an int64")
            into[key].int64_param = value
        elif isinstance(value, float):
            into[key].double_param = value
        elif isinstance(value, str):
            into[key].string_param = value
        else:
            raise BadTensor(f"{where}: parameter '{key}' must be a boolean, number or string")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body; BadTensor when it is not JSON (or nests too deep to read)."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadTensor(f"the body is not valid JSON: {error}") from None


def flatten(data: Any) -> list:
    """Nested lists -> one flat list, row-major (a scalar -> a list of one)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _bytes_element(item: Any, where: str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:  # JSON's \ud800 escapes make lone surrogates
            raise BadTensor(f"{where}: a BYTES element is not valid Unicode (a lone surrogate)") from None
    raise BadTensor(f"{where}: BYTES elements must be strings, got {type(item).__name__}")


def tensor_bytes(datatype: str, data: Any, count: int, where: str) -> bytes:
    """Raw V2 contents of `data` (nested or flat) as `count` elements of `datatype`;
    BadTensor naming `where` when they do not fit."""
    flat = flatten(data)
    if len(flat) != count:
        raise BadTensor(f"{where}: shape holds {count} elements but data has {len(flat)}")
    if datatype == "BYTES":
        parts = []
        for item in flat:
            encoded = _bytes_element(item, where)
            parts.append(BYTES_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    dtype, is_float = V2_TO_NUMPY[datatype], datatype in FLOAT_DATATYPES  # BF16's numpy kind is "V", not "f"
    kinds = (bool,) if datatype == "BOOL" else (int, float) if is_float else (int,)
    for item in flat:
        if not isinstance(item, kinds) or (datatype != "BOOL" and isinstance(item, bool)):
            raise BadTensor(f"{where}: {datatype} data must hold {'booleans' if datatype == 'BOOL' else 'numbers'}, "
                            f"got {item!r}")
    if dtype.kind in "iu" and flat:
        # Compared as Python ints: a round trip through numpy misses 2**63 as INT64 or -1 as
        # UINT64 (each wraps to a value that converts back to itself).
        limits = np.iinfo(dtype)
        if min(flat) < limits.min or max(flat) > limits.max:
            raise BadTensor(f"{where}: values do not fit {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            # Integers straight into their dtype (they fit, checked above): inferred, [0, 2**63 + 1]
            # became float64 and lost its last bits.
            array = np.asarray(flat, dtype=np.float64 if is_float else dtype)
            converted = array.astype(dtype, casting="unsafe")
    except (OverflowError, FloatingPointError, ValueError, TypeError):
        raise BadTensor(f"{where}: values do not fit {datatype}") from None
    return converted.tobytes()


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63
                                              for d in value):
        raise BadTensor(f"{where}: 'shape' must be a list of non-negative int64 integers")
    return value


def request_from_json(model_name: str, header: bytes, binary: bytes = b"") -> Decoded:
    """Build the ModelInferRequest for `model_name` from the JSON `header` (and the binary
    tail of a binary-extension request)."""
    body = parse_json(header)
    try:
        return _request(model_name, body, binary)
    except UnicodeEncodeError:  # a name, id or string parameter protobuf cannot encode
        raise BadTensor("a string in the body is not valid Unicode (a lone surrogate \\u escape)") from None


def _request(model_name: str, body: Any, binary: bytes) -> Decoded:
    if not isinstance(body, dict):
        raise BadTensor("the body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadTensor("'inputs' must be a non-empty list")
    request = pb.ModelInferRequest(model_name=model_name)
    if "id" in body:
        if not isinstance(body["id"], str):
            raise BadTensor("'id' must be a string")
        request.id = body["id"]
    _parameters(request.parameters, body.get("parameters"), "request")
    offset = 0
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise BadTensor(f"input {index}: must be an object")
        name, datatype = tensor.get("name"), tensor.get("datatype")
        where = f"input '{name}'" if isinstance(name, str) else f"input {index}"
        if not isinstance(name, str) or not name:
            raise BadTensor(f"{where}: 'name' must be a non-empty string")
        if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
            raise BadTensor(f"{where}: unknown datatype {datatype!r}")
        shape = _shape(tensor.get("shape"), where)
        count = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadTensor(f"{where}: 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise BadTensor(f"{where}: binary_data_size {size!r} does not fit the {len(binary) - offset} binary bytes left")
            raw = binary[offset:offset + size]
            offset += size
            if datatype != "BYTES" and len(raw) != count * ELEMENT_SIZE[datatype]:
                raise BadTensor(f"{where}: {len(raw)} binary bytes do not hold {count} {datatype} elements")
        else:
            if "data" not in tensor:
                raise BadTensor(f"{where}: 'data' is missing")
            raw = tensor_bytes(datatype, tensor["data"], count, where)
        entry = request.inputs.add(name=name, datatype=datatype, shape=shape)
        _parameters(entry.parameters, parameters, where)
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise BadTensor(f"{len(binary) - offset} binary bytes after the last input are not used by any input")
    decoded = Decoded(request)
    decoded.all_binary = bool((body.get("parameters") or {}).get("binary_data_output", False))
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadTensor("'outputs' must be a list")
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise BadTensor(f"output {index}: must be an object with a 'name'")
            entry = request.outputs.add(name=output["name"])
            _parameters(entry.parameters, output.get("parameters"), f"output '{output['name']}'")
            if (output.get("parameters") or {}).get("binary_data"):
                decoded.binary_outputs.add(output["name"])
    return decoded


def _parameter_value(parameter: pb.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _output_values(datatype: str, raw: bytes) -> list:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos + 4 <= len(raw):
            (length,) = BYTES_LENGTH.unpack_from(raw, pos)
            pos += 4
            values.append(raw[pos:pos + length].decode("utf-8", "replace"))
            pos += length
        return values
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ValueError(f"the instance answered with an unknown datatype {datatype!r}")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype in ("BF16", "FP16"):
        array = array.astype(np.float32)
    return array.tolist()


def output_data(response: pb.ModelInferResponse, index: int) -> list:
    """Output `index`'s elements as a flat JSON-ready list, sent raw or typed."""
    tensor = response.outputs[index]
    if index < len(response.raw_output_contents):
        return _output_values(tensor.datatype, response.raw_output_contents[index])
    # FP16 and BF16 have no contents field of their own: a server that sends them typed uses fp32_contents.
    values = list(getattr(tensor.contents, CONTENTS_FIELD.get(tensor.datatype, "fp32_contents")))
    return [v.decode("utf-8", "replace") for v in values] if tensor.datatype == "BYTES" else values


def response_to_json(data: bytes, binary_outputs: set[str], all_binary: bool) -> tuple[bytes, bytes]:
    """(JSON bytes, binary tail) of a serialized ModelInferResponse."""
    response = pb.ModelInferResponse.FromString(data)
    body: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        body["model_version"] = response.model_version
    if response.id:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = {k: _parameter_value(v) for k, v in response.parameters.items()}
    outputs, tail = [], []
    for index, tensor in enumerate(response.outputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        parameters = {k: _parameter_value(v) for k, v in tensor.parameters.items()}
        if index < len(response.raw_output_contents) and (all_binary or tensor.name in binary_outputs):
            raw = response.raw_output_contents[index]
            parameters["binary_data_size"] = len(raw)
            tail.append(raw)
        else:
            entry["data"] = output_data(response, index)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    body["outputs"] = outputs
    return json.dumps(body, separators=(",", ":")).encode(), b"".join(tail)


def metadata_to_json(data: bytes) -> dict[str, Any]:
    """A serialized ModelMetadataResponse as V2 REST JSON."""
    response = pb.ModelMetadataResponse.FromString(data)

    def tensors(items) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"name": response.name, "versions": list(response.versions), "platform": response.platform,
            "inputs": tensors(response.inputs), "outputs": tensors(response.outputs)}
