"""The CustomResourceDefinitions the operator serves, and checks of objects against them.

The CRDs live as YAML in the Helm chart (`charts/meshserve/crds/`, one file per CRD), the one
copy that both `helm install` and this module read. They are read from the source tree: the
chart is not inside a Python package, so a wheel does not carry them; pass `directory` to
`CrdCatalog.load` where they are elsewhere (an installed chart, a mounted ConfigMap).

`validate(obj)` and `validate_status(kind, status)` check an object as the API server would
before storing it, and raise `SchemaViolation` naming each offending field and why, in the API
server's words where it has them (`spec.modelType.name: Required value`). The operator's tests
run every status it writes through `validate_status`, because the API server prunes a status
field its CRD does not declare without a word, and refuses a wrong value only at run time.

How the CRD dialect (OpenAPI v3 with Kubernetes extensions) is read:
- an object node that lists `properties`, has no `additionalProperties` and is not marked
  `x-kubernetes-preserve-unknown-fields` is closed: another field is refused as an unknown
  field (the API server prunes it, or refuses it under strict field validation, kubectl's
  default); an object node without `properties` takes any fields;
- `nullable: true` admits null; `x-kubernetes-int-or-string` admits an integer or a string;
  boolean `exclusiveMinimum` / `exclusiveMaximum` become the JSON Schema numbers;
- formats `date-time` (RFC 3339), `int32` and `int64` are checked; other formats are not;
- CEL rules (`x-kubernetes-validations`) and list-type keys are not checked (none of these
  CRDs has a CEL rule); descriptions and defaults are kept as annotations (defaults are not
  applied).

Pure: imports PyYAML and jsonschema only (no kopf, no Kubernetes client).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.protocols import Validator

# mesh/operator/crds.py -> the repository root is three levels up.
CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "meshserve" / "crds"

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True)
class Problem:
    """One reason an object is refused: `path` as kubectl prints it (`spec.containers[0].name`)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class SchemaViolation(ValueError):
    """An object (or a status) that its CRD's schema refuses.

    `subject` names what was checked (`Predictor "example"`, `Predictor status`); `problems`
    lists every offending field, sorted by path. Permanent: the same object is refused again.
    """

    def __init__(self, subject: str, problems: Iterable[Problem]) -> None:
        self.subject = subject
        self.problems: tuple[Problem, ...] = tuple(sorted(set(problems), key=lambda p: (p.path, p.reason)))
        super().__init__(f"{subject} is invalid: " + "; ".join(str(p) for p in self.problems))


class UnknownKind(LookupError):
    """No CRD here defines this kind (or this version of it)."""


@dataclass(frozen=True)
class Crd:
    """One CustomResourceDefinition: its names and, per served version, its openAPIV3Schema."""

    group: str
    kind: str
    plural: str
    scope: str
    definition: Mapping[str, Any]
    schemas: Mapping[str, Mapping[str, Any]]
    storage_version: str

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any]) -> Crd:
        spec = definition["spec"]
        versions = [v for v in spec["versions"] if v.get("served", True)]
        storage = [v["name"] for v in spec["versions"] if v.get("storage")]
        return cls(
            group=spec["group"],
            kind=spec["names"]["kind"],
            plural=spec["names"]["plural"],
            scope=spec["scope"],
            definition=definition,
            schemas={v["name"]: v["schema"]["openAPIV3Schema"] for v in versions},
            storage_version=storage[0] if storage else versions[-1]["name"],
        )


class CrdCatalog:
    """The CRDs of one directory (or given), with a compiled validator per kind and version.

    Raises `UnknownKind` for a kind or version none of them defines, `SchemaViolation` for an
    object its schema refuses. Immutable but for its cache of compiled validators; safe to share.
    """

    def __init__(self, definitions: Iterable[Mapping[str, Any]]) -> None:
        self._crds: dict[str, Crd] = {}
        for definition in definitions:
            crd = Crd.from_definition(definition)
            if crd.kind in self._crds:
                raise ValueError(f"two CRDs define kind {crd.kind}")
            self._crds[crd.kind] = crd
        self._validators: dict[tuple[str, str, bool], Validator] = {}

    @classmethod
    def load(cls, directory: Path = CRD_DIR) -> CrdCatalog:
        """Every `*.yaml` CustomResourceDefinition in `directory`."""
        files = sorted(directory.glob("*.yaml"))
        if not files:
            raise FileNotFoundError(
                f"no CRD files in {directory} (they are read from the source tree's "
                "charts/meshserve/crds/; pass the directory where they are)"
            )
        definitions = []
        for path in files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    definitions.append(doc)
        return cls(definitions)

    @property
    def crds(self) -> tuple[Crd, ...]:
        return tuple(self._crds.values())

    def crd(self, kind: str) -> Crd:
        try:
            return self._crds[kind]
        except KeyError:
            raise UnknownKind(f"no CRD defines kind {kind!r} (known: {', '.join(sorted(self._crds))})") from None

    def schema_of(self, kind: str, version: str) -> dict[str, Any]:
        """The openAPIV3Schema of `kind` at `version`, as the CRD writes it (a copy)."""
        return copy.deepcopy(dict(self._schema(kind, version)))

    def validate(self, obj: Mapping[str, Any]) -> None:
        """Check a whole object (apiVersion, kind, metadata, spec and any status)."""
        if not isinstance(obj, Mapping):
            raise SchemaViolation("object", [Problem("", f"must be a mapping, not {type(obj).__name__}")])
        missing = [Problem(key, "Required value") for key in ("apiVersion", "kind") if not obj.get(key)]
        if missing:
            raise SchemaViolation("object", missing)
        kind = obj["kind"]
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        crd = self.crd(kind)
        if group != crd.group:
            raise UnknownKind(f"{kind} is defined in group {crd.group}, not {group or '(core)'}")
        name = (obj.get("metadata") or {}).get("name")
        subject = f"{kind} {json.dumps(name)}" if name else kind
        self._check(self._validator(kind, version, status_only=False), obj, subject, prefix="")

    def validate_status(self, kind: str, status: Mapping[str, Any], version: str | None = None) -> None:
        """Check a status as the operator would write it (`version` defaults to the storage version)."""
        version = version or self.crd(kind).storage_version
        self._check(self._validator(kind, version, status_only=True), status, f"{kind} status", prefix="status")

    def _schema(self, kind: str, version: str) -> Mapping[str, Any]:
        crd = self.crd(kind)
        try:
            return crd.schemas[version]
        except KeyError:
            raise UnknownKind(
                f"{kind} has no served version {version!r} (served: {', '.join(crd.schemas)})"
            ) from None

    def _validator(self, kind: str, version: str, status_only: bool) -> Validator:
        key = (kind, version, status_only)
        if key not in self._validators:
            schema = self._schema(kind, version)
            if status_only:
                schema = schema.get("properties", {}).get("status")
                if schema is None:
                    raise UnknownKind(f"{kind} {version} declares no status")
            self._validators[key] = jsonschema.Draft202012Validator(
                to_json_schema(schema), format_checker=_FORMATS
            )
        return self._validators[key]

    @staticmethod
    def _check(validator: Validator, instance: Any, subject: str, prefix: str) -> None:
        problems = [p for error in validator.iter_errors(instance) for p in _problems(error, prefix)]
        if problems:
            raise SchemaViolation(subject, problems)


def to_json_schema(node: Any) -> Any:
    """A CRD schema node (OpenAPI v3 with Kubernetes extensions) as JSON Schema 2020-12."""
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "example", "externalDocs"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            if isinstance(value, list):  # an OpenAPI tuple of item schemas
                out["prefixItems"] = [to_json_schema(child) for child in value]
            else:
                out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(child) for child in value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            continue  # OpenAPI's flag on minimum / maximum: below
        else:
            out[key] = value
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(flag) is True and bound in node:
            out[flag] = out.pop(bound)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    closed = not (
        node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
    )
    if "properties" in node and "additionalProperties" not in node and closed:
        out["additionalProperties"] = False
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # ValueError: out of range
    return True


@_FORMATS.checks("int32")
def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def _path(prefix: str, parts: Iterable[str | int]) -> str:
    path = prefix
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def _problems(error: jsonschema.ValidationError, prefix: str) -> list[Problem]:
    """The error in the API server's words, naming the field itself where one is missing or extra."""
    path = _path(prefix, error.absolute_path)
    instance, expected = error.instance, error.validator_value
    if error.validator == "required" and isinstance(instance, Mapping):
        return [Problem(_path(path, [name]), "Required value") for name in expected if name not in instance]
    if error.validator == "additionalProperties" and expected is False and isinstance(instance, Mapping):
        known = error.schema.get("properties", {})
        return [Problem(_path(path, [name]), "unknown field") for name in instance if name not in known]
    if error.validator == "enum":
        supported = ", ".join(_show(v) for v in expected)
        return [Problem(path, f"Unsupported value: {_show(instance)}: supported values: {supported}")]
    if error.validator == "type":
        kinds = " or ".join(expected) if isinstance(expected, list) else expected
        return [Problem(path, f"Invalid value: {_show(instance)}: must be of type {kinds}")]
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {
            "minimum": "greater than or equal to",
            "maximum": "less than or equal to",
            "exclusiveMinimum": "greater than",
            "exclusiveMaximum": "less than",
        }[error.validator]
        return [Problem(path, f"Invalid value: {_show(instance)}: must be {relation} {expected}")]
    if error.validator == "format":
        return [Problem(path, f"Invalid value: {_show(instance)}: must be a valid {expected}")]
    return [Problem(path, error.message)]


@functools.cache
def catalog() -> CrdCatalog:
    """The chart's CRDs (`CRD_DIR`), loaded once."""
    return CrdCatalog.load(CRD_DIR)


def schema_of(kind: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of the chart's CRD for `kind` at `version` (a copy)."""
    return catalog().schema_of(kind, version)


def validate(obj: Mapping[str, Any]) -> None:
    """Raise `SchemaViolation` (or `UnknownKind`) unless the chart's CRDs accept `obj`."""
    catalog().validate(obj)


def validate_status(kind: str, status: Mapping[str, Any], version: str | None = None) -> None:
    """Raise `SchemaViolation` (or `UnknownKind`) unless `kind`'s CRD accepts `status`."""
    catalog().validate_status(kind, status, version)
