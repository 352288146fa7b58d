"""Triton's model repository layout: a model folder with `config.pbtxt` and version folders.

    <model>/config.pbtxt        optional: platform/backend, inputs, outputs, max_batch_size, ...
    <model>/1/model.onnx        one folder per version, named by its number
    <model>/2/model.pt
    <model>/1/xgboost.json      a FIL folder (backend "fil"): runtimes.backends.fil_model

This module reads the folder (pure: files and protobuf text, no backend): which version to
serve, which format the config names, and the config itself as a `TritonModelConfig` that
stays on the loaded model (a later batching layer reads `dynamic_batching` from it).
`runtimes.backends.triton_model` checks the config against the loaded model.

Versions: the one the modelKey names (`{"version": "2"}`), else the highest the config's
`version_policy` allows (Triton's default policy serves the latest). Only one version is
served per model id: ModelMesh addresses models by id, not by version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from protos import model_config_pb2 as config_pb
from runtimes.backends.fil_model import FIL_BACKEND, FIL_FILENAMES, FIL_MODEL_TYPES
from runtimes.errors import InvalidModel

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
#: The modelKey field naming the version folder to serve.
VERSION_KEY = "version"

# Triton's platform and backend names, and the canonical model type each means here.
_PLATFORMS = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "pytorch"}
_BACKENDS = {"onnxruntime": "onnx", "pytorch": "pytorch"}  # and "fil", by its model_type parameter


@dataclass(frozen=True)
class ConfigTensor:
    """An input or output as config.pbtxt declares it: V2 datatype ("" when TYPE_INVALID),
    dims without the batch dimension when max_batch_size > 0 (Triton's convention), and
    `reshape`: the model's own shape when it differs from the dims clients use (also
    without the batch dimension), None when they are the same."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DynamicBatching:
    """config.pbtxt's `dynamic_batching` block, as given (a batcher applies it, not this module)."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0


@dataclass(frozen=True)
class TritonModelConfig:
    """What the runtime takes from config.pbtxt, and the version folder it serves."""

    name: str
    model_type: str  # "onnx", "pytorch", or "" when the config names neither platform nor backend
    max_batch_size: int
    inputs: tuple[ConfigTensor, ...]
    outputs: tuple[ConfigTensor, ...]
    dynamic_batching: DynamicBatching | None
    default_model_filename: str
    version: str
    version_folder: Path
    from_file: bool = True  # False: the folder has version folders but no config.pbtxt
    backend: str = ""  # config.pbtxt's backend, as written ("fil": runtimes.backends.fil_model)
    parameters: Mapping[str, str] = field(default_factory=dict)  # its `parameters`, string values

    def exposed_shape(self, tensor: ConfigTensor) -> tuple[int, ...]:
        """The full shape clients see: a variable batch dimension first when max_batch_size > 0."""
        return (-1, *tensor.dims) if self.max_batch_size > 0 else tensor.dims


def is_triton_layout(path: Path) -> bool:
    """A folder holding config.pbtxt or at least one version folder (a numbered subfolder)."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or bool(_versions(path)))


def find_layout(path: Path) -> Path | None:
    """The Triton model folder at `path`, or the one model folder of a Triton repository
    there (`<repository>/<model>/config.pbtxt`, as KServe's Triton storage URIs point at);
    None when `path` is neither."""
    if is_triton_layout(path):
        return path
    if not path.is_dir():
        return None
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and (entries[0] / CONFIG_FILE).is_file():
        return entries[0]
    return None


def read_layout(folder: Path, model_key: dict) -> TritonModelConfig:
    """The config (empty when there is no config.pbtxt) with the version folder chosen;
    InvalidModel naming what is wrong with the config or the versions."""
    from_file = (folder / CONFIG_FILE).is_file()
    message = _parse(folder / CONFIG_FILE) if from_file else config_pb.ModelConfig()
    _refuse_unsupported(message)
    version = _choose_version(folder, message, str(model_key.get(VERSION_KEY) or "").strip())
    batching = None
    if message.HasField("dynamic_batching"):
        b = message.dynamic_batching
        batching = DynamicBatching(tuple(b.preferred_batch_size), b.max_queue_delay_microseconds,
                                   b.preserve_ordering, b.priority_levels, b.default_priority_level)
    parameters = {key: value.string_value for key, value in message.parameters.items()}
    default_model_filename = message.default_model_filename
    if message.backend == FIL_BACKEND and not default_model_filename:
        default_model_filename = FIL_FILENAMES.get(parameters.get("model_type", ""), "")
        if not (folder / version / default_model_filename).is_file():
            default_model_filename = ""  # FIL's own name is not there: the format's files are looked for
    return TritonModelConfig(
        name=message.name or folder.name,
        model_type=_model_type(message),
        max_batch_size=message.max_batch_size,
        inputs=tuple(_tensor(t) for t in message.input),
        outputs=tuple(_tensor(t) for t in message.output),
        dynamic_batching=batching,
        default_model_filename=default_model_filename,
        version=version,
        version_folder=folder / version,
        from_file=from_file,
        backend=message.backend,
        parameters=parameters,
    )


def _parse(path: Path) -> config_pb.ModelConfig:
    text = path.read_text(errors="replace")
    message = config_pb.ModelConfig()
    try:
        text_format.Parse(text, message)
        return message
    except text_format.ParseError as error:
        if "no field named" not in str(error) and "has no value named" not in str(error):
            raise InvalidModel(f"{CONFIG_FILE} is not a valid Triton model configuration: {error}") from None
        unknown = str(error)
    # Triton has many more fields (instance_group, optimization, model_warmup, ...) that change
    # how Triton runs a model, not what it computes: parse again, skipping what is not read here.
    message = config_pb.ModelConfig()
    try:
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as error:
        raise InvalidModel(f"{CONFIG_FILE} is not a valid Triton model configuration: {error}") from None
    log.info("%s: fields this runtime does not use are ignored (first: %s)", path, unknown)
    return message


def _refuse_unsupported(message: config_pb.ModelConfig) -> None:
    if message.HasField("sequence_batching") or message.HasField("ensemble_scheduling"):
        which = message.WhichOneof("scheduling_choice")
        raise InvalidModel(f"{CONFIG_FILE} asks for {which}, which this runtime does not do")


def _model_type(message: config_pb.ModelConfig) -> str:
    platform, backend = message.platform, message.backend
    if backend == FIL_BACKEND and not platform:
        fil_type = message.parameters["model_type"].string_value if "model_type" in message.parameters else ""
        if fil_type not in FIL_MODEL_TYPES:
            raise InvalidModel(f"{CONFIG_FILE}: a FIL model's parameters must give model_type "
                               f"({', '.join(sorted(FIL_MODEL_TYPES))}), not {fil_type!r}")
        return FIL_MODEL_TYPES[fil_type]
    by_platform = _PLATFORMS.get(platform) if platform else None
    by_backend = _BACKENDS.get(backend) if backend else None
    if platform and by_platform is None or backend and by_backend is None:
        named = f"platform '{platform}'" if platform and by_platform is None else f"backend '{backend}'"
        raise InvalidModel(f"{CONFIG_FILE} names {named}; this runtime serves Triton's "
                           f"{', '.join(sorted(_PLATFORMS))} (backends {', '.join(sorted(_BACKENDS))})")
    if by_platform and by_backend and by_platform != by_backend:
        raise InvalidModel(f"{CONFIG_FILE}: platform '{platform}' and backend '{backend}' disagree")
    return by_platform or by_backend or ""


def _tensor(tensor) -> ConfigTensor:
    reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    return ConfigTensor(tensor.name, _datatype(tensor.data_type), tuple(tensor.dims), reshape)


def _datatype(data_type: int) -> str:
    name = config_pb.DataType.Name(data_type)
    return {"TYPE_INVALID": "", "TYPE_STRING": "BYTES"}.get(name, name.removeprefix("TYPE_"))


def _versions(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _choose_version(folder: Path, message: config_pb.ModelConfig, wanted: str) -> str:
    present = _versions(folder)
    if not present:
        raise InvalidModel(f"{folder.name} has {CONFIG_FILE} but no version folder (1/, 2/, ...)")
    policy = message.version_policy.WhichOneof("policy_choice")
    allowed = [v for v in present if v in set(message.version_policy.specific.versions)] if policy == "specific" else present
    if wanted:
        if not wanted.isdigit() or int(wanted) not in present:
            raise InvalidModel(f"version '{wanted}' is not in {folder.name} (versions: {present})")
        if int(wanted) not in allowed:
            raise InvalidModel(f"version {wanted} is not among the versions {CONFIG_FILE}'s version_policy "
                               f"serves ({list(message.version_policy.specific.versions)})")
        return _folder_name(folder, int(wanted))
    if not allowed:
        raise InvalidModel(f"none of the versions {CONFIG_FILE}'s version_policy serves "
                           f"({list(message.version_policy.specific.versions)}) is in {folder.name} (versions: {present})")
    return _folder_name(folder, allowed[-1])


def _folder_name(folder: Path, version: int) -> str:
    """The folder's own spelling of `version` ("1", or "001")."""
    return next(p.name for p in sorted(folder.iterdir()) if p.is_dir() and p.name.isdigit() and int(p.name) == version)
