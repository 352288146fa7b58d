"""Registry records: the small JSON documents stored under a fabric's prefix (pure).

- `ModelRecord`    at `models/<id>`: what to load (type, storage) and where copies
  were claimed or failed; written by registration and by the cache-miss claim
  (compare-and-set on the key's mod revision).
- `VModelRecord`   at `vmodels/<id>`: an alias and its transition (active -> target).
- `InstanceRecord` at `instances/<id>`, bound to the instance's lease: its addresses
  (model-runtime SPI, V2 inference), runtime labels, capacity, memory, copies held with last-used times and in-flight
  counts, rates. An instance with a GPU also has its device memory (`device_*`), apart
  from host memory; absent (0) in a record of an instance without one, or an older writer's. Published on significant change and at most every few seconds, never
  per request.

Decoding is strict about types and tolerant of unknown fields, so a newer writer
does not break an older reader. A malformed document raises `RecordError` naming
the key; callers log it and treat the record as absent rather than crash.
Units: bytes, milliseconds since the epoch (`*_ms`), requests per minute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from mesh.domain.errors import RecordError
from mesh.domain.placement import CopyView, InstanceView, ModelView

__all__ = ["CopyClaim", "HeldCopy", "InstanceRecord", "LoadFailure", "ModelRecord", "RecordError",
           "VModelRecord", "decode", "encode", "formats_of", "from_document", "parse_model_key", "to_document"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CopyClaim:
    """A copy of a model that an instance was asked to hold (`state`: loading or loaded)."""

    state: str
    since_ms: int


@dataclass(frozen=True)
class LoadFailure:
    """Why a load of the model failed on one instance; expires after `expires_ms`."""

    reason: str
    time_ms: int
    expires_ms: int


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    model_type: str
    storage_path: str
    storage_key: str = ""  # ModelMesh's modelKey JSON, passed through to loadModel
    registered_ms: int = 0
    last_used_ms: int = 0
    size_estimate_bytes: int = 0  # 0: unknown, ask predictModelSize
    device_size_estimate_bytes: int = 0  # GPU bytes its last load measured, apart from host bytes; 0: none
    copies: dict[str, CopyClaim] = field(default_factory=dict)
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    vmodel_refs: tuple[str, ...] = ()
    auto_delete: bool = False  # a vmodel target deleted with its vmodel

    def to_view(self, rate_per_min: float = 0.0) -> ModelView:
        return ModelView(self.model_id, self.model_type, self.size_estimate_bytes,
                         self.last_used_ms or None, rate_per_min, frozenset(self.copies),
                         device_size_estimate_bytes=self.device_size_estimate_bytes)

    def live_failures(self, now_ms: int) -> dict[str, LoadFailure]:
        return {i: f for i, f in self.failures.items() if f.expires_ms > now_ms}


@dataclass(frozen=True)
class VModelRecord:
    vmodel_id: str
    active_model_id: str
    target_model_id: str
    owner: str = ""
    auto_delete_target: bool = False
    failure: str = ""  # why the transition to target failed, if it did

    @property
    def transitioning(self) -> bool:
        return self.active_model_id != self.target_model_id


@dataclass(frozen=True)
class HeldCopy:
    """A copy an instance holds, as it publishes it."""

    size_bytes: int
    last_used_ms: int
    in_flight: int = 0
    loading: bool = False
    rate_per_min: float = 0.0  # requests per minute to this copy, smoothed
    device_bytes: int = 0  # held (or reserved, loading) on the GPU, apart from size_bytes


def formats_of(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The plain formats named by `mt:<format>` labels (no version): the `model_types` an
    older reader matches a model's base type against."""
    formats = [label[3:] for label in labels if label.startswith("mt:") and ":" not in label[3:]]
    return tuple(dict.fromkeys(formats))


@dataclass(frozen=True)
class InstanceRecord:
    """One instance, as its agent publishes it.

    `address` is where the fabric calls the model-runtime SPI (loadModel, unloadModel): the
    runtime itself, or the `meshserve agent` beside a runtime of another kind. `data_address`
    is where routers send V2 inference; empty means `address` (a runtime serving both on one
    port, as meshserve's does). `labels` are its runtime labels; `model_types` is kept for readers older than labels, and a
    record without labels (written by one) advertises `mt:<type>` for each of them.
    """

    instance_id: str
    address: str  # host:port of the model-runtime SPI
    capacity_bytes: int
    used_bytes: int = 0
    loading_bytes: int = 0
    zone: str = ""
    model_types: tuple[str, ...] = ()
    version: str = ""
    shutting_down: bool = False
    request_rate_per_min: float = 0.0
    copies: dict[str, HeldCopy] = field(default_factory=dict)
    published_ms: int = 0
    labels: tuple[str, ...] = ()
    data_address: str = ""  # host:port of V2 inference; empty: `address`
    device_capacity_bytes: int = 0  # GPU bytes models may hold; 0: no GPU
    device_used_bytes: int = 0  # GPU bytes held or reserved (loads in progress included)

    @property
    def inference_address(self) -> str:
        """Where routers send V2 inference calls."""
        return self.data_address or self.address

    @property
    def advertised_labels(self) -> frozenset[str]:
        """The labels placement matches: `labels`, or `mt:<type>` per model type in an older record."""
        if self.labels:
            return frozenset(self.labels)
        return frozenset(f"mt:{t}" for t in self.model_types)

    def to_view(self) -> InstanceView:
        copies = {m: CopyView(c.size_bytes, c.last_used_ms, c.in_flight, c.loading, c.device_bytes)
                  for m, c in self.copies.items()}
        return InstanceView(self.instance_id, self.capacity_bytes, self.used_bytes, self.loading_bytes, self.zone,
                            self.advertised_labels, copies, self.request_rate_per_min, self.shutting_down,
                            self.device_capacity_bytes, self.device_used_bytes)

    @property
    def lru_last_used_ms(self) -> int | None:
        """Last-used time of the least recently used loaded copy (the instance's LRU age)."""
        times = [c.last_used_ms for c in self.copies.values() if not c.loading]
        return min(times) if times else None


def parse_model_key(text: str) -> dict[str, Any]:
    """A model key (ModelMesh's modelKey) as a dict; ValueError saying why if it is not a JSON object."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")
    return parsed


Record = TypeVar("Record", ModelRecord, VModelRecord, InstanceRecord)
_NESTED = {("ModelRecord", "copies"): CopyClaim, ("ModelRecord", "failures"): LoadFailure,
           ("InstanceRecord", "copies"): HeldCopy}


def to_document(record: ModelRecord | VModelRecord | InstanceRecord) -> dict[str, Any]:
    """The record as a JSON-ready dict, with the format version."""
    document = asdict(record)
    document["v"] = FORMAT_VERSION
    return document


def from_document(kind: type[Record], document: Any, key: str = "") -> Record:
    """A decoded JSON document as `kind`; RecordError naming `key` if it is not one."""
    where = key or kind.__name__
    if not isinstance(document, dict):
        raise RecordError(f"{where}: a record must be a JSON object")
    return _build(kind, document, where)


def encode(record: ModelRecord | VModelRecord | InstanceRecord) -> bytes:
    """The record as compact JSON bytes."""
    return json.dumps(to_document(record), separators=(",", ":"), sort_keys=True).encode()


def decode(kind: type[Record], data: bytes | str, key: str = "") -> Record:
    """Parse stored bytes as `kind`; RecordError naming `key` if they are not one."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"{key or kind.__name__}: not JSON ({error})") from None
    return from_document(kind, document, key)


def _build(kind: type, document: dict[str, Any], where: str):
    values = {}
    for spec in fields(kind):
        if spec.name not in document:
            continue
        value = document[spec.name]
        nested = _NESTED.get((kind.__name__, spec.name))
        if nested is not None:
            if not isinstance(value, dict):
                raise RecordError(f"{where}: '{spec.name}' must be an object")
            value = {k: _build(nested, v if isinstance(v, dict) else {}, f"{where}.{spec.name}.{k}") for k, v in value.items()}
        elif spec.type == "tuple[str, ...]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RecordError(f"{where}: '{spec.name}' must be a list of strings")
            value = tuple(value)
        values[spec.name] = value
    try:
        record = kind(**values)
    except TypeError as error:
        raise RecordError(f"{where}: {error}") from None
    _check_types(record, where)
    return record


_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _check_types(record, where: str) -> None:
    for spec in fields(record):
        expected = _SCALARS.get(spec.type) if isinstance(spec.type, str) else None
        value = getattr(record, spec.name)
        if expected is None:
            continue
        if isinstance(value, bool) and spec.type in ("int", "float"):
            raise RecordError(f"{where}: '{spec.name}' must be a number, not a boolean")
        if not isinstance(value, expected):
            raise RecordError(f"{where}: '{spec.name}' must be {spec.type}, got {type(value).__name__}")
