"""Which model format a load asks for (pure).

In order: the `modelKey` JSON's `model_type` {name, version}, as ModelMesh sends it;
else the `mt:<format>[:<version>]` label of a `modelType` label expression
("mt:onnx|pv:grpc-v2", as modelmesh-serving writes a model's type; `rt:` and `pv:` labels
say where the model goes, not what it is); else a plain `modelType` ("onnx",
"pytorch", "sklearn", "xgboost", "lightgbm", "triton", optionally ":version"; as ModelMesh and
KServe spell them). No format at all ("rt:triton-2.x" alone): the files tell.
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
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "triton": "triton",  # a Triton model folder: its config.pbtxt or files say onnx or pytorch
}


@dataclass(frozen=True)
class ModelType:
    name: str  # canonical: "onnx", "pytorch", "sklearn", "xgboost", "lightgbm", "triton"; "" when the files must tell
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


#: Prefixes of runtime labels; a `modelType` starting with one (or holding `|`) is a label expression.
_LABEL_PREFIXES = ("rt:", "mt:", "pv:")


def _from_key(model_key: dict) -> tuple[str, str]:
    key_type = model_key.get("model_type") or {}
    if isinstance(key_type, str):
        name, _, version = key_type.partition(":")
        return name, version
    if isinstance(key_type, dict):
        return str(key_type.get("name") or ""), str(key_type.get("version") or "")
    raise InvalidInput("modelKey.model_type must be a string or {name, version}")


def _from_model_type(model_type: str) -> tuple[str, str]:
    text = (model_type or "").strip()
    if "|" in text or text.lower().startswith(_LABEL_PREFIXES):
        formats = [label.strip()[3:] for label in text.split("|") if label.strip().lower().startswith("mt:")]
        text = formats[0] if formats else ""
    name, _, version = text.partition(":")
    return name, version


def resolve_model_type(model_type: str, model_key: dict) -> ModelType:
    """The requested model type: the key's `model_type` name, else `modelType`'s (see the module docstring)."""
    name, version = _from_key(model_key)
    if not name.strip():
        name, version = _from_model_type(model_type)
    name = name.strip().lower()
    if not name:
        return ModelType("", version)
    try:
        return ModelType(_ALIASES[name], version)
    except KeyError:
        supported = ", ".join(sorted(set(_ALIASES.values())))
        raise InvalidInput(f"unsupported model type '{name}'; this runtime serves {supported}") from None
