"""S3 through boto3 against a real moto server (with signature and IAM checks on)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path

import boto3.s3.transfer
import pytest

from puller import (
    DiskBudgetExceeded,
    IntegrityError,
    InvalidStorageUri,
    Puller,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
    TransferConfig,
    UnsafePath,
)
from tests.puller.conftest import FAST_RETRY, SMALL_PARTS, S3Bucket, cache_files, files_outside, write_storage_config


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_puller(cache_dir: Path, tmp_path: Path, entries: dict | None = None, **kwargs) -> Puller:
    config_dir = write_storage_config(tmp_path / "storage-config", entries) if entries else None
    kwargs.setdefault("env", {})
    return Puller(cache_dir, storage_config_dir=config_dir, retry=FAST_RETRY, transfer=SMALL_PARTS, **kwargs)


async def test_single_object(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    bucket.put("mnist/model.onnx", data)
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()})
    try:
        pulled = await puller.pull("mnist", f"s3://{bucket.name}/mnist/model.onnx")
    finally:
        await puller.aclose()
    assert pulled.local_path.name == "model.onnx"
    assert pulled.local_path.read_bytes() == data
    assert pulled.size_bytes == len(data)
    assert pulled.digest == sha(data)
    assert cache_dir in pulled.local_path.parents
    assert not list((cache_dir / ".staging").iterdir())


async def test_prefix_with_nested_files(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    files = {"config.pbtxt": b"name: 'm'", "1/model.onnx": os.urandom(50_000), "1/sub/vocab.txt": b"a\nb\n"}
    for rel, body in files.items():
        bucket.put(f"models/bert/{rel}", body)
    bucket.put("models/bert/empty-dir/", b"")  # a console-made "folder"
    bucket.put("models/bert-other/x", b"must not be pulled")
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()})
    try:
        first = await puller.pull("bert", f"s3://{bucket.name}/models/bert")
        again = await puller.pull("bert-copy", f"s3://{bucket.name}/models/bert/")
    finally:
        await puller.aclose()
    assert first.local_path.is_dir()
    got = {p.relative_to(first.local_path).as_posix(): p.read_bytes()
           for p in first.local_path.rglob("*") if p.is_file()}
    assert got == files
    assert first.size_bytes == sum(map(len, files.values()))
    assert first.digest == again.digest and first.digest.startswith("sha256:")
    assert first.local_path != again.local_path


async def test_multipart_sized_object_in_parallel_ranges(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    data = os.urandom(12 * 1024 * 1024 + 12345)
    config = boto3.s3.transfer.TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    bucket.client.upload_fileobj(io.BytesIO(data), bucket.name, "big/model.bin", Config=config)
    etag = bucket.client.head_object(Bucket=bucket.name, Key="big/model.bin")["ETag"]
    assert "-" in etag  # really a multipart object
    bucket.put("big/single.bin", data)  # same bytes, single-part: the ETag is the MD5 and is checked
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()})
    try:
        multi = await puller.pull("big", f"s3://{bucket.name}/big/model.bin")
        single = await puller.pull("big-single", f"s3://{bucket.name}/big/single.bin")
    finally:
        await puller.aclose()
    assert multi.size_bytes == len(data) == single.size_bytes
    assert multi.digest == sha(data) == single.digest
    assert hashlib.sha256(multi.local_path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_wrong_credentials_fail_fast_and_never_leak(bucket: S3Bucket, cache_dir: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    bucket.put("m/model.onnx", b"x" * 100)
    secret = "wrong-secret-Zq8vX2pL"
    caplog.set_level(logging.DEBUG, logger="puller")
    for entry in (bucket.storage_entry(secret_access_key=secret),
                  bucket.storage_entry(access_key_id="AKIAUNKNOWNKEY0000", secret_access_key=secret)):
        puller = make_puller(cache_dir, tmp_path, {"default": entry})
        try:
            with pytest.raises(StorageAccessDenied) as info:
                await puller.pull("m", f"s3://{bucket.name}/m/model.onnx")
        finally:
            await puller.aclose()
        assert info.value.retryable is False
        assert puller.stats.retries == 0
        assert f"s3://{bucket.name}/m/model.onnx" in str(info.value)
        assert secret not in str(info.value) and "AKIAUNKNOWNKEY0000" not in str(info.value)
    assert secret not in caplog.text and "AKIAUNKNOWNKEY0000" not in caplog.text
    assert not cache_files(cache_dir / ".staging")


async def test_missing_key_bucket_and_empty_prefix(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("present/x", b"1")
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()})
    try:
        with pytest.raises(StorageNotFound, match=rf"s3://{bucket.name}/absent/model.onnx: no such object") as info:
            await puller.pull("a", f"s3://{bucket.name}/absent/model.onnx")
        assert not info.value.retryable
        with pytest.raises(StorageNotFound, match="s3://no-such-bucket-here/m.*bucket does not exist"):
            await puller.pull("b", "s3://no-such-bucket-here/m")
        with pytest.raises(StorageNotFound, match="no objects under the prefix 'empty/'"):
            await puller.pull("c", f"s3://{bucket.name}/empty/")
        with pytest.raises(InvalidStorageUri, match="unsupported scheme"):
            await puller.pull("d", "gs://bucket/model")
        assert puller.stats.retries == 0
    finally:
        await puller.aclose()


async def test_bucket_and_credentials_from_storage_config(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("sklearn/model.joblib", b"joblib-bytes")
    entries = {
        # A default pointing nowhere useful: the named key and the bucket match must win over it.
        "default": bucket.storage_entry(secret_access_key="not-the-right-one"),
        "team-store": bucket.storage_entry(default_bucket=bucket.name),
    }
    puller = make_puller(cache_dir, tmp_path, entries)
    try:
        by_key = await puller.pull("m1", "sklearn/model.joblib", json.dumps({"storage_key": "team-store"}))
        by_bucket_match = await puller.pull("m2", f"s3://{bucket.name}/sklearn/model.joblib")
        with pytest.raises(StorageAccessDenied):  # relative path, no key: the (bad) default entry
            await puller.pull("m3", "sklearn/model.joblib", json.dumps({"storage_params": {"bucket": "zzz-bucket"}}))
        with pytest.raises(InvalidStorageUri, match="storage key 'missing'"):
            await puller.pull("m4", "sklearn/model.joblib", json.dumps({"storage_key": "missing"}))
    finally:
        await puller.aclose()
    assert by_key.local_path.read_bytes() == b"joblib-bytes"
    assert by_bucket_match.digest == by_key.digest


async def test_environment_fallback(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("env/model.onnx", b"from-env")
    puller = make_puller(cache_dir, tmp_path, None, env=bucket.env())
    try:
        pulled = await puller.pull("env", f"s3://{bucket.name}/env/model.onnx")
    finally:
        await puller.aclose()
    assert pulled.local_path.read_bytes() == b"from-env"


async def test_archive_object_is_unpacked(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in {"model/1/model.onnx": b"onnx", "model/config.pbtxt": b"cfg"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    archive = buf.getvalue()
    bucket.put("archives/model.tar.gz", archive)
    entries = {"default": bucket.storage_entry()}
    puller = make_puller(cache_dir, tmp_path, entries)
    try:
        pulled = await puller.pull("arch", f"s3://{bucket.name}/archives/model.tar.gz",
                                   json.dumps({"checksum": sha(archive)}))
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            await puller.pull("arch-bad", f"s3://{bucket.name}/archives/model.tar.gz",
                              json.dumps({"checksum": "sha256:" + "0" * 64}))
        md5 = hashlib.md5(archive).hexdigest()
        assert (await puller.pull("arch-md5", f"s3://{bucket.name}/archives/model.tar.gz",
                                  json.dumps({"checksum": f"md5:{md5}"}))).digest == pulled.digest
        with pytest.raises(IntegrityError, match="md5 mismatch"):
            await puller.pull("arch-md5-bad", f"s3://{bucket.name}/archives/model.tar.gz",
                              json.dumps({"checksum": "md5:" + "0" * 32}))
    finally:
        await puller.aclose()
    assert (pulled.local_path / "model" / "1" / "model.onnx").read_bytes() == b"onnx"
    assert not list(pulled.local_path.parent.glob("archive-*"))
    assert pulled.size_bytes == 7


async def test_traversal_key_in_prefix_is_refused(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("evil/ok.txt", b"fine")
    bucket.put("evil/../../escaped.txt", b"gotcha")  # S3 stores '..' in keys verbatim
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()})
    try:
        with pytest.raises(UnsafePath, match=r"\.\."):
            await puller.pull("evil", f"s3://{bucket.name}/evil/")
        with pytest.raises(UnsafePath):
            await puller.pull("evil2", "../../escaped.txt", json.dumps({"storage_params": {"bucket": bucket.name},
                                                                         "storage_key": "default"}))
    finally:
        await puller.aclose()
    assert files_outside(tmp_path, cache_dir, {tmp_path / "storage-config"}) == []
    assert cache_files(cache_dir) == []


async def test_release_and_disk_budget(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("a/model.bin", b"a" * 6000)
    bucket.put("b/model.bin", b"b" * 6000)
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()}, disk_budget_bytes=10_000)
    try:
        a = await puller.pull("a", f"s3://{bucket.name}/a/model.bin")
        with pytest.raises(DiskBudgetExceeded, match="needs 6000 bytes") as info:
            await puller.pull("b", f"s3://{bucket.name}/b/model.bin")
        assert not info.value.retryable
        await puller.release("a")
        assert not a.local_path.exists()
        b = await puller.pull("b", f"s3://{bucket.name}/b/model.bin")
        await puller.release("never-pulled")  # a no-op
        assert puller.bytes_held == 6000
    finally:
        await puller.aclose()
    assert b.local_path.read_bytes() == b"b" * 6000
    assert [p for p in cache_dir.iterdir() if not p.name.startswith(".")] == [b.local_path.parent.parent]


async def test_cache_survives_restart_and_is_reused(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    bucket.put("r/model.bin", b"r" * 1000)
    entries = {"default": bucket.storage_entry()}
    first = make_puller(cache_dir, tmp_path, entries)
    try:
        pulled = await first.pull("r", f"s3://{bucket.name}/r/model.bin")
    finally:
        await first.aclose()
    (cache_dir / ".staging" / "leftover.123").mkdir()  # as if a process died mid-pull
    second = make_puller(cache_dir, tmp_path, entries)
    try:
        again = await second.pull("r", f"s3://{bucket.name}/r/model.bin")
        assert second.stats.downloads_started == 0
    finally:
        await second.aclose()
    assert again == pulled
    assert not (cache_dir / ".staging" / "leftover.123").exists()


async def test_unreachable_store_is_retried_then_unavailable(cache_dir: Path, tmp_path: Path) -> None:
    from tests.support.ports import free_port

    entry = {"type": "s3", "access_key_id": "k", "secret_access_key": "s3cr3t-value",
             "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    puller = make_puller(cache_dir, tmp_path, {"default": entry})
    try:
        with pytest.raises(StorageUnavailable, match="connection failed") as info:
            await puller.pull("down", "s3://some-bucket/m.onnx")
    finally:
        await puller.aclose()
    assert info.value.retryable
    assert puller.stats.retries == FAST_RETRY.attempts - 1
    assert "s3cr3t-value" not in str(info.value)


async def test_parallel_transfer_config_is_used(bucket: S3Bucket, cache_dir: Path, tmp_path: Path) -> None:
    # Eight models at once through one client: the connection pool and threads hold up.
    for i in range(8):
        bucket.put(f"many/{i}/model.bin", bytes([i]) * (3 * 1024 * 1024))
    puller = make_puller(cache_dir, tmp_path, {"default": bucket.storage_entry()}, max_concurrent_pulls=4)
    try:
        results = await asyncio.gather(*(puller.pull(f"m{i}", f"s3://{bucket.name}/many/{i}/model.bin")
                                         for i in range(8)))
    finally:
        await puller.aclose()
    assert [r.digest for r in results] == [sha(bytes([i]) * (3 * 1024 * 1024)) for i in range(8)]
    assert isinstance(SMALL_PARTS, TransferConfig)
