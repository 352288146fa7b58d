"""Nothing is ever written outside the cache: malicious archives, keys and links."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from puller import InvalidStorageUri, Puller, StorageNotFound, UnsafePath
from tests.puller.conftest import HttpServer, cache_files, files_outside


def tar_gz(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add(tar)
    return buf.getvalue()


def add_file(tar: tarfile.TarFile, name: str, body: bytes = b"payload") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    tar.addfile(info, io.BytesIO(body))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def add_special(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


def zip_bytes(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, body)
    return buf.getvalue()


MALICIOUS_TARS: dict[str, Callable[[tarfile.TarFile], None]] = {
    "dotdot": lambda t: (add_file(t, "ok.txt"), add_file(t, "../../escaped.txt")),
    "absolute": lambda t: add_file(t, "/tmp/puller-escaped-absolute.txt"),
    "nested-dotdot": lambda t: add_file(t, "model/../../../escaped.txt"),
    "symlink-absolute": lambda t: add_link(t, "model/link", "/etc/passwd"),
    "symlink-dotdot": lambda t: add_link(t, "model/link", "../../../outside"),
    # Lexically inside, but resolves through another link to the parent of the target.
    "symlink-chain": lambda t: (add_link(t, "a/b/up", "../.."), add_link(t, "escape", "a/b/up/../x")),
    # A link to outside, then a file written "through" it.
    "write-through-link": lambda t: (add_link(t, "dir", "../outside-dir"), add_file(t, "dir/escaped.txt")),
    "hardlink-outside": lambda t: add_link(t, "model/hard", "../../etc/passwd", tarfile.LNKTYPE),
    "device": lambda t: add_special(t, "model/null"),
}

MALICIOUS_ZIPS: dict[str, list[tuple[str, bytes, int | None]]] = {
    "dotdot": [("ok.txt", b"x", None), ("../../escaped.txt", b"x", None)],
    "absolute": [("/tmp/puller-escaped-absolute.txt", b"x", None)],
    "symlink-outside": [("link", b"../../outside", stat.S_IFLNK | 0o777)],
    "symlink-absolute": [("link", b"/etc/passwd", stat.S_IFLNK | 0o777)],
}


def assert_nothing_outside(tmp_path: Path, cache_dir: Path) -> None:
    assert files_outside(tmp_path, cache_dir) == []
    assert not Path("/tmp/puller-escaped-absolute.txt").exists()
    assert cache_files(cache_dir) == []  # and nothing half-unpacked stays in the cache


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
async def test_malicious_tar_is_refused(case: str, http_server: HttpServer, puller: Puller, cache_dir: Path,
                                        tmp_path: Path) -> None:
    http_server.state.files["/m.tar.gz"] = tar_gz(MALICIOUS_TARS[case])
    with pytest.raises(UnsafePath) as info:
        await puller.pull(f"evil-{case}", http_server.url("/m.tar.gz"))
    assert "/m.tar.gz" in str(info.value)
    assert not info.value.retryable
    assert_nothing_outside(tmp_path, cache_dir)


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
async def test_malicious_zip_is_refused(case: str, http_server: HttpServer, puller: Puller, cache_dir: Path,
                                        tmp_path: Path) -> None:
    http_server.state.files["/m.zip"] = zip_bytes(MALICIOUS_ZIPS[case])
    with pytest.raises(UnsafePath):
        await puller.pull(f"evil-{case}", http_server.url("/m.zip"))
    assert_nothing_outside(tmp_path, cache_dir)


async def test_links_inside_the_model_are_kept(http_server: HttpServer, puller: Puller) -> None:
    def add(t: tarfile.TarFile) -> None:
        add_file(t, "model/1/model.onnx", b"onnx")
        add_link(t, "model/latest", "1")
        add_link(t, "model/copy.onnx", "model/1/model.onnx", tarfile.LNKTYPE)

    http_server.state.files["/ok.tgz"] = tar_gz(add)
    pulled = await puller.pull("ok", http_server.url("/ok.tgz"))
    assert (pulled.local_path / "model" / "latest" / "model.onnx").read_bytes() == b"onnx"
    assert (pulled.local_path / "model" / "copy.onnx").read_bytes() == b"onnx"
    assert (pulled.local_path / "model" / "latest").is_symlink()


async def test_corrupt_archive_is_an_integrity_error(http_server: HttpServer, puller: Puller,
                                                     cache_dir: Path) -> None:
    from puller import IntegrityError

    http_server.state.files["/broken.tar.gz"] = b"\x1f\x8b\x08\x00 definitely not gzip"
    with pytest.raises(IntegrityError, match="corrupt or unreadable archive"):
        await puller.pull("broken", http_server.url("/broken.tar.gz"))
    assert cache_files(cache_dir) == []


async def test_archive_bomb_stops_at_the_disk_budget(http_server: HttpServer, cache_dir: Path,
                                                     tmp_path: Path) -> None:
    from puller import DiskBudgetExceeded

    http_server.state.files["/bomb.tar.gz"] = tar_gz(lambda t: add_file(t, "zeros", b"\0" * 5_000_000))
    assert len(http_server.state.files["/bomb.tar.gz"]) < 100_000
    puller = Puller(cache_dir, env={}, disk_budget_bytes=1_000_000)
    try:
        with pytest.raises(DiskBudgetExceeded):
            await puller.pull("bomb", http_server.url("/bomb.tar.gz"))
    finally:
        await puller.aclose()
    assert cache_files(cache_dir) == []


@pytest.mark.parametrize(
    ("path", "key", "error"),
    [
        ("s3://models-bucket/../../etc/passwd", None, UnsafePath),
        ("../../etc/passwd", json.dumps({"storage_params": {"type": "s3", "bucket": "models-bucket"}}), UnsafePath),
        ("/etc/passwd", json.dumps({"storage_params": {"type": "s3", "bucket": "models-bucket"}}), UnsafePath),
        ("pvc://claim/../../../etc", None, UnsafePath),
        ("http://127.0.0.1:1/..", None, UnsafePath),
        ("ftp://host/model", None, InvalidStorageUri),
    ],
)
async def test_unsafe_keys_are_refused_before_any_request(path: str, key: str | None, error: type,
                                                          puller: Puller, cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(error):
        await puller.pull("bad", path, key)
    assert puller.stats.downloads_started == 0
    assert_nothing_outside(tmp_path, cache_dir)


# ----------------------------------------------------------------------------- local paths


async def test_local_paths_are_returned_in_place(tmp_path: Path, cache_dir: Path) -> None:
    pvc_root = tmp_path / "pvc"
    model_dir = pvc_root / "claim-1" / "models" / "m1"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"onnx")
    single = tmp_path / "single.onnx"
    single.write_bytes(b"single")
    puller = Puller(cache_dir, env={}, pvc_root=pvc_root)
    try:
        via_pvc = await puller.pull("a", "pvc://claim-1/models/m1")
        via_file = await puller.pull("b", f"file://{model_dir}")
        via_plain = await puller.pull("c", str(single))
        via_key = await puller.pull("d", "models/m1", json.dumps({"storage_params": {"type": "pvc",
                                                                                      "name": "claim-1"}}))
        with pytest.raises(StorageNotFound, match="no such file"):
            await puller.pull("e", "pvc://claim-1/models/absent")
        await puller.release("a")  # never deletes files it did not download
    finally:
        await puller.aclose()
    assert via_pvc.local_path == model_dir == via_file.local_path == via_key.local_path
    assert via_pvc.digest == via_file.digest and via_pvc.size_bytes == 4
    assert via_plain.local_path == single and via_plain.size_bytes == 6
    assert (model_dir / "1" / "model.onnx").exists()
    assert cache_files(cache_dir) == []
