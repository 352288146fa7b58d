"""The router's native front (`--native-front`): the C++ process that takes the router's
public gRPC port and forwards hits itself (`router/native_front/front.cc` says what it does
and what it hands back to this router).

`NativeFront` starts it, keeps its route table equal to the fabric view (every model's
loaded copies by inference address, every vmodel's active model: sent as differences after
each batch of view changes, never per request), turns its reports of the calls it answered
into this router's metrics and dashboard counts (`CallObserver`), and starts it again on the
same port should it die. Closing it closes its stdin: it stops taking calls, lets those in
flight finish (5 s at most) and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import grpc

from mesh.aio.backoff import Backoff
from mesh.aio.tasks import TaskSupervisor
from mesh.state.fabric_view import FabricView

__all__ = ["BINARY", "NativeFront", "NativeFrontError", "find_binary"]

log = logging.getLogger(__name__)

#: Where `make native` leaves the binary.
BINARY = Path(__file__).resolve().parent / "meshserve-native-front"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 8.0  # its own grace is 5 s
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_FORBIDDEN = ("\t", "\n", "\r")
#: Between failed starts of a front that died (mesh.aio.backoff: the one retry pacing).
_RESTART_PACING = Backoff(initial_s=0.1, max_s=5.0)


class NativeFrontError(Exception):
    """The native front cannot start (no binary, a port it cannot bind, ...)."""


def find_binary(configured: str = "") -> Path:
    """The configured binary, else `make native`'s in the source tree, else the one on PATH (the image's)."""
    if configured:
        candidates = [Path(configured)]
    else:
        on_path = shutil.which(BINARY.name)
        candidates = [BINARY, *([Path(on_path)] if on_path else [])]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise NativeFrontError(f"no native front binary at {candidates[0]}: build it with `make native` "
                           "(needs a C++ compiler and gRPC C++, Debian's libgrpc++-dev)")


def route_table(view: FabricView) -> tuple[dict[str, str], dict[str, str]]:
    """(model id -> its loaded copies' inference addresses, comma-separated; vmodel id -> active
    model id), as the native front takes them. Ids it cannot carry (a tab or newline in them)
    are left out: their calls go through this router's own path."""
    models: dict[str, list[str]] = {}
    for record in view.all_instances().values():
        if record.shutting_down:
            continue
        address = record.inference_address
        if "," in address or _unsafe(address):
            continue
        for model_id, copy in record.copies.items():
            if not copy.loading and not _unsafe(model_id):
                models.setdefault(model_id, []).append(address)
    vmodels = {}
    for vmodel_id in view.vmodel_ids():
        record = view.vmodel(vmodel_id)
        if record is not None and not _unsafe(vmodel_id) and not _unsafe(record.active_model_id):
            vmodels[vmodel_id] = record.active_model_id
    return {m: ",".join(sorted(a)) for m, a in models.items()}, vmodels


def _unsafe(text: str) -> bool:
    return any(c in text for c in _FORBIDDEN)


def table_commands(sent: tuple[dict[str, str], dict[str, str]], wanted: tuple[dict[str, str], dict[str, str]]) -> bytes:
    """The commands that turn the table `sent` into `wanted` (empty when they are equal)."""
    lines = []
    for kind, before, after in (("route", sent[0], wanted[0]), ("vmodel", sent[1], wanted[1])):
        lines += [f"{kind}\t{key}\n" for key in before.keys() - after.keys()]
        lines += [f"{kind}\t{key}\t{value}\n" for key, value in after.items() if before.get(key) != value]
    if not lines:
        return b""
    return ("".join(lines) + "commit\n").encode()


class NativeFront:
    """The running native front; `port` is the public port it bound."""

    def __init__(self, binary: Path, host: str, port: int, fallback: str, view: FabricView, observer, *,
                 max_message_bytes: int, limit_setting: str, default_deadline_s: float, handover_token: str,
                 instance_streams: bool = True, reuse_port: bool = False) -> None:
        self._binary = binary
        self._host = host
        self.port = port
        self._fallback = fallback
        self._view = view
        self._observer = observer
        self._max_message_bytes = max_message_bytes
        self._limit_setting = limit_setting
        self._default_deadline_ms = int(default_deadline_s * 1000)
        self._reuse_port = reuse_port
        self._handover_token = handover_token
        self._instance_streams = instance_streams
        self._process: asyncio.subprocess.Process | None = None
        self._sent: tuple[dict[str, str], dict[str, str]] = ({}, {})
        self._changed = asyncio.Event()
        self._closing = False
        self._tasks = TaskSupervisor("native-front")
        self._unsubscribe = view.subscribe(self._changed.set)

    async def start(self) -> None:
        """Start the process and wait until it has bound its port; NativeFrontError if it cannot."""
        await self._spawn()
        self._tasks.spawn(self._keep_running(), name="native-front")

    async def _spawn(self) -> None:
        argv = [str(self._binary), "--listen", f"{self._host}:{self.port}", "--fallback", self._fallback,
                "--max-message-bytes", str(self._max_message_bytes), "--limit-setting", self._limit_setting,
                "--default-deadline-ms", str(self._default_deadline_ms), "--handover-token", self._handover_token]
        if self._reuse_port:
            argv.append("--reuse-port")
        if not self._instance_streams:
            argv.append("--no-instance-streams")
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line.startswith(b"READY "):
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise NativeFrontError(f"the native front did not start on {self._host}:{self.port} "
                                   f"(exit status {process.returncode}; its stderr is in this process's log)")
        self.port = int(line.split()[1])
        self._process = process
        self._sent = ({}, {})
        self._changed.set()  # it starts with an empty table

    async def _keep_running(self) -> None:
        while not self._closing:
            process = self._process
            feeding = asyncio.create_task(self._feed(process), name="native-front feed")
            try:
                await self._read_reports(process)
                await process.wait()
            finally:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)
            if self._closing:
                return
            log.error("the native front exited (status %s); starting it again on port %d", process.returncode, self.port)
            attempt = 0
            while not self._closing:
                try:
                    await self._spawn()
                    break
                except (NativeFrontError, OSError) as error:
                    attempt += 1
                    log.error("%s; trying again (attempt %d)", error, attempt + 1)
                    await _RESTART_PACING.pause(attempt)

    async def _feed(self, process: asyncio.subprocess.Process) -> None:
        """Send the table's differences after each batch of view changes."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = route_table(self._view)
            commands = table_commands(self._sent, wanted)
            if commands:
                process.stdin.write(commands)
                await process.stdin.drain()
                self._sent = wanted

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        observer = self._observer
        while True:
            line = await process.stdout.readline()
            if not line:
                return
            fields = line.rstrip(b"\n").decode(errors="replace").split("\t")
            if observer is None:
                continue
            if fields[0] == "o" and len(fields) == 7:
                code = _CODE_NAMES.get(int(fields[1]), "UNKNOWN")
                response = None if fields[4] == "-" else int(fields[4])
                if observer.per_model:
                    observer.observe_call("ModelInfer", code, int(fields[2]) / 1e6, int(fields[3]), response,
                                          fields[5], fields[6])
                else:
                    observer.observe_call("ModelInfer", code, int(fields[2]) / 1e6, int(fields[3]), response)
            elif fields[0] == "r" and len(fields) == 2:
                observer.retried(fields[1])

    async def close(self) -> None:
        self._closing = True
        self._unsubscribe()
        process = self._process
        if process is not None and process.returncode is None:
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self._tasks.close()

