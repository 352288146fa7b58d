"""V2 tensors for `meshserve infer` (pure: numpy in, protobuf messages out, and back).

Inputs go as `raw_input_contents` (little-endian, row-major; BYTES elements each with a
4-byte length), which every V2 server accepts; outputs are read from raw contents or
from the typed `contents` fields, whichever the server used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mesh.cli.common import CliError
from protos import grpc_service_pb2 as pb
from protos.v2_datatypes import BF16, CONTENTS_FIELD, V2_TO_NUMPY, dtype_to_v2
from runtimes.datatypes import decode_raw, encode_raw  # the runtime's own raw codec: one for server and client
from runtimes.errors import InvalidInput

__all__ = ["DATATYPES", "datatype_of", "decode_outputs", "encode_input", "read_input", "to_jsonable"]

DATATYPES: dict[str, np.dtype] = V2_TO_NUMPY  # the one V2 table (protos.v2_datatypes), as the runtime uses


def datatype_of(array: np.ndarray) -> str:
    datatype = dtype_to_v2(array.dtype)
    if datatype is None:
        raise CliError(f"the input's numpy dtype {array.dtype} has no V2 datatype")
    return datatype


def read_input(value: str, datatype: str | None) -> np.ndarray:
    """`--input` as an array: a `.npy` file, a `.json` file, or a JSON literal (nested lists).

    `datatype` (a V2 name) converts the values; None keeps a `.npy` file's dtype and makes
    JSON numbers FP32.
    """
    if datatype is not None and datatype not in DATATYPES:
        raise CliError(f"unknown --datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if value.endswith(".npy"):
        try:
            array = np.load(value, allow_pickle=False)
        except FileNotFoundError:
            raise CliError(f"--input file {value!r} does not exist") from None
        except (OSError, ValueError) as error:
            raise CliError(f"--input file {value!r} is not a .npy array: {error}") from None
    else:
        if value.endswith(".json") and Path(value).is_file():
            value = Path(value).read_text()
        try:
            data = json.loads(value)
        except json.JSONDecodeError as error:
            raise CliError(f"--input is neither a .npy file nor JSON: {error.msg} at position {error.pos}") from None
        array = _from_json(data, datatype or "FP32")
    if datatype is not None:
        array = _convert(array, datatype)
    return array


def _from_json(data: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        array = np.array(data, dtype=object)
        flat = [item.encode() if isinstance(item, str) else item for item in array.reshape(-1)]
        if not all(isinstance(item, bytes) for item in flat):
            raise CliError("BYTES input must be strings")
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape)
    try:
        return np.array(data, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError) as error:
        raise CliError(f"--input is not a rectangular array of {datatype} values: {error}") from None


def _convert(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return _from_json(array.tolist(), "BYTES")
    if datatype_of(array) == "BYTES":
        raise CliError(f"--input holds strings, not {datatype} values")
    try:
        return array.astype(DATATYPES[datatype], casting="unsafe")
    except (ValueError, TypeError) as error:
        raise CliError(f"cannot convert --input to {datatype}: {error}") from None


def encode_input(request: pb.ModelInferRequest, name: str, array: np.ndarray) -> None:
    """Add `array` to `request` as input `name` (raw contents)."""
    datatype = datatype_of(array)
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(encode_raw(array))


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, tuple[str, np.ndarray]]:
    """output name -> (datatype, array), in the response's order."""
    outputs: dict[str, tuple[str, np.ndarray]] = {}
    for index, tensor in enumerate(response.outputs):
        datatype, shape = tensor.datatype, list(tensor.shape)
        if datatype not in DATATYPES:
            raise CliError(f"output '{tensor.name}' has an unknown datatype {datatype!r}")
        try:
            if index < len(response.raw_output_contents):
                array = decode_raw(tensor.name, datatype, shape, response.raw_output_contents[index])
            else:
                # FP16 and BF16 have no contents field of their own: servers that send them typed use fp32_contents.
                values = list(getattr(tensor.contents, CONTENTS_FIELD.get(datatype, "fp32_contents")))
                array = (_from_json(values, "BYTES") if datatype == "BYTES"
                         else np.array(values, dtype=DATATYPES[datatype])).reshape(shape)
        except (ValueError, InvalidInput) as error:
            raise CliError(f"output '{tensor.name}' does not match its shape {shape}: {error}") from None
        outputs[tensor.name] = (datatype, array)
    return outputs


def to_jsonable(array: np.ndarray) -> Any:
    """Nested lists of plain numbers (BF16/FP16 as floats) or strings (BYTES as UTF-8 where it is)."""
    if array.dtype == object:
        def text(item):
            try:
                return item.decode() if isinstance(item, bytes) else item
            except UnicodeDecodeError:
                return repr(item)
        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()
    if array.dtype == BF16 or array.dtype.kind == "f":
        return array.astype(np.float64).tolist()
    return array.tolist()
