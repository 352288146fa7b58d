"""Predictor / InferenceService -> vmodel and concrete model, byte for byte as modelmesh-serving.

The ids below are the ones modelmesh-serving's docs show (docs/quickstart.md,
docs/predictors/setup-storage.md, docs/predictors/README.md, docs/example-models.md,
docs/examples/python-custom-runtime/...): users see them in inference replies, so they must not move.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.operator.predictor import (
    InvalidPredictorSpec, ModelType, PredictorSpec, Storage, build_predictor, concrete_model_id, go_json,
    is_modelmesh_inference_service, mesh_model, model_key, model_type_label, parse_inference_service,
    parse_predictor, spec_json, storage_path,
)
from tests.support.shared_data import shared_dir

SAMPLES = shared_dir() / "data" / "kserve-samples"

# KUBERNETES.md: the exact bytes upstream hashes, and the hash.
HASH_EXAMPLES = [
    ('{"modelType":{"name":"sklearn"},"path":"","storage":{"path":"sklearn/mnist-svm.joblib","parameters":'
     '{"bucket":"modelmesh-example-models","type":"s3"},"key":"localMinIO"}}', "3642375d03"),
    ('{"modelType":{"name":"sklearn"},"path":"","storage":{"path":"sklearn/mnist-svm.joblib","parameters":{},'
     '"key":"localMinIO"}}', "6b2eb0b8bf"),
    ('{"modelType":{"name":"sklearn"},"path":"","storage":{"path":"sklearn/mnist-svm.joblib","parameters":'
     '{"name":"my-models-pvc","type":"pvc"}}}', "3d2daa3370"),
]


def _isvc(name: str, model: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
          **predictor: Any) -> dict[str, Any]:
    spec = dict(predictor)
    if model is not None:
        spec["model"] = model
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "models",
                         "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh", **(annotations or {})}},
            "spec": {"predictor": spec}}


def _samples() -> list[Path]:
    if not SAMPLES.is_dir():
        pytest.skip(f"no shared samples at {SAMPLES}")
    return sorted(SAMPLES.glob("*.yaml"))


def _sample(name: str) -> dict[str, Any]:
    for path in _samples():
        if path.name == name:
            return yaml.safe_load(path.read_text())
    pytest.skip(f"sample {name} missing")


# -- the hash ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, digest", HASH_EXAMPLES)
def test_the_documented_bytes_hash_to_the_documented_ids(text, digest):
    assert hashlib.sha1(text.encode()).hexdigest()[:10] == digest


@pytest.mark.parametrize("isvc, text, model_id", [
    # docs/quickstart.md, the storageUri variant (the secret key from the annotation)
    (_isvc("example-sklearn-isvc", {"modelFormat": {"name": "sklearn"},
                                    "storageUri": "s3://modelmesh-example-models/sklearn/mnist-svm.joblib"},
           {"serving.kserve.io/secretKey": "localMinIO"}),
     HASH_EXAMPLES[0][0], "example-sklearn-isvc__isvc-3642375d03"),
    # docs/predictors/README.md
    (_isvc("example-mnist-isvc", {"modelFormat": {"name": "sklearn"},
                                  "storage": {"key": "localMinIO", "path": "sklearn/mnist-svm.joblib"}}),
     HASH_EXAMPLES[1][0], "example-mnist-isvc__isvc-6b2eb0b8bf"),
    # docs/predictors/setup-storage.md
    (_isvc("sklearn-pvc-example", {"modelFormat": {"name": "sklearn"},
                                   "storage": {"parameters": {"type": "pvc", "name": "my-models-pvc"},
                                               "path": "sklearn/mnist-svm.joblib"}}),
     HASH_EXAMPLES[2][0], "sklearn-pvc-example__isvc-3d2daa3370"),
])
def test_an_inference_service_id_hashes_the_predictor_spec_built_from_it(isvc, text, model_id):
    spec = parse_inference_service(isvc)
    assert spec_json(spec) == text
    assert concrete_model_id(isvc["metadata"]["name"], "isvc", spec) == model_id
    assert mesh_model("InferenceService", "models", isvc["metadata"]["name"], isvc).model_id == model_id


def test_a_named_runtime_is_hashed_after_the_storage():
    # docs/examples/python-custom-runtime/Python-Based-Custom-Runtime-with-Model-Stored-on-PVC.md
    isvc = _isvc("sklearn-pvc-example", {"modelFormat": {"name": "custom-model"}, "runtime": "my-custom-model-0.x",
                                         "storage": {"parameters": {"type": "pvc", "name": "my-models-pvc"},
                                                     "path": "mnist-svm.joblib"}})
    spec = parse_inference_service(isvc)
    assert spec_json(spec).endswith(',"runtime":{"name":"my-custom-model-0.x"}}')
    assert concrete_model_id("sklearn-pvc-example", "isvc", spec) == "sklearn-pvc-example__isvc-72fbffc584"


@pytest.mark.parametrize("name, model_type, path, digest", [
    # docs/example-models.md, for config/example-predictors/*.yaml (deprecated path + storage.s3)
    ("example-keras-mnist", "keras", "keras/mnist.h5", "f3ccc51d50"),
    ("example-lightgbm-mushroom", "lightgbm", "lightgbm/mushroom.bst", "297b372253"),
    ("example-onnx-mnist", "onnx", "onnx/mnist.onnx", "0dbc77db1a"),
    ("example-pytorch-cifar", "pytorch", "pytorch/cifar", "d2b754f2bf"),
    ("example-sklearn-mnist-svm", "sklearn", "sklearn/mnist-svm.joblib", "7702c1b55a"),
    ("example-tensorflow-mnist", "tensorflow", "tensorflow/mnist.savedmodel", "c3597b719f"),
    ("example-xgboost-mushroom", "xgboost", "xgboost/mushroom.json", "f624b27e99"),
])
def test_documented_predictor_ids(name, model_type, path, digest):
    spec = parse_predictor({"modelType": {"name": model_type}, "path": path,
                            "storage": {"s3": {"secretKey": "localMinIO"}}})
    assert concrete_model_id(name, "ksp", spec) == f"{name}__ksp-{digest}"


def test_serialization_follows_the_go_struct_order_and_omits_only_absent_optionals():
    spec = build_predictor({
        "protocolVersion": "grpc-v2", "runtime": {"name": "rt"}, "gpu": "preferred",
        "storage": {"s3": {"bucket": "b", "secretKey": "k"}, "persistentVolumeClaim": {"claimName": "c"},
                    "key": "key", "parameters": {"z": "1", "a": "2"}, "schemaPath": "", "path": "p"},
        "schemaPath": "s", "path": "", "modelType": {"version": "", "name": "t"}, "serviceAccountName": "sa",
    })
    assert spec_json(spec) == (
        '{"serviceAccountName":"sa","modelType":{"name":"t","version":""},"path":"","schemaPath":"s",'
        '"storage":{"path":"p","schemaPath":"","parameters":{"a":"2","z":"1"},"key":"key",'
        '"persistentVolumeClaim":{"claimName":"c"},"s3":{"secretKey":"k","bucket":"b"}},'
        '"gpu":"preferred","runtime":{"name":"rt"},"protocolVersion":"grpc-v2"}')
    # An absent path is still written; explicit empty parameters are written as {}.
    assert spec_json(build_predictor({"modelType": {"name": "t"}, "storage": {"parameters": {}}})) == \
        '{"modelType":{"name":"t"},"path":"","storage":{"parameters":{}}}'


def test_strings_are_escaped_as_go_escapes_them():
    assert go_json({"k": "a<b>&c\u2028é\n\"\\"}) == '{"k":"a\\u003cb\\u003e\\u0026c\\u2028é\\n\\"\\\\"}'


def test_a_changed_spec_is_a_new_concrete_model():
    a = parse_predictor({"modelType": {"name": "onnx"}, "storage": {"key": "k", "path": "m/1"}})
    b = parse_predictor({"modelType": {"name": "onnx"}, "storage": {"key": "k", "path": "m/2"}})
    assert concrete_model_id("m", "ksp", a) != concrete_model_id("m", "ksp", b)
    assert concrete_model_id("m", "ksp", a) != concrete_model_id("m", "isvc", a)


# -- the samples ------------------------------------------------------------------------------------

EXPECTED_SAMPLES = {
    # file: (model id, type label, path, key); None: refused with that message
    "example-onnx-mnist-predictor.yaml": (
        "example-onnx-mnist__ksp-0dbc77db1a", "mt:onnx", "onnx/mnist.onnx",
        '{"storage_key":"localMinIO","model_type":{"name":"onnx"}}'),
    "example-triton-xgboost-isvc.yaml": (
        "example-xgboost-mushroom-fil__isvc-5a179f3912", "rt:triton-2.x", "xgboost/mushroom-fil",
        '{"storage_key":"localMinIO","model_type":{"name":"xgboost"}}'),
    "xgboost-fil-predictor.yaml": (
        "xgboost-fil-mushroom__ksp-07ce4328ac", "rt:triton-2.x", "fvt/xgboost/mushroom-fil",
        '{"storage_key":"localMinIO","model_type":{"name":"xgboost"}}'),
    "onnx-predictor-withschema.yaml": (
        "onnx-withschema__ksp-fc1b133858", "mt:onnx", "fvt/onnx/onnx-withschema",
        '{"storage_key":"localMinIO","model_type":{"name":"onnx"},"schema_path":"fvt/onnx/schema/schema.json"}'),
    "predictor_mlserver.yaml": (
        "minimal-mlserver-predictor__ksp-aa857b3a52", "mt:mlserver", "mnt/models",
        '{"storage_key":"localMinIO","storage_params":{"bucket":"triton-models"},"model_type":{"name":"mlserver"}}'),
    # Upstream sends no path at all without spec.storage (its FVT expects the load to fail).
    "no-storage-predictor.yaml": (
        "minimal-sklearn-predictor-no-storage__ksp-1f26c24250", "mt:sklearn", "",
        '{"model_type":{"name":"sklearn"}}'),
    "predictor_custom_complete.yaml": "spec.storage.PersistentVolumeClaim is not supported",
}


def test_every_predictor_and_inference_service_sample_translates():
    seen = set()
    for path in _samples():
        obj = yaml.safe_load(path.read_text())
        if obj.get("kind") not in ("Predictor", "InferenceService"):
            continue
        seen.add(path.name)
        name = obj["metadata"]["name"]
        expected = EXPECTED_SAMPLES.get(path.name)
        if isinstance(expected, str):
            with pytest.raises(InvalidPredictorSpec) as refused:
                mesh_model(obj["kind"], "models", name, obj)
            assert refused.value.message == expected
            assert refused.value.model_id.startswith(f"{name}__ksp-")  # still reported with its id
            continue
        model = mesh_model(obj["kind"], "models", name, obj)
        assert model is not None
        assert model.vmodel_id == name and model.namespace == "models"
        assert model.owner == ("ksp" if obj["kind"] == "Predictor" else "isvc")
        assert model.model_id.startswith(f"{name}__{model.owner}-") and len(model.model_id.rsplit("-", 1)[1]) == 10
        assert model.record.model_id == model.model_id and model.auto_delete_target
        json.loads(model.record.storage_key)
        if expected is not None:
            assert (model.model_id, model.record.model_type, model.record.storage_path,
                    model.record.storage_key) == expected, path.name
    assert {"example-onnx-mnist-predictor.yaml", "example-triton-xgboost-isvc.yaml"} <= seen


def test_the_onnx_mnist_predictor_in_detail():
    obj = _sample("example-onnx-mnist-predictor.yaml")
    spec = parse_predictor(obj["spec"])
    assert spec == PredictorSpec(ModelType("onnx"), path="onnx/mnist.onnx",
                                 storage=Storage(s3=spec.storage.s3))
    assert spec.storage.s3.secret_key == "localMinIO" and spec.storage.s3.bucket is None
    assert spec_json(spec) == '{"modelType":{"name":"onnx"},"path":"onnx/mnist.onnx","storage":{"s3":{"secretKey":"localMinIO"}}}'
    assert model_type_label(spec) == "mt:onnx"
    assert storage_path(spec) == "onnx/mnist.onnx"
    assert model_key(spec) == '{"storage_key":"localMinIO","model_type":{"name":"onnx"}}'


def test_the_triton_xgboost_inference_service_in_detail():
    obj = _sample("example-triton-xgboost-isvc.yaml")
    spec = parse_inference_service(obj)
    assert spec == PredictorSpec(ModelType("xgboost"), storage=Storage(path="xgboost/mushroom-fil", parameters={},
                                                                       key="localMinIO"), runtime="triton-2.x")
    model = mesh_model("InferenceService", "models", "example-xgboost-mushroom-fil", obj)
    assert model.owner == "isvc" and model.vmodel_id == "example-xgboost-mushroom-fil"
    assert model.record.model_type == "rt:triton-2.x"  # a named runtime: no protocol part
    assert model.record.storage_path == "xgboost/mushroom-fil"
    assert model.record.storage_key == '{"storage_key":"localMinIO","model_type":{"name":"xgboost"}}'


# -- Predictor precedence and refusals ---------------------------------------------------------------

def test_new_storage_fields_take_precedence_over_the_deprecated_ones():
    spec = parse_predictor({"modelType": {"name": "t"}, "schemaPath": "old.json",
                            "storage": {"path": "new/p", "key": "new", "parameters": {"bucket": "b2", "type": "s3"}}})
    assert storage_path(spec) == "new/p"
    assert json.loads(model_key(spec)) == {"storage_key": "new", "storage_params": {"bucket": "b2", "type": "s3"},
                                           "model_type": {"name": "t"}, "schema_path": "old.json"}
    old = parse_predictor({"modelType": {"name": "t", "version": "2"}, "path": "old/p",
                           "storage": {"s3": {"secretKey": "s", "bucket": "b"}}})
    assert storage_path(old) == "old/p"
    assert model_key(old) == '{"storage_key":"s","storage_params":{"bucket":"b"},"model_type":{"name":"t","version":"2"}}'
    assert model_key(parse_predictor({"modelType": {"name": "t"}, "storage": {"path": "p", "parameters": {}}})) == \
        '{"model_type":{"name":"t"}}'  # an empty map is omitted from the key


@pytest.mark.parametrize("spec, label", [
    ({"modelType": {"name": "onnx"}}, "mt:onnx"),
    ({"modelType": {"name": "onnx", "version": "1"}}, "mt:onnx:1"),
    ({"modelType": {"name": "onnx", "version": "1"}, "protocolVersion": "grpc-v2"}, "mt:onnx:1|pv:grpc-v2"),
    ({"modelType": {"name": "onnx"}, "protocolVersion": "v2"}, "mt:onnx|pv:v2"),
    ({"modelType": {"name": "onnx"}, "runtime": {"name": "triton-2.x"}, "protocolVersion": "grpc-v2"}, "rt:triton-2.x"),
    ({"modelType": {"name": "onnx"}, "runtime": {"name": ""}}, "mt:onnx"),
])
def test_type_labels(spec, label):
    assert model_type_label(build_predictor(spec)) == label


@pytest.mark.parametrize("storage, top, message", [
    ({"path": "a"}, {"path": "b"}, "Only one of spec.path and spec.storage.path can be specified"),
    ({"schemaPath": "a"}, {"schemaPath": "b"}, "Only one of spec.schemaPath and spec.storage.schemaPath can be specified"),
    ({"persistentVolumeClaim": {"claimName": "c"}}, {}, "spec.storage.PersistentVolumeClaim is not supported"),
    ({"s3": {"secretKey": "k"}, "key": "k2"}, {}, "spec.storage.s3 cannot be specified with any other keys in spec.storage"),
    ({"s3": {"secretKey": "k"}, "path": "p"}, {}, "spec.storage.s3 cannot be specified with any other keys in spec.storage"),
    ({"s3": {"secretKey": "k"}, "parameters": {}}, {}, "spec.storage.s3 cannot be specified with any other keys in spec.storage"),
    ({"s3": {"secretKey": "k"}, "schemaPath": "s"}, {}, "spec.storage.s3 cannot be specified with any other keys in spec.storage"),
])
def test_invalid_predictor_combinations_give_upstreams_message(storage, top, message):
    spec = {"modelType": {"name": "t"}, "storage": storage, **top}
    with pytest.raises(InvalidPredictorSpec) as refused:
        parse_predictor(spec)
    assert refused.value.message == message and refused.value.spec == build_predictor(spec)
    with pytest.raises(InvalidPredictorSpec) as again:
        mesh_model("Predictor", "models", "p", {"spec": spec})
    assert again.value.model_id == concrete_model_id("p", "ksp", build_predictor(spec))


def test_an_empty_top_level_path_does_not_conflict():
    assert storage_path(parse_predictor({"modelType": {"name": "t"}, "path": "", "storage": {"path": "p"}})) == "p"


def test_a_spec_the_schema_would_refuse_is_invalid_without_a_spec():
    with pytest.raises(InvalidPredictorSpec) as refused:
        parse_predictor({"path": "p"})
    assert refused.value.spec is None and "modelType.name" in refused.value.message
    with pytest.raises(InvalidPredictorSpec):
        parse_predictor({"modelType": {"name": "t", "version": 1}})


# -- InferenceService mapping ------------------------------------------------------------------------

@pytest.mark.parametrize("uri, path, parameters", [
    ("s3://bucket/a/b.onnx", "a/b.onnx", {"type": "s3", "bucket": "bucket"}),
    ("gs://bucket/a", "a", {"type": "gcs", "bucket": "bucket"}),
    ("pvc://claim/dir/m", "dir/m", {"type": "pvc", "name": "claim"}),
    ("https://acct.blob.core.windows.net/cont/dir/m.onnx", "dir/m.onnx",
     {"type": "azure", "container": "cont", "account_name": "acct"}),
    ("https://models.example.com:8443/dir/m.onnx?sig=x", "dir/m.onnx",
     {"type": "http", "url": "https://models.example.com:8443?sig=x"}),
    ("http://host/a%20b", "a b", {"type": "http", "url": "http://host"}),
    ("S3://Bucket/p", "p", {"type": "s3", "bucket": "Bucket"}),  # Go lower-cases the scheme only
])
def test_storage_uri_schemes_become_storage_parameters(uri, path, parameters):
    spec = parse_inference_service(_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": uri}))
    assert spec.storage.path == path and dict(spec.storage.parameters) == parameters
    assert spec.storage.key is None and spec.path == ""


def test_uri_parameters_override_storage_parameters_and_annotations_are_fallbacks():
    isvc = _isvc("m", {"modelFormat": {"name": "onnx", "version": "1"}, "protocolVersion": "grpc-v2",
                       "storageUri": "s3://b/p", "storage": {"parameters": {"bucket": "other", "region": "eu"}}},
                 {"serving.kserve.io/secretKey": "from-annotation", "serving.kserve.io/schemaPath": "s.json"})
    spec = parse_inference_service(isvc)
    assert dict(spec.storage.parameters) == {"bucket": "b", "region": "eu", "type": "s3"}
    assert spec.storage.key == "from-annotation" and spec.storage.schema_path == "s.json"
    assert model_type_label(spec) == "mt:onnx:1|pv:grpc-v2"
    explicit = parse_inference_service(_isvc("m", {"modelFormat": {"name": "onnx"},
                                                   "storage": {"path": "p", "key": "k", "schemaPath": "x"}},
                                             {"serving.kserve.io/secretKey": "a", "serving.kserve.io/schemaPath": "b"}))
    assert explicit.storage.key == "k" and explicit.storage.schema_path == "x"


def test_an_unknown_protocol_is_left_out():
    spec = parse_inference_service(_isvc("m", {"modelFormat": {"name": "onnx"}, "protocolVersion": "",
                                               "storageUri": "s3://b/p"}))
    assert spec.protocol_version is None


def test_old_framework_blocks_name_the_type_and_the_runtime_annotation_the_runtime():
    isvc = _isvc("m", None, {"serving.kserve.io/servingRuntime": "mlserver-1.x"},
                 sklearn={"storageUri": "s3://b/p", "protocolVersion": "v2"})
    spec = parse_inference_service(isvc)
    assert spec.model_type == ModelType("sklearn") and spec.runtime == "mlserver-1.x"
    assert spec.protocol_version == "v2" and storage_path(spec) == "p"
    # Upstream's order decides when there are several.
    both = parse_inference_service(_isvc("m", None, onnx={"storageUri": "s3://b/p"}, xgboost={"storageUri": "s3://b/q"}))
    assert both.model_type.name == "xgboost" and storage_path(both) == "q"


@pytest.mark.parametrize("isvc, message", [
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}, onnx={}),
     "the InferenceService m cannot have both the model spec and a framework spec (onnx)"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"}, {"serving.kserve.io/servingRuntime": "r"}),
     "the InferenceService m cannot have both the model spec and the runtime annotation serving.kserve.io/servingRuntime"),
    (_isvc("m"), "no valid InferenceService predictor framework found"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}}),
     "the InferenceService models/m must have either the storageUri or the storage.path"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storage": {"key": "k"}}),
     "the InferenceService models/m must have either the storageUri or the storage.path"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p", "storage": {"path": "p"}}),
     "the InferenceService models/m cannot have both the storageUri and the storage.path"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "ftp://host/p"}),
     "the InferenceService models/m has an unsupported storageUri scheme ftp"),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/%zz"}),
     'could not parse storageUri in InferenceService models/m: parse "s3://b/%zz": invalid URL escape "%zz"'),
    (_isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "://b/p"}),
     'could not parse storageUri in InferenceService models/m: parse "://b/p": missing protocol scheme'),
])
def test_invalid_inference_services_give_upstreams_message(isvc, message):
    with pytest.raises(InvalidPredictorSpec) as refused:
        parse_inference_service(isvc)
    assert refused.value.message == message


def test_only_modelmesh_mode_inference_services_are_served():
    isvc = _isvc("m", {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/p"})
    assert is_modelmesh_inference_service(isvc)
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    assert not is_modelmesh_inference_service(isvc)
    assert mesh_model("InferenceService", "models", "m", isvc) is None
    with pytest.raises(ValueError):
        parse_inference_service(isvc)
    with pytest.raises(ValueError):
        mesh_model("ServingRuntime", "models", "m", isvc)
