"""HTTP(S) downloads against a real local HTTP server: retries, ranges, sharing, limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from puller import IntegrityError, Puller, StorageAccessDenied, StorageNotFound, StorageUnavailable
from tests.puller.conftest import FAST_RETRY, SMALL_PARTS, HttpServer, cache_files


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_single_file(http_server: HttpServer, puller: Puller) -> None:
    data = os.urandom(100_000)
    http_server.state.files["/models/m.onnx"] = data
    pulled = await puller.pull("m", http_server.url("/models/m.onnx"))
    assert pulled.local_path.name == "m.onnx"
    assert pulled.local_path.read_bytes() == data
    assert (pulled.size_bytes, pulled.digest) == (len(data), sha(data))


async def test_connection_dropped_midway_is_retried_without_partial_files(
        http_server: HttpServer, puller: Puller, cache_dir: Path) -> None:
    data = os.urandom(1024 * 1024)  # below the parallel threshold: one streamed GET
    http_server.state.files["/m.bin"] = data
    http_server.state.drop_first["/m.bin"] = 1
    pulled = await puller.pull("m", http_server.url("/m.bin"))
    assert pulled.local_path.read_bytes() == data
    assert http_server.state.body_gets("/m.bin") == 2
    assert puller.stats.retries == 1
    assert cache_files(cache_dir / ".staging") == []
    assert [p for p in cache_files(cache_dir) if p.name != "pull.json"] == [pulled.local_path]


async def test_connection_always_dropped_fails_and_leaves_nothing(
        http_server: HttpServer, puller: Puller, cache_dir: Path) -> None:
    http_server.state.files["/m.bin"] = os.urandom(500_000)
    http_server.state.drop_first["/m.bin"] = 100
    with pytest.raises(StorageUnavailable, match=r"http://127\.0\.0\.1:\d+/m\.bin") as info:
        await puller.pull("m", http_server.url("/m.bin"))
    assert info.value.retryable
    assert http_server.state.body_gets("/m.bin") == FAST_RETRY.attempts
    assert cache_files(cache_dir) == []


async def test_large_object_in_parallel_ranges_survives_a_dropped_range(
        http_server: HttpServer, puller: Puller) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    http_server.state.files["/big.bin"] = data
    http_server.state.drop_first["/big.bin"] = 1  # one range is cut: only that range is fetched again
    pulled = await puller.pull("big", http_server.url("/big.bin"))
    assert pulled.digest == sha(data)
    ranges = [r for p, r in http_server.state.requests if p == "/big.bin" and r and r != "bytes=0-0"]
    parts = -(-len(data) // SMALL_PARTS.part_size)
    assert len(ranges) == parts + 1
    assert puller.stats.retries == 0


async def test_server_without_ranges_streams(http_server: HttpServer, puller: Puller) -> None:
    data = os.urandom(3 * 1024 * 1024)
    http_server.state.ranges = False
    http_server.state.files["/big.bin"] = data
    pulled = await puller.pull("big", http_server.url("/big.bin"))
    assert pulled.digest == sha(data)
    assert http_server.state.body_gets("/big.bin") == 1


async def test_advertised_digest_is_verified(http_server: HttpServer, puller: Puller, cache_dir: Path) -> None:
    data = b"model bytes"
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    http_server.state.files["/good.bin"] = data
    http_server.state.headers["/good.bin"] = {"Repr-Digest": f"sha-256=:{good}:"}
    http_server.state.files["/bad.bin"] = data
    http_server.state.headers["/bad.bin"] = {"Repr-Digest": f"sha-256=:{base64.b64encode(b'x' * 32).decode()}:"}
    assert (await puller.pull("good", http_server.url("/good.bin"))).digest == sha(data)
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        await puller.pull("bad", http_server.url("/bad.bin"))
    assert not info.value.retryable
    assert len([p for p in cache_files(cache_dir) if p.name != "pull.json"]) == 1


async def test_http_errors_are_permanent_and_hide_query_strings(http_server: HttpServer, puller: Puller) -> None:
    http_server.state.status["/denied.bin"] = 403
    with pytest.raises(StorageNotFound, match=r"/missing\.bin: not found \(HTTP 404\)") as info:
        await puller.pull("a", http_server.url("/missing.bin?X-Amz-Signature=supersecretsig"))
    assert "supersecretsig" not in str(info.value)
    with pytest.raises(StorageNotFound) as info:
        await puller.pull("a2", http_server.url("/missing.bin").replace("http://", "http://user:pa55w0rd@"))
    assert "pa55w0rd" not in str(info.value) and "/missing.bin" in str(info.value)
    with pytest.raises(StorageAccessDenied, match="HTTP 403"):
        await puller.pull("b", http_server.url("/denied.bin"))
    http_server.state.status["/flaky.bin"] = 503
    with pytest.raises(StorageUnavailable, match="HTTP 503"):
        await puller.pull("c", http_server.url("/flaky.bin"))
    assert puller.stats.retries == FAST_RETRY.attempts - 1  # only the 503 was retried


async def test_zip_archive_is_unpacked(http_server: HttpServer, puller: Puller) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("saved_model/saved_model.pb", b"pb")
        zf.writestr("saved_model/variables/variables.index", b"idx")
    http_server.state.files["/tf.zip"] = buf.getvalue()
    pulled = await puller.pull("tf", http_server.url("/tf.zip"))
    assert (pulled.local_path / "saved_model" / "variables" / "variables.index").read_bytes() == b"idx"
    assert pulled.size_bytes == 5


async def test_eight_concurrent_pulls_share_one_download(http_server: HttpServer, puller: Puller) -> None:
    data = os.urandom(1_500_000)
    http_server.state.files["/shared.bin"] = data
    http_server.state.gate.clear()  # hold the download until every caller is waiting on it
    pulls = [asyncio.create_task(puller.pull("shared", http_server.url("/shared.bin"))) for _ in range(8)]
    await asyncio.to_thread(http_server.state.wait_for, lambda s: s.active == 1)
    http_server.state.gate.set()
    results = await asyncio.gather(*pulls)
    assert len({r.local_path for r in results}) == 1 and results[0].digest == sha(data)
    assert http_server.state.body_gets("/shared.bin") == 1
    assert len(http_server.state.requests) == 2  # the size probe and the download
    assert puller.stats.downloads_started == 1


async def test_concurrent_pull_limit(http_server: HttpServer, cache_dir: Path) -> None:
    for i in range(4):
        http_server.state.files[f"/m{i}.bin"] = bytes([i]) * 1000
    puller = Puller(cache_dir, env={}, retry=FAST_RETRY, transfer=SMALL_PARTS, max_concurrent_pulls=2)
    try:
        http_server.state.gate.clear()
        pulls = [asyncio.create_task(puller.pull(f"m{i}", http_server.url(f"/m{i}.bin"))) for i in range(4)]
        await asyncio.to_thread(http_server.state.wait_for, lambda s: s.active == 2)
        # Two are on the wire, two are queued behind the limit and have sent nothing.
        assert puller.pulls_waiting == 2
        assert len(http_server.state.requests) == 2
        http_server.state.gate.set()
        results = await asyncio.gather(*pulls)
    finally:
        await puller.aclose()
    assert http_server.state.max_active == 2
    assert [r.local_path.read_bytes() for r in results] == [bytes([i]) * 1000 for i in range(4)]


async def test_cancelled_pull_leaves_nothing(http_server: HttpServer, puller: Puller, cache_dir: Path) -> None:
    http_server.state.files["/slow.bin"] = os.urandom(10_000)
    http_server.state.gate.clear()
    task = asyncio.create_task(puller.pull("slow", http_server.url("/slow.bin")))
    await asyncio.to_thread(http_server.state.wait_for, lambda s: s.active == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    http_server.state.gate.set()
    assert puller.pulls_in_progress == 0
    assert cache_files(cache_dir) == []


async def test_https_with_the_ca_from_storage_config(https_server: HttpServer, cache_dir: Path,
                                                     tmp_path: Path) -> None:
    from puller import StorageAccessDenied as Denied
    from tests.puller.conftest import write_storage_config

    data = os.urandom(50_000)
    https_server.state.files["/m.onnx"] = data
    untrusting = Puller(cache_dir, env={}, retry=FAST_RETRY)
    try:
        with pytest.raises(Denied, match="TLS certificate verification failed"):
            await untrusting.pull("m", https_server.url("/m.onnx"))
        assert untrusting.stats.retries == 0
    finally:
        await untrusting.aclose()
    config = write_storage_config(tmp_path / "storage-config", {
        "local-https": {"type": "http", "host": "127.0.0.1", "certificate": str(https_server.ca_bundle)}})
    trusting = Puller(cache_dir, env={}, retry=FAST_RETRY, storage_config_dir=config)
    try:
        pulled = await trusting.pull("m", https_server.url("/m.onnx"))
    finally:
        await trusting.aclose()
    assert pulled.digest == sha(data)
