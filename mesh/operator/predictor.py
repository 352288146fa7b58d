"""Predictor and ModelMesh-mode InferenceService resources as the fabric's vmodels and models (pure).

modelmesh-serving turns each resource into one vmodel (id = the resource's name, owner = its
source: `ksp` for a Predictor, `isvc` for an InferenceService) whose target is a concrete model
`<name>__<source>-<hash>`; the hash covers the whole spec, so a changed spec is a new concrete
model and the vmodel moves to it once it is loaded. This module does the same translation, byte
for byte, so that ids users already see (in inference replies, `lastFailureInfo.modelId`) and the
model keys runtimes already parse stay the same:

- `parse_predictor(spec)` and `parse_inference_service(isvc)` build one `PredictorSpec` (the
  fields of modelmesh-serving's `v1alpha1.PredictorSpec`); invalid combinations raise
  `InvalidPredictorSpec` with upstream's message;
- `concrete_model_id`, `model_type_label`, `model_key` and `storage_path` are what upstream sends
  in `SetVModelRequest` (targetModelId, modelInfo.type, modelInfo.key, modelInfo.path);
- `mesh_model(kind, namespace, name, obj)` does all of it for one resource.

Upstream sources (kserve/modelmesh-serving): `apis/serving/v1alpha1/predictor_types.go` (the spec and
its JSON field order), `controllers/predictor_controller.go` (`validatePredictor`,
`extractModelFields`, `ModelKeyInfo`, `concreteModelName`, `Hash`), `controllers/modelmesh/
model_type_labels.go` (`GetPredictorTypeLabel`), `pkg/predictor_source/inferenceservice_registry.go`
(`BuildBasePredictorFromInferenceService`, `processInferenceServiceStorage`,
`getPredictorFramework`).

No kopf, etcd or gRPC here: dicts in, dataclasses and strings out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.domain.records import ModelRecord

__all__ = [
    "DEPLOYMENT_MODE_ANNOTATION", "INFERENCE_SERVICE", "ISVC_SOURCE", "InvalidPredictorSpec", "MeshModel",
    "ModelType", "PREDICTOR", "PREDICTOR_SOURCE", "PersistentVolumeClaimSource", "PredictorSpec",
    "RUNTIME_ANNOTATION", "S3StorageSource", "SCHEMA_PATH_ANNOTATION", "SECRET_KEY_ANNOTATION", "Storage",
    "build_predictor", "concrete_model_id", "go_json", "is_modelmesh_inference_service", "mesh_model", "model_key",
    "model_type_label", "parse_inference_service", "parse_predictor", "spec_json", "storage_path",
    "validate_predictor",
]

PREDICTOR = "Predictor"
INFERENCE_SERVICE = "InferenceService"
# controllers/predictor_controller.go: PredictorCRSourceId, InferenceServiceCRSourceId
PREDICTOR_SOURCE = "ksp"
ISVC_SOURCE = "isvc"
_SOURCES = {PREDICTOR: PREDICTOR_SOURCE, INFERENCE_SERVICE: ISVC_SOURCE}

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"  # kserve pkg/constants: DeploymentMode
_MODELMESH_MODE = "ModelMesh"  # kserve pkg/constants: ModelMeshDeployment
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
RUNTIME_ANNOTATION = "serving.kserve.io/servingRuntime"
_AZURE_BLOB_HOST_SUFFIX = "blob.core.windows.net"

# inferenceservice_registry.go getPredictorFramework: checked in this order, the first present wins.
_FRAMEWORKS = ("xgboost", "lightgbm", "sklearn", "tensorflow", "onnx", "pytorch", "triton", "pmml")


class InvalidPredictorSpec(ValueError):
    """A resource the fabric cannot serve; `message` is upstream's wording.

    `spec` is the spec as far as it could be built (None when it could not) and `model_id` the
    concrete model id it hashes to ("" when unknown): upstream reports an invalid Predictor with
    `lastFailureInfo {reason: InvalidPredictorSpec, message, modelId}` and keeps the vmodel as it was.
    """

    def __init__(self, message: str, spec: PredictorSpec | None = None, model_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.spec = spec
        self.model_id = model_id


# -- the spec ---------------------------------------------------------------------------------
# Optional fields are None when absent: upstream's are Go pointers, and a pointer to "" is
# serialized (and so hashed) while a nil one is not, so absent and empty must stay distinct.

@dataclass(frozen=True)
class ModelType:
    name: str
    version: str | None = None


@dataclass(frozen=True)
class S3StorageSource:
    """Deprecated `spec.storage.s3`."""

    secret_key: str = ""
    bucket: str | None = None


@dataclass(frozen=True)
class PersistentVolumeClaimSource:
    """Deprecated `spec.storage.persistentVolumeClaim` (never supported; kept so it hashes as upstream)."""

    claim_name: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class Storage:
    path: str | None = None
    schema_path: str | None = None
    parameters: Mapping[str, str] | None = None
    key: str | None = None
    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    s3: S3StorageSource | None = None


@dataclass(frozen=True)
class PredictorSpec:
    """modelmesh-serving's `v1alpha1.PredictorSpec`; `runtime` is `spec.runtime.name`."""

    model_type: ModelType
    path: str = ""  # deprecated top-level path
    schema_path: str | None = None  # deprecated top-level schemaPath
    storage: Storage | None = None
    service_account_name: str | None = None
    gpu: str | None = None
    runtime: str | None = None
    protocol_version: str | None = None


@dataclass(frozen=True)
class MeshModel:
    """One resource in fabric terms: the vmodel to set and the concrete model it targets.

    `record` is the model to register with the vmodel (`VModelChange.model`): `model_type` is the
    type label, `storage_path` the path, `storage_key` the model key JSON. Upstream sets the vmodel
    with `autoDeleteTargetModel: true` (the old concrete model goes once the vmodel moves on).
    """

    kind: str
    namespace: str
    vmodel_id: str
    owner: str
    model_id: str
    spec: PredictorSpec
    record: ModelRecord
    auto_delete_target: bool = True


# -- Go's encoding/json ---------------------------------------------------------------------------

_GO_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_HTML_RE = re.compile("[<>&\u2028\u2029]")


def go_json(value: Any) -> str:
    """`value` as Go's `json.Marshal` writes it: compact, non-ASCII kept as UTF-8, and `<`, `>`,
    `&`, U+2028 and U+2029 escaped as `\\u003c`... (Go's HTML-safe default). Dict keys are written
    in the order given; pass maps (Go map[string]string) already sorted."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # Those characters occur only inside strings (JSON's syntax has none), so replacing them in
    # the whole text is the same as escaping them in each string.
    return _GO_HTML_RE.sub(lambda m: _GO_HTML_ESCAPES[m.group()], text)


def _sorted_map(m: Mapping[str, str]) -> dict[str, str]:
    return {k: m[k] for k in sorted(m)}  # Go sorts map keys when it marshals a map


def _spec_document(spec: PredictorSpec) -> dict[str, Any]:
    """The spec as upstream's `json.Marshal(&predictor.Spec)` orders and omits its fields."""
    doc: dict[str, Any] = {}
    if spec.service_account_name is not None:
        doc["serviceAccountName"] = spec.service_account_name
    doc["modelType"] = _model_type_document(spec.model_type)
    doc["path"] = spec.path  # `json:"path"` has no omitempty: always written
    if spec.schema_path is not None:
        doc["schemaPath"] = spec.schema_path
    if spec.storage is not None:
        s = spec.storage
        storage: dict[str, Any] = {}
        if s.path is not None:
            storage["path"] = s.path
        if s.schema_path is not None:
            storage["schemaPath"] = s.schema_path
        if s.parameters is not None:  # a pointer to a map: an empty map is still written, as {}
            storage["parameters"] = _sorted_map(s.parameters)
        if s.key is not None:
            storage["key"] = s.key
        if s.persistent_volume_claim is not None:
            pvc: dict[str, Any] = {"claimName": s.persistent_volume_claim.claim_name}
            if s.persistent_volume_claim.read_only:
                pvc["readOnly"] = True
            storage["persistentVolumeClaim"] = pvc
        if s.s3 is not None:
            s3: dict[str, Any] = {"secretKey": s.s3.secret_key}
            if s.s3.bucket is not None:
                s3["bucket"] = s.s3.bucket
            storage["s3"] = s3
        doc["storage"] = storage
    if spec.gpu is not None:
        doc["gpu"] = spec.gpu
    if spec.runtime is not None:
        doc["runtime"] = {"name": spec.runtime}
    if spec.protocol_version is not None:
        doc["protocolVersion"] = spec.protocol_version
    return doc


def _model_type_document(model_type: ModelType) -> dict[str, str]:
    doc = {"name": model_type.name}
    if model_type.version is not None:
        doc["version"] = model_type.version
    return doc


def spec_json(spec: PredictorSpec) -> str:
    """The exact text upstream hashes for the concrete model id (`Hash` in predictor_controller.go)."""
    return go_json(_spec_document(spec))


def concrete_model_id(name: str, source: str, spec: PredictorSpec) -> str:
    """`<name>__<source>-<first 10 hex digits of SHA-1 over spec_json(spec)>` (`concreteModelName`)."""
    digest = hashlib.sha1(spec_json(spec).encode("utf-8")).hexdigest()[:10]
    return f"{name}__{source}-{digest}"


# -- what the runtimes get ----------------------------------------------------------------------------

def model_type_label(spec: PredictorSpec) -> str:
    """The placement label (`GetPredictorTypeLabel`): `rt:<runtime>` when a runtime is named (and
    nothing else: upstream adds no protocol then), else `mt:<name>[:<version>]` followed by
    `|pv:<protocol>` when a protocol version is given."""
    if spec.runtime:  # upstream: runtime != nil && runtime.Name != ""
        return "rt:" + spec.runtime
    label = "mt:" + spec.model_type.name
    if spec.model_type.version is not None:
        label += ":" + spec.model_type.version
    if spec.protocol_version is not None:
        label += "|pv:" + spec.protocol_version
    return label


def _model_fields(spec: PredictorSpec) -> tuple[str, str | None, str | None, Mapping[str, str] | None]:
    """(path, schema path, storage key, storage parameters) as `extractModelFields` resolves them."""
    s = spec.storage
    if s is None:
        # Upstream returns nothing at all without spec.storage, not even the top-level path
        # (its FVT "Missing storage field" expects such a Predictor to fail to load).
        return "", None, None, None
    path = s.path if s.path is not None else spec.path
    schema_path = s.schema_path if s.schema_path is not None else spec.schema_path
    key = s.key if s.key is not None else (s.s3.secret_key if s.s3 is not None else None)
    if s.parameters is not None:
        parameters: Mapping[str, str] | None = s.parameters
    elif s.s3 is not None and s.s3.bucket is not None:
        parameters = {"bucket": s.s3.bucket}
    else:
        parameters = None
    return path, schema_path, key, parameters


def storage_path(spec: PredictorSpec) -> str:
    """`modelInfo.path`: `storage.path`, else the top-level `path`; "" when there is no `storage`."""
    return _model_fields(spec)[0]


def model_key(spec: PredictorSpec) -> str:
    """`modelInfo.key`, upstream's `ModelKeyInfo` JSON: `storage_key` (omitted when none),
    `storage_params` (omitted when none or empty), `model_type {name, version}` (always),
    `schema_path` (omitted when none), in that order."""
    _, schema_path, key, parameters = _model_fields(spec)
    doc: dict[str, Any] = {}
    if key is not None:
        doc["storage_key"] = key
    if parameters:  # a plain map with omitempty: an empty one is left out
        doc["storage_params"] = _sorted_map(parameters)
    doc["model_type"] = _model_type_document(spec.model_type)
    if schema_path is not None:
        doc["schema_path"] = schema_path
    return go_json(doc)


# -- Predictor ---------------------------------------------------------------------------------------

def parse_predictor(spec: Mapping[str, Any]) -> PredictorSpec:
    """A Predictor's `spec` as a `PredictorSpec`, validated as upstream validates it.

    Raises `InvalidPredictorSpec`: with upstream's message (and `.spec` set) for the combinations
    `validate_predictor` refuses; with a message naming the field for a spec the CRD schema would
    have refused (no `modelType.name`, a field of the wrong type), `.spec` None.
    """
    built = build_predictor(spec)
    message = validate_predictor(built)
    if message:
        raise InvalidPredictorSpec(message, built)
    return built


def build_predictor(spec: Mapping[str, Any]) -> PredictorSpec:
    """A Predictor's `spec` as a `PredictorSpec` without `validate_predictor`'s checks (an invalid
    Predictor still has a concrete model id: upstream reports it). Unknown fields are ignored, as
    the API server prunes them."""
    spec = _mapping(spec, "spec")
    model_type = _mapping(spec.get("modelType"), "spec.modelType")
    name = _string(model_type.get("name"), "spec.modelType.name")
    if name is None:
        raise InvalidPredictorSpec("spec.modelType.name: Required value")
    storage = None
    if spec.get("storage") is not None:
        raw = _mapping(spec["storage"], "spec.storage")
        pvc = s3 = None
        if raw.get("persistentVolumeClaim") is not None:
            p = _mapping(raw["persistentVolumeClaim"], "spec.storage.persistentVolumeClaim")
            read_only = p.get("readOnly", False)
            if not isinstance(read_only, bool):
                raise InvalidPredictorSpec("spec.storage.persistentVolumeClaim.readOnly must be a boolean")
            pvc = PersistentVolumeClaimSource(_string(p.get("claimName"), "spec.storage.persistentVolumeClaim.claimName") or "",
                                              read_only)
        if raw.get("s3") is not None:
            s = _mapping(raw["s3"], "spec.storage.s3")
            s3 = S3StorageSource(_string(s.get("secretKey"), "spec.storage.s3.secretKey") or "",
                                 _string(s.get("bucket"), "spec.storage.s3.bucket"))
        storage = Storage(path=_string(raw.get("path"), "spec.storage.path"),
                          schema_path=_string(raw.get("schemaPath"), "spec.storage.schemaPath"),
                          parameters=_parameters(raw.get("parameters"), "spec.storage.parameters"),
                          key=_string(raw.get("key"), "spec.storage.key"),
                          persistent_volume_claim=pvc, s3=s3)
    runtime = None
    if spec.get("runtime") is not None:
        runtime = _string(_mapping(spec["runtime"], "spec.runtime").get("name"), "spec.runtime.name") or ""
    return PredictorSpec(
        model_type=ModelType(name, _string(model_type.get("version"), "spec.modelType.version")),
        path=_string(spec.get("path"), "spec.path") or "",
        schema_path=_string(spec.get("schemaPath"), "spec.schemaPath"),
        storage=storage,
        service_account_name=_string(spec.get("serviceAccountName"), "spec.serviceAccountName"),
        gpu=_string(spec.get("gpu"), "spec.gpu"),
        runtime=runtime,
        protocol_version=_string(spec.get("protocolVersion"), "spec.protocolVersion"),
    )


def validate_predictor(spec: PredictorSpec) -> str:
    """Why upstream refuses the spec (`validatePredictor`, its messages), "" when it accepts it."""
    s = spec.storage
    if s is None:
        return ""
    if s.path is not None and spec.path != "":
        return "Only one of spec.path and spec.storage.path can be specified"
    if s.schema_path is not None and spec.schema_path is not None:
        return "Only one of spec.schemaPath and spec.storage.schemaPath can be specified"
    if s.persistent_volume_claim is not None:
        return "spec.storage.PersistentVolumeClaim is not supported"
    if s.s3 is not None and (s.path is not None or s.schema_path is not None or s.parameters is not None
                             or s.key is not None):
        return "spec.storage.s3 cannot be specified with any other keys in spec.storage"
    return ""


# -- InferenceService ------------------------------------------------------------------------------

def is_modelmesh_inference_service(isvc: Mapping[str, Any]) -> bool:
    """Whether the InferenceService is annotated `serving.kserve.io/deploymentMode: ModelMesh`
    (upstream reconciles only those; for any other it deletes the vmodel it owns of that name)."""
    return _annotations(isvc).get(DEPLOYMENT_MODE_ANNOTATION) == _MODELMESH_MODE


def parse_inference_service(isvc: Mapping[str, Any]) -> PredictorSpec:
    """The Predictor spec upstream builds from a ModelMesh-mode InferenceService (`metadata` and
    `spec`); its concrete model id is `concrete_model_id(name, "isvc", <this>)`.

    - `spec.predictor.model` gives `modelType` from `modelFormat {name, version}`, `runtime`,
      `protocolVersion`; without it the first framework block present (in upstream's order:
      xgboost, lightgbm, sklearn, tensorflow, onnx, pytorch, triton, pmml) names the type and the
      annotation `serving.kserve.io/servingRuntime` the runtime;
    - storage: exactly one of `storageUri` and `storage.path`; the URI's scheme gives
      parameters (s3, gs, pvc, azure blob https, other http(s)) that override `storage.parameters`;
      `storage.key` / `storage.schemaPath`, else the annotations `serving.kserve.io/secretKey` /
      `serving.kserve.io/schemaPath`. The built spec always has `storage.path` and
      `storage.parameters` (`{}` at least), never the top-level path.

    Raises `InvalidPredictorSpec` with upstream's message when it cannot be built (upstream
    returns these as reconcile errors), or ValueError when the resource is not in ModelMesh mode.
    """
    if not is_modelmesh_inference_service(isvc):
        raise ValueError(f"the InferenceService is not annotated {DEPLOYMENT_MODE_ANNOTATION}: {_MODELMESH_MODE}")
    metadata = _mapping(isvc.get("metadata"), "metadata")
    name = _string(metadata.get("name"), "metadata.name") or ""
    nname = f"{_string(metadata.get('namespace'), 'metadata.namespace') or ''}/{name}"  # Go NamespacedName.String()
    annotations = _annotations(isvc)
    predictor = _mapping(_mapping(isvc.get("spec"), "spec").get("predictor"), "spec.predictor")
    framework = next((f for f in _FRAMEWORKS if predictor.get(f) is not None), None)
    runtime_annotation = annotations.get(RUNTIME_ANNOTATION)

    if predictor.get("model") is not None:
        model = _mapping(predictor["model"], "spec.predictor.model")
        if framework is not None:
            raise InvalidPredictorSpec(f"the InferenceService {name} cannot have both the model spec and a "
                                       f"framework spec ({framework})")
        if runtime_annotation is not None:
            raise InvalidPredictorSpec(f"the InferenceService {name} cannot have both the model spec and the "
                                       f"runtime annotation {RUNTIME_ANNOTATION}")
        model_format = _mapping(model.get("modelFormat"), "spec.predictor.model.modelFormat")
        model_type = ModelType(_string(model_format.get("name"), "spec.predictor.model.modelFormat.name") or "",
                               _string(model_format.get("version"), "spec.predictor.model.modelFormat.version"))
        runtime = _string(model.get("runtime"), "spec.predictor.model.runtime")
        extension, where = model, "spec.predictor.model"
    else:
        if framework is None:
            raise InvalidPredictorSpec("no valid InferenceService predictor framework found")
        model_type = ModelType(framework)
        runtime = runtime_annotation
        where = f"spec.predictor.{framework}"
        extension = _mapping(predictor[framework], where)
    protocol = _string(extension.get("protocolVersion"), f"{where}.protocolVersion")
    if protocol == "":  # kserve's ProtocolUnknown is "": upstream leaves it unset
        protocol = None

    path, parameters, key, schema_path = _isvc_storage(extension, where, nname, annotations)
    return PredictorSpec(model_type=model_type,
                         storage=Storage(path=path, schema_path=schema_path, parameters=parameters, key=key),
                         runtime=runtime, protocol_version=protocol)


def _isvc_storage(extension: Mapping[str, Any], where: str, nname: str, annotations: Mapping[str, str]
                  ) -> tuple[str, dict[str, str], str | None, str | None]:
    """(path, parameters, key, schema path): upstream's `processInferenceServiceStorage`."""
    uri = _string(extension.get("storageUri"), f"{where}.storageUri")
    storage = None
    if extension.get("storage") is not None:
        storage = _mapping(extension["storage"], f"{where}.storage")
    storage_path = _string(storage.get("path"), f"{where}.storage.path") if storage is not None else None
    uri_parameters: dict[str, str] = {}
    if uri is None:
        if storage_path is None:
            raise InvalidPredictorSpec(f"the InferenceService {nname} must have either the storageUri or the storage.path")
        path = storage_path
    else:
        if storage_path is not None:
            raise InvalidPredictorSpec(f"the InferenceService {nname} cannot have both the storageUri and the storage.path")
        try:
            url = _GoURL.parse(uri)
        except ValueError as error:
            raise InvalidPredictorSpec(f"could not parse storageUri in InferenceService {nname}: {error}") from None
        if url.scheme in ("pvc", "s3", "gs"):
            path = url.path.removeprefix("/")
            kind, field = {"pvc": ("pvc", "name"), "s3": ("s3", "bucket"), "gs": ("gcs", "bucket")}[url.scheme]
            uri_parameters = {"type": kind, field: url.host}
        elif url.scheme in ("http", "https"):
            if url.host.endswith(_AZURE_BLOB_HOST_SUFFIX):
                parts = url.path.removeprefix("/").split("/")  # Go's Split gives at least one part
                uri_parameters = {"type": "azure", "container": parts[0], "account_name": url.host.split(".")[0]}
                path = "/".join(parts[1:])
            else:
                path = url.path.removeprefix("/")
                uri_parameters = {"type": "http", "url": url.without_path()}
        else:
            raise InvalidPredictorSpec(f"the InferenceService {nname} has an unsupported storageUri scheme {url.scheme}")

    key = schema_path = None
    spec_parameters = None
    if storage is not None:
        key = _string(storage.get("key"), f"{where}.storage.key")
        spec_parameters = _parameters(storage.get("parameters"), f"{where}.storage.parameters")
        schema_path = _string(storage.get("schemaPath"), f"{where}.storage.schemaPath")
    # The URI's parameters take precedence over storage.parameters.
    parameters = {**spec_parameters, **uri_parameters} if spec_parameters is not None else uri_parameters
    if key is None:
        key = annotations.get(SECRET_KEY_ANNOTATION)
    if schema_path is None:
        schema_path = annotations.get(SCHEMA_PATH_ANNOTATION)
    return path, parameters, key, schema_path


@dataclass(frozen=True)
class _GoURL:
    """The parts of Go's `net/url.Parse` result that upstream reads (scheme, host, decoded path),
    with Go's errors for what it refuses (the text after "could not parse storageUri ...: ")."""

    scheme: str  # lower-cased, as Go does
    authority: str  # userinfo@host as written
    host: str  # percent-decoded, port included, as Go's URL.Host
    path: str  # percent-decoded, as Go's URL.Path
    raw_query: str
    force_query: bool
    raw_fragment: str

    @classmethod
    def parse(cls, raw: str) -> _GoURL:
        url, _, fragment = raw.partition("#")
        try:
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
                raise ValueError("net/url: invalid control character in URL")
            parsed = cls._parse(url, fragment)
        except ValueError as error:
            raise ValueError(f"parse {_go_quote(url)}: {error}") from None
        _unescape(fragment)  # Go refuses a bad escape in the fragment too
        return parsed

    @classmethod
    def _parse(cls, url: str, fragment: str) -> _GoURL:
        scheme, rest = "", url
        for i, c in enumerate(url):  # Go's getScheme
            if (c.isascii() and c.isalpha()) or (i > 0 and c in "0123456789+-."):
                continue
            if c == ":":
                if i == 0:
                    raise ValueError("missing protocol scheme")
                scheme, rest = url[:i].lower(), url[i + 1:]
            break
        force_query = rest.endswith("?") and rest.count("?") == 1
        rest, _, raw_query = (rest[:-1], "", "") if force_query else rest.partition("?")
        if not rest.startswith("/"):
            if scheme:  # "s3:bucket/p" is opaque in Go: no host, no path
                return cls(scheme, "", "", "", raw_query, force_query, fragment)
            if ":" in rest.split("/", 1)[0]:
                raise ValueError("first path segment in URL cannot contain colon")
        authority = host = ""
        if rest.startswith("//") and (scheme or not rest.startswith("///")):
            authority, slash, tail = rest[2:].partition("/")
            rest = slash + tail
            host = authority.rpartition("@")[2]
            colon = host.rfind(":")
            if not host.startswith("[") and colon != -1 and any(c not in "0123456789" for c in host[colon + 1:]):
                raise ValueError(f"invalid port {_go_quote(host[colon:])} after host")
            host = _unescape(host)
        return cls(scheme, authority, host, _unescape(rest), raw_query, force_query, fragment)

    def without_path(self) -> str:
        """The URL with its path removed, as Go's `URL.String()` writes it after `u.Path = ""`."""
        text = f"{self.scheme}:" if self.scheme else ""
        if self.host or "@" in self.authority:
            text += "//" + self.authority
        if self.force_query or self.raw_query:
            text += "?" + self.raw_query
        if self.raw_fragment:
            text += "#" + self.raw_fragment
        return text


def _unescape(text: str) -> str:
    """Go's percent-decoding of a path or host: a `%` must start two hex digits."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            pair = text[i + 1:i + 3]
            if len(pair) < 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise ValueError(f"invalid URL escape {_go_quote(text[i:i + 3])}")
            out.append(int(pair, 16))
            i += 3
        else:
            out += text[i].encode("utf-8")
            i += 1
    return out.decode("utf-8", errors="replace")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # close to Go's %q for what URLs hold


# -- one resource --------------------------------------------------------------------------------

def mesh_model(kind: str, namespace: str, name: str, obj: Mapping[str, Any]) -> MeshModel | None:
    """The vmodel and concrete model for one resource (`obj` the whole object: metadata, spec).

    `kind` is "Predictor" or "InferenceService". None for an InferenceService that is not in
    ModelMesh mode (upstream then deletes the vmodel of that name it owns, as for a deleted one).
    Raises `InvalidPredictorSpec` (with `.model_id` set for a Predictor) when it cannot be served.
    """
    source = _SOURCES.get(kind)
    if source is None:
        raise ValueError(f"not a Predictor or an InferenceService: {kind!r}")
    if kind == PREDICTOR:
        spec = build_predictor(_mapping(obj.get("spec"), "spec"))
        message = validate_predictor(spec)
        if message:
            raise InvalidPredictorSpec(message, spec, concrete_model_id(name, source, spec))
    else:
        if not is_modelmesh_inference_service(obj):
            return None
        spec = parse_inference_service(obj)
    model_id = concrete_model_id(name, source, spec)
    record = ModelRecord(model_id=model_id, model_type=model_type_label(spec),
                         storage_path=storage_path(spec), storage_key=model_key(spec))
    return MeshModel(kind, namespace, name, source, model_id, spec, record)


# -- reading dicts ------------------------------------------------------------------------------------

def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidPredictorSpec(f"{where} must be an object")
    return value


def _string(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidPredictorSpec(f"{where} must be a string")
    return value


def _parameters(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidPredictorSpec(f"{where} must be a map of strings")
    return dict(value)
