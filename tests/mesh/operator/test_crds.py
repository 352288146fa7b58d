"""The chart's CRDs (charts/meshserve/crds/) and the checks of `mesh.operator.crds`.

- Users' manifests apply unchanged: every Predictor, ServingRuntime, ClusterServingRuntime and
  InferenceService in shared/data/kserve-samples/ (from kserve/modelmesh-serving at commit
  9c7a2b71, config/samples, config/example-predictors, config/example-isvcs and
  config/runtimes; Apache-2.0) validates against its CRD.
- Each CRD file is a valid apiextensions.k8s.io/v1 CustomResourceDefinition for the newest
  Kubernetes that kubernetes-validate ships, and a structural schema (what the API server
  demands beyond the OpenAPI shape); printer columns name fields the schema has.
- Bad objects and statuses are refused with a message naming the field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mesh.operator import crds
from mesh.operator.crds import CRD_DIR, CrdCatalog, SchemaViolation, UnknownKind

REPO = Path(__file__).resolve().parents[3]


def _shared() -> Path | None:
    """shared/ lives beside the repository (a checkout may also hold it inside)."""
    for candidate in (REPO.parent / "shared", REPO / "shared"):
        if (candidate / "data").is_dir():
            return candidate
    return None


SHARED = _shared()
SAMPLES = SHARED / "data" / "kserve-samples" if SHARED else None
CRD_FILES = sorted(CRD_DIR.glob("*.yaml"))
KINDS = {"Predictor", "ServingRuntime", "ClusterServingRuntime", "InferenceService"}


def _sample_docs() -> Iterator[Any]:
    if SAMPLES is None:
        return
    for path in sorted(SAMPLES.glob("*.yaml")):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for index, doc in enumerate(docs):
            name = path.name if len(docs) == 1 else f"{path.name}#{index}"
            yield pytest.param(name, doc, id=name)


SAMPLE_DOCS = list(_sample_docs())
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="shared/data/kserve-samples is not beside the repo")


def _crd(kind: str) -> dict[str, Any]:
    return copy.deepcopy(dict(crds.catalog().crd(kind).definition))


def _refused(obj: dict[str, Any]) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as caught:
        crds.validate(obj)
    return caught.value


def _refused_status(kind: str, status: dict[str, Any]) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as caught:
        crds.validate_status(kind, status)
    return caught.value


def _predictor(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": "example"},
        "spec": {"modelType": {"name": "sklearn"}, "storage": {"key": "localMinIO", "path": "m.joblib"}, **spec},
    }


PREDICTOR_STATUS = {
    "available": True,
    "activeModelState": "Loaded",
    "targetModelState": "",
    "transitionStatus": "UpToDate",
    "totalCopies": 2,
    "failedCopies": 0,
    "grpcEndpoint": "grpc://modelmesh-serving.models:8033",
    "httpEndpoint": "http://modelmesh-serving.models:8008",
}

FAILED_STATUS = {
    **PREDICTOR_STATUS,
    "available": False,
    "activeModelState": "FailedToLoad",
    "transitionStatus": "BlockedByFailedLoad",
    "totalCopies": 0,
    "failedCopies": 2,
    "lastFailureInfo": {
        "reason": "ModelLoadFailed",
        "message": "model file not found",
        "modelId": "example__ksp-3642375d03",
        "location": "modelmesh-serving-mlserver-1.x-7d9c5b6f4-x2x9q",
        "time": "2024-05-01T12:00:00Z",
    },
}

ISVC_STATUS = {
    "url": "grpc://modelmesh-serving.models:8033",
    "conditions": [
        {"type": "PredictorReady", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"},
    ],
    "components": {
        "predictor": {
            "url": "grpc://modelmesh-serving.models:8033",
            "grpcUrl": "grpc://modelmesh-serving.models:8033",
            "restUrl": "http://modelmesh-serving.models:8008",
        }
    },
    "modelStatus": {
        "transitionStatus": "InProgress",
        "states": {"activeModelState": "Loaded", "targetModelState": "Loading"},
        "copies": {"totalCopies": 1, "failedCopies": 0},
        "lastFailureInfo": {
            "reason": "RuntimeUnhealthy",
            "message": "Waiting for supporting runtime Pod to become available",
            "modelRevisionName": "example__isvc-6b2eb0b8bf",
            "time": "2024-05-01T12:00:00.123456+02:00",
        },
    },
}


# --- users' manifests ---------------------------------------------------------------------


@needs_samples
def test_the_samples_are_there() -> None:
    assert len(SAMPLE_DOCS) >= 10, f"expected the kserve samples in {SAMPLES}"


@needs_samples
def test_every_sample_kind_has_a_crd() -> None:
    kinds = [(p.values[0], p.values[1].get("kind")) for p in SAMPLE_DOCS]
    undefined = [f"{name}: {kind}" for name, kind in kinds if kind not in KINDS]
    assert not undefined, f"samples of kinds the chart defines no CRD for: {undefined}"


@needs_samples
@pytest.mark.parametrize(("name", "doc"), SAMPLE_DOCS)
def test_every_sample_validates_against_its_crd(name: str, doc: dict[str, Any]) -> None:
    if doc.get("kind") not in KINDS:
        pytest.skip(f"{name}: kind {doc.get('kind')} has no CRD here")
    crds.validate(doc)


# --- the CRD files ------------------------------------------------------------------------


def test_one_file_per_crd_for_each_kind() -> None:
    kinds = {}
    for path in CRD_FILES:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert len(docs) == 1, f"{path.name} holds {len(docs)} documents"
        assert docs[0]["kind"] == "CustomResourceDefinition"
        kinds[docs[0]["spec"]["names"]["kind"]] = docs[0]
    assert set(kinds) == KINDS
    assert {crd.kind for crd in crds.catalog().crds} == KINDS
    for kind, crd in kinds.items():
        spec = crd["spec"]
        assert spec["group"] == "serving.kserve.io"
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.serving.kserve.io"
        assert [v["name"] for v in spec["versions"]] == ["v1beta1" if kind == "InferenceService" else "v1alpha1"]
        assert spec["scope"] == ("Cluster" if kind == "ClusterServingRuntime" else "Namespaced")
    assert kinds["InferenceService"]["spec"]["names"]["shortNames"] == ["isvc"]
    for kind in ("Predictor", "InferenceService"):
        assert kinds[kind]["spec"]["versions"][0]["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_a_valid_custom_resource_definition(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    assert kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


def test_kubernetes_validate_would_refuse_a_bad_crd() -> None:
    bad = _crd("Predictor")
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["propertiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="propertiez"):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def _structural_problems(node: dict[str, Any], path: str, in_preserved: bool = False) -> Iterator[str]:
    """What the API server's structural-schema check would refuse (the rules these CRDs can break)."""
    preserved = in_preserved or node.get("x-kubernetes-preserve-unknown-fields", False)
    if "type" not in node and not node.get("x-kubernetes-int-or-string") and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        yield f"{path}: no type"
    if "properties" in node and "additionalProperties" in node:
        yield f"{path}: both properties and additionalProperties"
    for junctor in ("allOf", "anyOf", "oneOf", "not"):
        if junctor in node:
            yield f"{path}: {junctor} (not used in these CRDs)"
    for name, child in node.get("properties", {}).items():
        yield from _structural_problems(child, f"{path}.{name}", preserved)
    if isinstance(node.get("items"), dict):
        yield from _structural_problems(node["items"], f"{path}[]", preserved)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _structural_problems(node["additionalProperties"], f"{path}{{}}", preserved)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schemas_are_structural(kind: str) -> None:
    crd = crds.catalog().crd(kind)
    for version, schema in crd.schemas.items():
        problems = list(_structural_problems(dict(schema), version))
        assert not problems
        assert schema["type"] == "object"
        # Only metadata.name and metadata.generateName may be restricted; these restrict nothing.
        assert schema["properties"]["metadata"] == {"type": "object"}


def _defaults(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    if "default" in node:
        yield path, node, node["default"]
    for name, child in node.get("properties", {}).items():
        yield from _defaults(child, f"{path}.{name}")


@pytest.mark.parametrize("kind", ["Predictor", "InferenceService"])
def test_defaults_satisfy_their_schema(kind: str) -> None:
    """The API server refuses a CRD whose defaults its own schema refuses."""
    crd = crds.catalog().crd(kind)
    found = list(_defaults(dict(crd.schemas[crd.storage_version]), ""))
    assert found
    for path, node, default in found:
        schema = crds.to_json_schema({k: v for k, v in node.items() if k != "default"})
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(default))
        assert not errors, (path, errors)


def _resolves(schema: dict[str, Any], json_path: str) -> bool:
    """Whether a printer column's JSONPath names a field the schema declares.

    `[*]` and a filter `[?(@.type=='Ready')]` step into an array's items; a filter's field
    must be a field of those items.
    """
    for field_path in _field_paths(json_path):
        node = schema
        for step in field_path.lstrip(".").split("."):
            name, items = step.removesuffix("[*]"), step.endswith("[*]")
            if name == "metadata" and node is schema:
                break  # creationTimestamp and the rest are the API server's
            node = node.get("properties", {}).get(name)
            if node is None or (items and node.get("type") != "array"):
                return False
            node = node["items"] if items else node
    return True


def _field_paths(json_path: str) -> list[str]:
    """`.a[?(@.b=='x')].c` -> [`.a[*].c`, `.a[*].b`]."""
    paths = [re.sub(r"\[[^\]]*\]", "[*]", json_path)]
    for match in re.finditer(r"\[\?\(@\.(\w+)", json_path):
        paths.append(re.sub(r"\[[^\]]*\]", "[*]", json_path[: match.start()]) + "[*]." + match.group(1))
    return paths


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns_name_declared_fields(kind: str) -> None:
    crd = _crd(kind)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    expected = {
        "Predictor": ["Type", "Available", "ActiveModel", "TargetModel", "Transition", "Age"],
        "ServingRuntime": ["Disabled", "ModelType", "Containers", "Age"],
        "ClusterServingRuntime": ["Disabled", "ModelType", "Containers", "Age"],
        "InferenceService": ["URL", "Ready", "Age"],
    }[kind]
    assert list(columns) == expected
    assert columns["Age"] == ".metadata.creationTimestamp"
    for name, json_path in columns.items():
        assert _resolves(schema, json_path), (name, json_path)


def test_printer_column_check_has_teeth() -> None:
    schema = crds.schema_of("Predictor", "v1alpha1")
    assert _resolves(schema, ".status.available")
    assert not _resolves(schema, ".status.avaliable")
    assert not _resolves(schema, ".spec.modelType[*].name")
    isvc = crds.schema_of("InferenceService", "v1beta1")
    assert _resolves(isvc, ".status.conditions[?(@.type=='Ready')].status")
    assert not _resolves(isvc, ".status.conditions[?(@.kind=='Ready')].status")
    assert not _resolves(isvc, ".status.condition[?(@.type=='Ready')].status")


def test_serving_runtime_and_cluster_serving_runtime_share_one_schema() -> None:
    assert crds.schema_of("ServingRuntime", "v1alpha1") == crds.schema_of("ClusterServingRuntime", "v1alpha1")
    columns = [
        _crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        for kind in ("ServingRuntime", "ClusterServingRuntime")
    ]
    assert columns[0] == columns[1]


def test_schema_of_is_the_crds_schema_and_a_copy() -> None:
    schema = crds.schema_of("Predictor", "v1alpha1")
    assert schema == _crd("Predictor")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"].clear()
    assert crds.schema_of("Predictor", "v1alpha1")["properties"]
    with pytest.raises(UnknownKind, match="v1beta1"):
        crds.schema_of("Predictor", "v1beta1")
    with pytest.raises(UnknownKind, match="TrainedModel"):
        crds.schema_of("TrainedModel", "v1alpha1")


def test_status_schema_matches_the_api() -> None:
    status = crds.schema_of("Predictor", "v1alpha1")["properties"]["status"]
    assert set(status["required"]) == {
        "available",
        "activeModelState",
        "targetModelState",
        "transitionStatus",
        "totalCopies",
        "failedCopies",
    }
    states = ["", "Pending", "Standby", "Loading", "Loaded", "FailedToLoad"]
    assert status["properties"]["activeModelState"]["enum"] == states
    assert status["properties"]["targetModelState"]["enum"] == states
    transitions = ["UpToDate", "InProgress", "BlockedByFailedLoad", "InvalidSpec"]
    assert status["properties"]["transitionStatus"]["enum"] == transitions
    assert status["properties"]["lastFailureInfo"]["properties"]["reason"]["enum"] == [
        "ModelLoadFailed",
        "RuntimeUnhealthy",
        "NoSupportingRuntime",
        "RuntimeNotRecognized",
        "InvalidPredictorSpec",
    ]
    crds.validate_status("Predictor", status["default"])


def test_catalog_without_files_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        CrdCatalog.load(tmp_path)


# --- what is accepted ---------------------------------------------------------------------


def test_statuses_the_operator_writes_are_accepted() -> None:
    crds.validate_status("Predictor", PREDICTOR_STATUS)
    crds.validate_status("Predictor", FAILED_STATUS)
    invalid = {"reason": "InvalidPredictorSpec", "message": "both path and storage.path"}
    crds.validate_status(
        "Predictor",
        {**PREDICTOR_STATUS, "transitionStatus": "InvalidSpec", "activeModelState": "", "lastFailureInfo": invalid},
    )
    crds.validate_status("InferenceService", ISVC_STATUS)
    crds.validate_status("InferenceService", ISVC_STATUS, version="v1beta1")
    crds.validate({**_predictor(), "status": FAILED_STATUS})


def test_conflicting_storage_is_left_to_the_operator() -> None:
    """Both paths, s3 beside a key, a PVC: accepted here, reported as InvalidSpec in the status."""
    crds.validate(_predictor(path="other", schemaPath="s.json", storage={
        "path": "a", "schemaPath": "b", "key": "k", "parameters": {"bucket": "x"},
        "s3": {"secretKey": "k", "bucket": "y"}, "persistentVolumeClaim": {"claimName": "c"},
    }, protocolVersion="grpc-v2", gpu="preferred", runtime={"name": "mlserver-1.x"}, serviceAccountName="sa"))


def test_inference_service_keeps_kserve_fields_it_does_not_read() -> None:
    crds.validate({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "example", "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "serviceAccountName": "sa",
                "model": {
                    "modelFormat": {"name": "sklearn", "version": "1"},
                    "storageUri": "s3://bucket/sklearn/mnist-svm.joblib",
                    "resources": {"limits": {"cpu": "1"}},
                    "protocolVersion": "v2",
                },
                "sklearn": {"storageUri": "gs://b/p", "runtimeVersion": "1.3", "env": [{"name": "A", "value": "1"}]},
                "huggingface": {"storageUri": "pvc://claim/p"},
            },
            "transformer": {"containers": [{"name": "t", "image": "i"}]},
        },
    })


def test_serving_runtime_with_every_field() -> None:
    crds.validate({
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "rt"},
        "spec": {
            "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": True, "priority": 2}],
            "multiModel": True,
            "disabled": False,
            "protocolVersions": ["grpc-v2", "v2"],
            "grpcEndpoint": "unix:/tmp/mm.sock",
            "grpcDataEndpoint": "port:8001",
            "containers": [{"name": "server", "image": "i", "ports": [{"containerPort": 8001}]}],
            "volumes": [{"name": "models", "emptyDir": {}}],
            "nodeSelector": {"gpu": "true"},
            "affinity": {"nodeAffinity": {}},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "labels": {"a": "b"},
            "annotations": {"serving.kserve.io/autoscalerClass": "hpa"},
            "imagePullSecrets": [{"name": "pull"}],
            "replicas": 3,
            "storageHelper": {"disabled": True},
            "builtInAdapter": {"serverType": "torchserve", "runtimeManagementPort": 7071, "memBufferBytes": 134217728,
                               "modelLoadingTimeoutMillis": 90000, "env": [{"name": "A", "value": "1"}]},
        },
    })


# --- what is refused ----------------------------------------------------------------------


def _paths(error: SchemaViolation) -> list[str]:
    return [p.path for p in error.problems]


def test_predictor_without_model_type_name_is_refused() -> None:
    error = _refused(_predictor(modelType={"version": "1"}))
    assert _paths(error) == ["spec.modelType.name"]
    assert 'Predictor "example" is invalid: spec.modelType.name: Required value' == str(error)


def test_predictor_without_model_type_is_refused() -> None:
    obj = _predictor()
    del obj["spec"]["modelType"]
    assert _paths(_refused(obj)) == ["spec.modelType"]


def test_unknown_protocol_version_is_refused() -> None:
    error = _refused(_predictor(protocolVersion="v3"))
    assert _paths(error) == ["spec.protocolVersion"]
    assert '"v3"' in str(error) and '"grpc-v2"' in str(error)


def test_unknown_gpu_request_and_unknown_field_are_both_named() -> None:
    error = _refused(_predictor(gpu="maybe", modeltype={"name": "x"}))
    assert _paths(error) == ["spec.gpu", "spec.modeltype"]
    assert "spec.modeltype: unknown field" in str(error)


def test_wrong_types_are_refused() -> None:
    error = _refused(_predictor(modelType={"name": "onnx", "version": 1}, storage={"parameters": {"port": 9000}}))
    assert _paths(error) == ["spec.modelType.version", "spec.storage.parameters.port"]
    assert "must be of type string" in str(error)


def test_bad_serving_runtime_is_refused() -> None:
    obj = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": "rt"},
        "spec": {
            "containers": [{"image": "no-name"}],
            "supportedModelFormats": [{"name": "onnx", "priority": 0}],
            "builtInAdapter": {"serverType": "tgis"},
            "replicas": -1,
        },
    }
    error = _refused(obj)
    assert _paths(error) == [
        "spec.builtInAdapter.serverType",
        "spec.containers[0].name",
        "spec.replicas",
        "spec.supportedModelFormats[0].priority",
    ]
    assert str(error).startswith('ClusterServingRuntime "rt" is invalid: ')


def test_serving_runtime_without_containers_is_refused() -> None:
    obj = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "rt"}, "spec": {}}
    assert _paths(_refused(obj)) == ["spec.containers"]


def test_inference_service_without_model_format_name_is_refused() -> None:
    obj = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "example"},
        "spec": {"predictor": {"model": {"modelFormat": {}, "storage": {"key": "k", "paht": "p"}}}},
    }
    assert _paths(_refused(obj)) == ["spec.predictor.model.modelFormat.name", "spec.predictor.model.storage.paht"]


def test_sideways_transition_is_refused() -> None:
    error = _refused_status("Predictor", {**PREDICTOR_STATUS, "transitionStatus": "Sideways"})
    assert _paths(error) == ["status.transitionStatus"]
    assert str(error).startswith("Predictor status is invalid: status.transitionStatus: Unsupported value")


def test_negative_copies_are_refused() -> None:
    error = _refused_status("Predictor", {**PREDICTOR_STATUS, "totalCopies": -1})
    assert [str(p) for p in error.problems] == [
        "status.totalCopies: Invalid value: -1: must be greater than or equal to 0"
    ]
    isvc = copy.deepcopy(ISVC_STATUS)
    isvc["modelStatus"]["copies"]["failedCopies"] = -2
    assert _paths(_refused_status("InferenceService", isvc)) == ["status.modelStatus.copies.failedCopies"]


def test_status_missing_required_fields_is_refused() -> None:
    status = {k: v for k, v in PREDICTOR_STATUS.items() if k not in ("available", "failedCopies")}
    assert _paths(_refused_status("Predictor", status)) == ["status.available", "status.failedCopies"]


def test_status_field_the_crd_would_prune_is_refused() -> None:
    error = _refused_status("Predictor", {**PREDICTOR_STATUS, "loadedCopies": 1})
    assert [str(p) for p in error.problems] == ["status.loadedCopies: unknown field"]
    isvc = copy.deepcopy(ISVC_STATUS)
    isvc["components"]["predictor"]["grpcURL"] = "grpc://x"
    assert _paths(_refused_status("InferenceService", isvc)) == ["status.components.predictor.grpcURL"]


@pytest.mark.parametrize(
    "time", ["yesterday", "2024-05-01", "2024-05-01 12:00:00", "2024-13-01T12:00:00Z", "2024-05-01T12:00:00"]
)
def test_failure_time_must_be_rfc3339(time: str) -> None:
    status = copy.deepcopy(FAILED_STATUS)
    status["lastFailureInfo"]["time"] = time
    error = _refused_status("Predictor", status)
    assert _paths(error) == ["status.lastFailureInfo.time"]
    assert "must be a valid date-time" in str(error)


def test_bad_reasons_and_states_are_refused() -> None:
    status = copy.deepcopy(FAILED_STATUS)
    status["lastFailureInfo"]["reason"] = "OutOfMemory"
    status["activeModelState"] = "Unloaded"
    assert _paths(_refused_status("Predictor", status)) == ["status.activeModelState", "status.lastFailureInfo.reason"]
    isvc = copy.deepcopy(ISVC_STATUS)
    isvc["conditions"][0]["status"] = "true"
    del isvc["modelStatus"]["states"]["activeModelState"]
    assert _paths(_refused_status("InferenceService", isvc)) == [
        "status.conditions[0].status",
        "status.modelStatus.states.activeModelState",
    ]


def test_int32_bound_is_checked() -> None:
    assert _paths(_refused_status("Predictor", {**PREDICTOR_STATUS, "totalCopies": 2**31})) == ["status.totalCopies"]


def test_unknown_kinds_and_groups_are_named() -> None:
    with pytest.raises(UnknownKind, match="TrainedModel"):
        crds.validate({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "TrainedModel", "metadata": {"name": "x"}})
    with pytest.raises(UnknownKind, match="serving.kubeflow.org"):
        crds.validate({**_predictor(), "apiVersion": "serving.kubeflow.org/v1alpha1"})
    with pytest.raises(UnknownKind, match="v1beta1"):
        crds.validate({**_predictor(), "apiVersion": "serving.kserve.io/v1beta1"})
    with pytest.raises(UnknownKind, match="ServingRuntime"):
        crds.validate_status("Model", {})
    error = _refused({"metadata": {"name": "x"}})
    assert _paths(error) == ["apiVersion", "kind"]


# --- the dialect translation --------------------------------------------------------------


def test_translation_of_kubernetes_extensions() -> None:
    schema = crds.to_json_schema({
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True, "enum": ["a"]},
            "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "free": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "string"}},
            },
            "rules": {"type": "object", "x-kubernetes-validations": [{"rule": "self.a == 1"}]},
        },
    })
    assert schema["additionalProperties"] is False
    assert schema["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert schema["properties"]["maybe"] == {"type": ["string", "null"], "enum": ["a", None]}
    assert schema["properties"]["ratio"] == {"type": "number", "exclusiveMinimum": 0}
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["rules"] == {"type": "object"}
