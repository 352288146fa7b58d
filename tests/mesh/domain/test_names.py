"""What a registration may name (`mesh.domain.names`, pure)."""

from __future__ import annotations

import pytest

from mesh.domain.errors import InvalidRequest
from mesh.domain.names import MAX_ID_LENGTH, check_id, check_label, check_reference, check_storage_path
from puller.spec import URI_SCHEMES


@pytest.mark.parametrize("value", [
    "m", "mnist-svm", "example-sklearn-isvc__isvc-3642375d03",  # a Kubernetes name, modelmesh-serving's concrete id
    "my.model.v2", "resnet50:1", "team@model", "a+b=c~d", "_private", "9lives", "x" * MAX_ID_LENGTH,
])
def test_ids_that_name_models(value):
    assert check_id("modelId", value) == value


@pytest.mark.parametrize("value, why", [
    ("", "modelId is required"),
    ("x" * (MAX_ID_LENGTH + 1), f"longer than {MAX_ID_LENGTH}"),
    ("a/b", "must not contain '/'"), ("..\\etc", "must not contain"), ("a\\b", "must not contain '\\'"),
    (".", "does not start with"), ("..", "does not start with"), (".hidden", "does not start with"),
    ("-rf", "does not start with"), ("a b", "characters other than"), ("modèle", "characters other than"),
    ("a\x00b", "control characters"), ("a\nb", "control characters"), ("a\x85b", "control characters"),
])
def test_ids_that_cannot_name_models(value, why):
    with pytest.raises(InvalidRequest, match="modelId") as refused:
        check_id("modelId", value)
    assert why in str(refused.value)


def test_references_stay_lenient_for_records_registered_under_older_rules():
    assert check_reference("modelId", "a b é") == "a b é"
    for bad in ("", "a/b", "a\x01b", "x" * 513):
        with pytest.raises(InvalidRequest, match="modelId"):
            check_reference("modelId", bad)


@pytest.mark.parametrize("value", [
    "s3://bucket/models/m", "S3://bucket/m", "https://host/m.onnx?sig=a..b", "pvc://claim/dir/m", "file:///models/m",
    "/models/m", "sklearn/mnist-svm.joblib", "models/v1..2/m",  # '..' inside a name is not a segment
])
def test_storage_paths_the_puller_can_be_asked_for(value):
    assert check_storage_path("modelInfo.path", value, URI_SCHEMES) == value


@pytest.mark.parametrize("value, why", [
    ("", "is required"), ("gs://bucket/m", "unsupported scheme 'gs://'"), ("s3://b/../other", "'..' segments"),
    ("../../etc/passwd", "'..' segments"), ("models/%2e%2e/x", "'..' segments"), ("a\\..\\b", "'..' segments"),
    ("s3://b/m\x00", "control characters"), ("s3://b/m%00", "control characters"), ("/m" * 2049, "longer than 4096"),
])
def test_storage_paths_that_are_refused(value, why):
    with pytest.raises(InvalidRequest, match="modelInfo.path") as refused:
        check_storage_path("modelInfo.path", value, URI_SCHEMES)
    assert why in str(refused.value)


def test_labels_are_bounded_and_printable():
    assert check_label("owner", "team-a") == "team-a"
    for bad in ("x" * 257, "a\tb"):
        with pytest.raises(InvalidRequest, match="owner"):
            check_label("owner", bad)
