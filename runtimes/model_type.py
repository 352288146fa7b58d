"""Which model format a load asks for (pure).

The type comes from `modelType` ("onnx", "pytorch", optionally ":version") or,
as ModelMesh sends it, from the `modelKey` JSON's `model_type` {name, version}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runtimes.errors import InvalidInput

# Names users and ModelMesh manifests write, folded to the backend's canonical name.
_ALIASES = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxruntime_onnx": "onnx",
    "pytorch": "pytorch",
    "torch": "pytorch",
    "torchscript": "pytorch",
    "pytorch_libtorch": "pytorch",
    "pt2": "pytorch",
}


@dataclass(frozen=True)
class ModelType:
    name: str  # canonical: "onnx" or "pytorch"; "" when the files must tell
    version: str = ""


def parse_model_key(model_key: str | None) -> dict:
    """ModelMesh's modelKey JSON as a dict ({} when empty); InvalidInput if it is not a JSON object."""
    if not model_key:
        return {}
    try:
        value = json.loads(model_key)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"modelKey is not valid JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(value, dict):
        raise InvalidInput("modelKey must be a JSON object")
    return value


def resolve_model_type(model_type: str, model_key: dict) -> ModelType:
    """The requested model type; `modelType` wins over the key's `model_type`."""
    name, _, version = (model_type or "").partition(":")
    if not name:
        key_type = model_key.get("model_type") or {}
        if isinstance(key_type, str):
            name, _, version = key_type.partition(":")
        elif isinstance(key_type, dict):
            name, version = str(key_type.get("name") or ""), str(key_type.get("version") or "")
        else:
            raise InvalidInput("modelKey.model_type must be a string or {name, version}")
    name = name.strip().lower()
    if not name:
        return ModelType("", version)
    try:
        return ModelType(_ALIASES[name], version)
    except KeyError:
        supported = ", ".join(sorted(set(_ALIASES.values())))
        raise InvalidInput(f"unsupported model type '{name}'; this runtime serves {supported}") from None
