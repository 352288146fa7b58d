"""The pure parts: resolving storage specs, path safety, redaction, retry delays."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from puller import InvalidStorageUri, RetryPolicy, UnsafePath
from puller.spec import (
    AzureLocation,
    Checksum,
    HttpLocation,
    LocalLocation,
    S3Location,
    check_relative_key,
    resolve,
    safe_join,
)
from puller.storage_config import Redactor, StorageConfig, StorageEntry, secrets_in

PVC = Path("/pvc")


def r(path: str, key: str | None = None, types: dict[str, str] | None = None):
    return resolve(path, key, pvc_root=PVC, storage_types=types or {})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("s3://models/mnist/model.onnx", S3Location("models", "mnist/model.onnx")),
        ("s3://models/prefix/", S3Location("models", "prefix")),
        ("s3://models", S3Location("models", "")),
        ("https://acct1.blob.core.windows.net/cont/a/b.onnx", AzureLocation("acct1", "cont", "a/b.onnx")),
        ("https://example.com/m.tar.gz?sig=abc", HttpLocation("https://example.com/m.tar.gz?sig=abc")),
        ("http://127.0.0.1:8000/m.onnx", HttpLocation("http://127.0.0.1:8000/m.onnx")),
        ("pvc://my-claim/models/m1", LocalLocation(Path("/pvc/my-claim/models/m1"))),
        ("file:///srv/models/m1", LocalLocation(Path("/srv/models/m1"))),
        ("/srv/models/m1", LocalLocation(Path("/srv/models/m1"))),
    ],
)
def test_uris_resolve_to_typed_locations(path: str, expected: object) -> None:
    assert r(path).location == expected


def test_modelmesh_key_picks_storage_and_bucket() -> None:
    key = json.dumps({"storage_key": "mys3", "storage_params": {"bucket": "other-bucket"}})
    source = r("sklearn/model.joblib", key, {"mys3": "s3"})
    assert source.location == S3Location("other-bucket", "sklearn/model.joblib")
    assert source.storage_key == "mys3"


def test_relative_path_goes_to_default_storage() -> None:
    source = r("onnx/mnist", "", {"default": "s3"})
    assert source.location == S3Location("", "onnx/mnist")
    assert source.storage_key is None


def test_storage_params_type_without_key() -> None:
    key = json.dumps({"storage_params": {"type": "azure", "container": "models"}})
    assert r("a/b", key).location == AzureLocation(None, "models", "a/b")
    key = json.dumps({"storage_params": {"type": "pvc", "name": "claim-1"}})
    assert r("x/y", key).location == LocalLocation(Path("/pvc/claim-1/x/y"))


def test_checksum_in_model_key() -> None:
    digest = "ab" * 32
    assert r("s3://models/m", json.dumps({"checksum": f"sha256:{digest}"})).checksum == Checksum("sha256", digest)
    with pytest.raises(InvalidStorageUri, match="checksum"):
        r("s3://models/m", json.dumps({"checksum": "sha256:xyz"}))


@pytest.mark.parametrize(
    ("path", "key", "types", "match"),
    [
        ("gs://bucket/x", None, {}, "unsupported scheme 'gs'"),
        ("s3://Bad_Bucket/x", None, {}, "invalid S3 bucket name"),
        ("s3://ab/x", None, {}, "invalid S3 bucket name"),
        ("relative/path", None, {}, "no storage"),
        ("m", "{not json", {}, "not valid JSON"),
        ("m", "[1]", {}, "JSON object"),
        ("m", json.dumps({"storage_key": "nope"}), {"default": "s3"}, "storage key 'nope' is not in the storage config"),
        ("m", json.dumps({"storage_params": {"type": "ftp"}}), {}, "unsupported storage type"),
        ("file://otherhost/x", None, {}, "must be local"),
        ("pvc://Bad_Claim/x", None, {}, "invalid persistent volume claim"),
        ("", None, {}, "empty"),
    ],
)
def test_invalid_specs_name_the_problem(path: str, key: str | None, types: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidStorageUri, match=match) as info:
        r(path, key, types)
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("path", "key", "types"),
    [
        ("s3://models/a/../../etc/passwd", None, {}),
        ("pvc://claim/../../etc", None, {}),
        ("pvc://claim/a/../../../etc", None, {}),
        ("/srv/../etc/passwd", None, {}),
        ("../outside", None, {"default": "s3"}),
        ("/abs/key", json.dumps({"storage_key": "s"}), {"s": "s3"}),
        ("a//b", None, {"default": "s3"}),
        ("https://acct1.blob.core.windows.net/cont/../x", None, {}),
    ],
)
def test_unsafe_keys_are_refused(path: str, key: str | None, types: dict[str, str]) -> None:
    with pytest.raises(UnsafePath):
        r(path, key, types)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a/./b", "a\x00b", "", "a//b", "\\x"])
def test_check_relative_key_refuses(key: str) -> None:
    with pytest.raises(UnsafePath):
        check_relative_key(key, where="test")


def test_safe_join_stays_below_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b/c.txt", where="t") == tmp_path / "a" / "b" / "c.txt"
    assert check_relative_key("dir/", where="t") == "dir"
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, "a/../../x", where="t")


def test_http_display_drops_secrets_in_url() -> None:
    loc = HttpLocation("https://user:pw@example.com/m.onnx?X-Amz-Signature=s3cr3t#frag")
    assert loc.display == "https://example.com/m.onnx"
    assert loc.filename == "m.onnx"


def test_storage_config_selection_and_secret_hiding() -> None:
    config = StorageConfig({
        "default": StorageEntry("default", "s3", {"secret_access_key": "sekret-default"}),
        "team-a": StorageEntry("team-a", "s3", {"bucket": "bucket-a", "secret_access_key": "sekret-a"}),
        "blob": StorageEntry("blob", "azure", {"account_name": "acct1",
                                               "connection_string": "AccountName=acct1;AccountKey=KEYKEY;"}),
    })
    assert config.select("s3", storage_key=None, match={"bucket": "bucket-a"}, where="w").name == "team-a"
    assert config.select("s3", storage_key=None, match={"bucket": "zzz"}, where="w").name == "default"
    assert config.select("azure", storage_key=None, match={"account_name": "acct1"}, where="w").name == "blob"
    assert config.select("azure", storage_key=None, match={"account_name": "other"}, where="w") is None
    with pytest.raises(InvalidStorageUri, match="type 'azure', not 's3'"):
        config.select("s3", storage_key="blob", match={}, where="w")
    assert "sekret" not in repr(config)
    assert {"sekret-default", "sekret-a", "KEYKEY"} <= config.secret_values()
    redact = Redactor(config.secret_values() | secrets_in({"AWS_SECRET_ACCESS_KEY": "envsecret"}))
    assert redact("failed with sekret-a and KEYKEY and envsecret") == "failed with *** and *** and ***"


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=3.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 6)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(0 < d <= 3.0 for d in delays)
    assert policy.delay(10, rng) >= 1.5
