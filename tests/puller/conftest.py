"""Real servers for the puller tests: moto (S3), Azurite (Azure Blob), a local HTTP server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from puller import Puller, RetryPolicy, TransferConfig
from tests.support.moto_server import MotoServer
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.02, max_delay_s=0.1)
# Small parts, so that multi-MB test objects take the parallel-range path.
SMALL_PARTS = TransferConfig(part_size=1024 * 1024, parallel_threshold=2 * 1024 * 1024, concurrency=4)


# ----------------------------------------------------------------------------- helpers


def write_storage_config(directory: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """A storage-config directory shaped like a mounted Kubernetes Secret."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..2024_01_01_00_00_00.000000001"
    data.mkdir(exist_ok=True)
    for name, entry in entries.items():
        (data / name).write_text(json.dumps(entry))
        link = directory / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(data.name + "/" + name)
    return directory


def files_outside(root: Path, cache: Path, allowed: set[Path] = frozenset()) -> list[Path]:
    """Files under ``root`` that are neither in ``cache`` nor in ``allowed``."""
    out = []
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        if cache in path.parents or path in allowed or any(a in path.parents for a in allowed):
            continue
        out.append(path)
    return out


def cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if not p.is_dir() or p.is_symlink()]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
async def puller(cache_dir: Path) -> AsyncIterator[Puller]:
    p = Puller(cache_dir, env={}, retry=FAST_RETRY, transfer=SMALL_PARTS)
    yield p
    await p.aclose()
    leaked = [t for t in asyncio.all_tasks() if t.get_name().startswith("puller:")]
    assert not leaked, f"puller left tasks running: {leaked}"


# ----------------------------------------------------------------------------- moto (S3)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer(auth=True) as server:
        yield server


@dataclass
class S3Bucket:
    server: MotoServer
    client: Any
    name: str

    def put(self, key: str, body: bytes, **kwargs: Any) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body, **kwargs)

    def storage_entry(self, **overrides: Any) -> dict[str, Any]:
        entry = {"type": "s3", "access_key_id": self.server.access_key_id,
                 "secret_access_key": self.server.secret_access_key,
                 "endpoint_url": self.server.endpoint_url, "region": "us-east-1"}
        entry.update(overrides)
        return entry

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.server.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.server.secret_access_key,
                "AWS_ENDPOINT_URL": self.server.endpoint_url, "AWS_REGION": "us-east-1"}


@pytest.fixture
def bucket(moto: MotoServer) -> S3Bucket:
    client = moto.client()
    name = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(moto, client, name)


# ----------------------------------------------------------------------------- HTTP


@dataclass
class HttpFiles:
    """What the local HTTP server serves, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    drop_first: dict[str, int] = field(default_factory=dict)  # path -> body GETs to cut midway
    ranges: bool = True
    gate: threading.Event = field(default_factory=threading.Event)  # requests wait until set
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        self.gate.set()

    def body_gets(self, path: str) -> int:
        """GETs of ``path`` that were not the 1-byte size probe."""
        with self.lock:
            return sum(1 for p, r in self.requests if p == path and r != "bytes=0-0")

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self), timeout=timeout), "condition not reached"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HttpFiles

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        state = self.state
        path = self.path.split("?", 1)[0]
        range_header = self.headers.get("Range")
        with state.changed:
            state.requests.append((path, range_header))
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            state.changed.notify_all()
        try:
            state.gate.wait(timeout=30)
            self._serve(state, path, range_header)
        finally:
            with state.changed:
                state.active -= 1
                state.changed.notify_all()

    def _serve(self, state: HttpFiles, path: str, range_header: str | None) -> None:
        if path in state.status:
            self.send_error(state.status[path])
            return
        body = state.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start, end, code = 0, len(body), 200
        match = re.match(r"bytes=(\d+)-(\d+)$", range_header or "")
        if match and state.ranges:
            start, end, code = int(match[1]), min(int(match[2]) + 1, len(body)), 206
            if start >= len(body):
                self.send_error(416)
                return
        chunk = body[start:end]
        drop = False
        if code == 200 or range_header != "bytes=0-0":
            with state.lock:
                if state.drop_first.get(path, 0) > 0:
                    state.drop_first[path] -= 1
                    drop = True
        self.send_response(code)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("ETag", '"v1"')
        if state.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        for name, value in state.headers.get(path, {}).items():
            self.send_header(name, value)
        self.end_headers()
        if drop:  # half the body, then the connection goes away
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(chunk)


@dataclass
class HttpServer:
    state: HttpFiles
    port: int
    scheme: str = "http"
    ca_bundle: Path | None = None

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


def _serve(tls: ssl.SSLContext | None) -> Iterator[HttpServer]:
    state = HttpFiles()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http",
                              daemon=True)
    thread.start()
    try:
        yield HttpServer(state, server.server_address[1], "https" if tls else "http")
    finally:
        state.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    yield from _serve(None)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (it is its own CA) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "puller-tests")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    for server in _serve(context):
        server.ca_bundle = cert
        yield server


# ----------------------------------------------------------------------------- Azurite

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azurite_binary() -> str | None:
    for candidate in (REPO / "node_modules" / ".bin" / "azurite-blob", REPO / "node_modules" / ".bin" / "azurite"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("azurite-blob") or shutil.which("azurite")


@dataclass
class Azurite:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    binary = _azurite_binary()
    if binary is None:
        pytest.skip("azurite not installed (npm install azurite); Azure Blob tests skipped")
    workdir = tmp_path_factory.mktemp("azurite")
    port = free_port()
    log_path = workdir / "azurite.log"
    log_file = open(log_path, "wb")  # a file, not a pipe: a chatty server can never block on it
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent", "--skipApiVersionCheck",
         "--loose", "--disableTelemetry", "--inMemoryPersistence"],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            try:  # the wait between probes; returns at once if azurite died
                proc.wait(timeout=0.05)
                out = log_path.read_text(errors="replace")
                pytest.fail(f"azurite exited with {proc.returncode}: {out[-1000:]}")
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                pytest.fail("azurite did not start listening within 30s")
        yield Azurite(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()


@pytest.fixture
def container(azurite: Azurite) -> Any:
    name = f"models-{uuid.uuid4().hex[:12]}"
    client = azurite.service().get_container_client(name)
    client.create_container()
    return client


