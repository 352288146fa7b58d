"""Azure Blob through azure-storage-blob against a real Azurite (skipped without azurite)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from puller import Puller, StorageAccessDenied, StorageNotFound
from tests.puller.conftest import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    FAST_RETRY,
    SMALL_PARTS,
    Azurite,
    cache_files,
    write_storage_config,
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_puller(cache_dir: Path, tmp_path: Path, entries: dict[str, Any], **kwargs: Any) -> Puller:
    config_dir = write_storage_config(tmp_path / "storage-config", entries)
    return Puller(cache_dir, storage_config_dir=config_dir, env={}, retry=FAST_RETRY, transfer=SMALL_PARTS, **kwargs)


async def test_single_blob_via_connection_string(azurite: Azurite, container: Any, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    data = os.urandom(200_000)
    container.upload_blob("onnx/model.onnx", data)
    puller = make_puller(cache_dir, tmp_path, {"azstore": {"type": "azure",
                                                           "connection_string": azurite.connection_string}})
    key = json.dumps({"storage_key": "azstore", "storage_params": {"container": container.container_name}})
    try:
        pulled = await puller.pull("m", "onnx/model.onnx", key)
    finally:
        await puller.aclose()
    assert pulled.local_path.read_bytes() == data
    assert (pulled.size_bytes, pulled.digest) == (len(data), sha(data))


async def test_prefix_via_azure_uri_and_account_key(azurite: Azurite, container: Any, cache_dir: Path,
                                                    tmp_path: Path) -> None:
    files = {"1/model.onnx": os.urandom(10_000), "config.pbtxt": b"cfg", "1/extra/labels.txt": b"a,b"}
    for rel, body in files.items():
        container.upload_blob(f"bert/{rel}", body)
    # The URI names the account; the storage-config entry for that account supplies key and endpoint.
    entry = {"type": "azure", "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY,
             "endpoint_url": azurite.endpoint}
    puller = make_puller(cache_dir, tmp_path, {"devstore": entry})
    uri = f"https://{AZURITE_ACCOUNT}.blob.core.windows.net/{container.container_name}/bert"
    try:
        pulled = await puller.pull("bert", uri)
    finally:
        await puller.aclose()
    got = {p.relative_to(pulled.local_path).as_posix(): p.read_bytes()
           for p in pulled.local_path.rglob("*") if p.is_file()}
    assert got == files


async def test_large_blob_in_parallel_ranges(azurite: Azurite, container: Any, cache_dir: Path,
                                             tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    container.upload_blob("big/model.bin", data)
    puller = make_puller(cache_dir, tmp_path, {"default": {"type": "azure",
                                                           "connection_string": azurite.connection_string,
                                                           "container": container.container_name}})
    try:
        pulled = await puller.pull("big", "big/model.bin")
    finally:
        await puller.aclose()
    assert pulled.digest == sha(data)
    assert puller.stats.bytes_downloaded == len(data)


async def test_wrong_key_and_missing_blob(azurite: Azurite, container: Any, cache_dir: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    container.upload_blob("m/model.onnx", b"x")
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    entries = {
        "bad": {"type": "azure", "account_name": AZURITE_ACCOUNT, "account_key": wrong_key,
                "endpoint_url": azurite.endpoint, "container": container.container_name},
        "good": {"type": "azure", "connection_string": azurite.connection_string,
                 "container": container.container_name},
    }
    puller = make_puller(cache_dir, tmp_path, entries)
    try:
        with pytest.raises(StorageAccessDenied) as denied:
            await puller.pull("a", "m/model.onnx", json.dumps({"storage_key": "bad"}))
        with pytest.raises(StorageNotFound, match=r"m/absent\.onnx.*no such blob") as missing:
            await puller.pull("b", "m/absent.onnx", json.dumps({"storage_key": "good"}))
        with pytest.raises(StorageNotFound, match="container does not exist"):
            await puller.pull("c", "m/model.onnx", json.dumps({"storage_key": "good",
                                                               "storage_params": {"container": "no-such-container"}}))
        assert puller.stats.retries == 0
    finally:
        await puller.aclose()
    for error in (denied.value, missing.value):
        assert not error.retryable
        assert wrong_key not in str(error) and AZURITE_KEY not in str(error)
    assert container.container_name in str(denied.value)
    assert wrong_key not in caplog.text and AZURITE_KEY not in caplog.text
    assert cache_files(cache_dir) == []
