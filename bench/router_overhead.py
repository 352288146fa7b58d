"""What one hop through the router costs: direct calls to a runtime vs the same calls routed,
with the router's hop to the instance as unary calls (as before issue #15) and as messages on
one stream per instance (`meshserve.stream.v1`, the default).

In one run: a real `meshserve runtime` process holding two ONNX models, the tests' tiny
`add` (x FP32 [1, 4] -> y, z) and `dense` (y = x @ W, FP32 [1, 1024] x [1024, 768]: a few
tenths of a millisecond of compute, "a model with real work per call"), a private etcd
holding an `instances/<id>` record that describes it, and two real `meshserve router`
processes watching that fabric: `unary` (`--no-instance-streams`) and `stream`; with --bare,
a bare grpc.aio proxy process too (`bench/bare_proxy.py`, the floor of any unary Python
hop); with --native, a bare C++ unary proxy (`bench/native_proxy`, built with make: the floor
of a native hop); with --native-front, a third router, `nfront`, with its native front
(`--native-front`, `make native` first), whose CPU is its own and its front's, and on which
the targets below are then checked; with --kserve-venv, KServe's ModelServer serving the same `add` file on its gRPC V2
port (`bench/kserve_onnx_server.py`, one ONNX Runtime thread, run in that venv, which the
bench creates with pip when it is missing: kserve is not a meshserve dependency). Each
router is its own process, so its CPU time can be read from /proc/<pid>/stat.

One asyncio grpc.aio client process sends pre-serialized ModelInfer requests (identity
serializers) from N caller tasks for a fixed window to each target in turn; a repeat is
every (model, callers, target) point once, the targets' order rotated between repeats so
that no target always runs first. Figures are medians over the repeats of each repeat's own
ratios (a repeat's targets ran back to back, so their ratio is what the machine's load
moves least). Printed per model and caller count: requests/s, the ratios to direct,
p50/p99 and what each hop adds to direct, and router CPU per forwarded call (user + system
from /proc over the window, divided by the calls answered). Then the targets of issue #15
and in how many repeats each held:
- tiny model: stream router / direct at 8 callers >= 0.6; added p50 at 1 caller <= 0.35 ms;
- dense model: stream router / direct at 8 callers >= 0.85;
- router CPU per call: stream <= 60 % of unary (the router as it was), at 8 callers, tiny model;
- with --kserve-venv: stream router >= 0.75 of KServe's ModelServer's req/s at 8 callers.

With --perf-analyzer PATH, also runs Triton's perf_analyzer (gRPC, concurrency 1 and 8, the
tiny model) against each target but KServe's (perf_analyzer asks for ModelConfig, which
KServe's ModelServer does not serve) and prints its infer/s and latencies.

Caveat: client, runtime and the hops share the machine's cores (the output says how many);
with 2 cores a hop competes with the runtime and the client for CPU, so the ratios
understate what a router on its own cores reaches.

    python bench/router_overhead.py [--seconds 3] [--warmup 0.5] [--repeats 3] [--callers 1,8]
        [--models add,dense] [--bare [--bare-sync-threads 16]] [--native] [--workers 1] [--kserve-venv /tmp/kserve-venv]
        [--perf-analyzer /tmp/pa-venv/bin/perf_analyzer] [--profile-router SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from mesh.etcd.client import EtcdClient  # noqa: E402
from mesh.etcd.keys import Keys  # noqa: E402
from mesh.domain.records import HeldCopy, InstanceRecord, to_document  # noqa: E402
from protos import grpc_service_pb2 as pb  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.etcd_server import EtcdServer  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.runtime_process import start_runtime_process  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
TICKS = os.sysconf("SC_CLK_TCK")
DENSE_SHAPE = (1024, 768)
#: The model each name stands for: (its ONNX file's maker, the request's input width).
MODELS = {
    "add": (lambda path: models.add_onnx(path), 4),
    "dense": (lambda path: models.dense_onnx(path, *DENSE_SHAPE), DENSE_SHAPE[0]),
}
TARGET_TINY_RATIO = 0.6  # stream router / direct requests/s at 8 callers, tiny model
TARGET_ADDED_P50_MS = 0.35  # stream router p50 - direct p50 at 1 caller, tiny model
TARGET_WORK_RATIO = 0.85  # stream router / direct at 8 callers, the model with real work
TARGET_CPU_SHARE = 0.6  # stream router CPU per call / unary router CPU per call
TARGET_KSERVE_RATIO = 0.75  # stream router / KServe ModelServer at 8 callers, tiny model
KSERVE_REQUIREMENTS = ["kserve==0.21.0", "onnxruntime"]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def router_pids(process: subprocess.Popen, workers: int) -> list[int]:
    """The router's process and, with several workers, the worker processes it spawned."""
    return [process.pid, *children(process.pid)] if workers > 1 else [process.pid]


def request_bytes(model: str) -> bytes:
    width = MODELS[model][1]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(np.arange(width, dtype=np.float32).tobytes())
    return request.SerializeToString()


@dataclass
class Point:
    rps: float
    p50: float  # ms
    p99: float  # ms
    cpu_per_request: float | None  # seconds of the hop's CPU per request, None without a pid
    runtime_cpu_per_request: float | None = None  # the runtime's (or KServe's) CPU per request


async def drive(address: str, body: bytes, callers: int, seconds: float, warmup: float, pids: list[int],
                server_pids: list[int] = ()) -> Point:
    """N caller tasks for warmup + seconds; latencies and the CPU of `pids` (the hop) and of
    `server_pids` (what answers) over the window."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        latencies: list[float] = []
        state = {"measuring": False, "stop": False}

        async def caller() -> None:
            while not state["stop"]:
                started = time.perf_counter()
                await call(body, timeout=10)
                if state["measuring"]:
                    latencies.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(warmup)  # the measurement window, not synchronisation
        cpu_before, server_before = cpu_seconds(pids), cpu_seconds(list(server_pids))
        state["measuring"] = True
        await asyncio.sleep(seconds)
        state["measuring"] = False
        cpu = cpu_seconds(pids) - cpu_before  # the window's CPU; calls in flight at its edges blur it slightly
        server_cpu = cpu_seconds(list(server_pids)) - server_before
        state["stop"] = True
        await asyncio.gather(*tasks)
    count = len(latencies)
    return Point(count / seconds, percentile(latencies, 50), percentile(latencies, 99),
                 cpu / count if pids and count else None, server_cpu / count if server_pids and count else None)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000 if values else float("nan")


async def publish(etcd: EtcdServer, keys: Keys, address: str, model_ids: list[str]) -> None:
    """An instance record that says the runtime at `address` holds `model_ids` (no agent runs here)."""
    async with EtcdClient([etcd.endpoint]) as client:
        now = int(time.time() * 1000)
        record = InstanceRecord("bench-0", address, 256 << 20,
                                copies={m: HeldCopy(1 << 10, now) for m in model_ids}, published_ms=now)
        await client.put(keys.instance("bench-0"), to_document(record))


def wait_listening(process: subprocess.Popen, log_path: Path, marker: str, what: str, timeout: float = 60) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited: {log_path.read_text()[-3000:]}")
        return marker in log_path.read_text()

    wait_until(ready, timeout, what)


def start_bare_proxy(upstream: str, log_path: Path, sync_threads: int = 0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    flags = ["--sync-threads", str(sync_threads)] if sync_threads else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "bench" / "bare_proxy.py"), "--port", str(port),
                                    "--upstream", upstream, *flags], stdout=log, stderr=subprocess.STDOUT)
    wait_listening(process, log_path, "READY", "the bare proxy to listen", 30)
    return process, f"127.0.0.1:{port}"


def start_native_proxy(upstream: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """bench/native_proxy (C++, gRPC's callback API), built here with make (needs Debian's libgrpc++-dev)."""
    folder = REPO / "bench" / "native_proxy"
    subprocess.run(["make", "-s", "-C", str(folder)], check=True)
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(folder / "native_proxy"), "--port", str(port), "--upstream", upstream],
                                   stdout=log, stderr=subprocess.STDOUT)
    wait_listening(process, log_path, "READY", "the native proxy to listen", 30)
    return process, f"127.0.0.1:{port}"


def start_router(etcd: EtcdServer, log_path: Path, *flags: str, model: str = "add") -> tuple[subprocess.Popen, str]:
    """A `meshserve router` of fabric 'bench', once it serves `model`."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", "router", "--etcd", etcd.endpoint, "--fabric", "bench",
             "--host", "127.0.0.1", "--port", str(port), "--rest-port", "0", "--metrics-port", "0",
             "--log-level", "WARNING", *flags],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    address = f"127.0.0.1:{port}"
    wait_model_ready(process, address, log_path, "the router", 60, model)
    return process, address


def wait_model_ready(process: subprocess.Popen, address: str, log_path: Path, what: str, timeout: float,
                     model: str = "add") -> None:
    """Until `what` at `address` says `model` is ready; SystemExit with its log if it exits."""
    with grpc.insecure_channel(address) as channel:
        probe = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")

        def ready() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"{what} exited: {log_path.read_text()[-3000:]}")
            try:
                return pb.ModelReadyResponse.FromString(
                    probe(pb.ModelReadyRequest(name=model).SerializeToString(), timeout=2)).ready
            except grpc.RpcError:
                return False

        wait_until(ready, timeout, f"{what} to serve model '{model}'")


def kserve_python(venv: Path) -> Path:
    """The venv's python, after creating the venv with kserve in it when it has none."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import kserve, onnxruntime"], capture_output=True)
    if probe.returncode != 0:
        print(f"installing {' '.join(KSERVE_REQUIREMENTS)} into {venv} (not a meshserve dependency)", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *KSERVE_REQUIREMENTS], check=True)
    return python


def start_kserve(python: Path, model_file: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    grpc_port, http_port = free_port(), free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(python), str(REPO / "bench" / "kserve_onnx_server.py"), "--model-name", "add",
                                    "--model-file", str(model_file), "--grpc-port", str(grpc_port),
                                    "--http-port", str(http_port)],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    address = f"127.0.0.1:{grpc_port}"
    wait_model_ready(process, address, log_path, "KServe's ModelServer", 120)
    return process, address


# -- perf_analyzer -------------------------------------------------------------------------
SUMMARY = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")
SECTION = re.compile(r"Request concurrency: (\d+)")
P_LINE = re.compile(r"p(50|99) latency: (\d+) usec")


def perf_analyzer_env(binary: Path) -> dict[str, str]:
    """LD_LIBRARY_PATH with the CUDA runtime from the binary's own venv (the wheel's binary links it)."""
    env = dict(os.environ)
    venv = binary.absolute().parent.parent
    libs = sorted(str(p) for p in venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    return env


def run_perf_analyzer(binary: Path, address: str) -> tuple[dict[int, dict[str, float]], str]:
    """{concurrency: {infer_s, avg_us, p50_us, p99_us}} and the raw output."""
    command = [str(binary), "-m", "add", "-i", "grpc", "-u", address, "--shape", "x:1,4",
               "--concurrency-range", "1:8:7", "--measurement-interval", "3000", "--stability-percentage", "30"]
    done = subprocess.run(command, env=perf_analyzer_env(binary), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    results: dict[int, dict[str, float]] = {}
    current = None
    for line in output.splitlines():
        if match := SECTION.search(line):
            current = results.setdefault(int(match.group(1)), {})
        elif (match := P_LINE.search(line)) and current is not None:
            current[f"p{match.group(1)}_us"] = float(match.group(2))
        elif match := SUMMARY.search(line):
            entry = results.setdefault(int(match.group(1)), {})
            entry["infer_s"], entry["avg_us"] = float(match.group(2)), float(match.group(3))
    if done.returncode != 0 or not results:
        results = {}
    return results, output


# -- the report ------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # no NaN
    return statistics.median(values) if values else float("nan")


def held(values: list[float], ok) -> str:
    return f"{sum(1 for v in values if ok(v))}/{len(values)}"


def report(runs: list[dict], model_names: list[str], callers: list[int], targets: list[str]) -> None:
    """`runs`: one {(model, callers, target): Point} per repeat."""
    hops = [t for t in targets if t != "direct"]
    for model in model_names:
        print(f"\nmodel '{model}': medians over {len(runs)} repeats (each ratio taken within its repeat)")
        header = f"{'callers':>7} " + " ".join(f"{t + ' rps':>12}" for t in targets)
        header += " " + " ".join(f"{t + '/d':>9}" for t in hops)
        print(header)
        for n in callers:
            row = f"{n:>7} " + " ".join(f"{median([r[(model, n, t)].rps for r in runs]):>12.0f}" for t in targets)
            row += " " + " ".join(f"{median([r[(model, n, t)].rps / r[(model, n, 'direct')].rps for r in runs]):>9.2f}"
                                  for t in hops)
            print(row)
        print(f"{'callers':>7} {'p50 ms ' + '/'.join(targets):>40} {'p99 ms':>30} " + " ".join(f"{'+p50 ' + t:>12}" for t in hops))
        for n in callers:
            p50 = "/".join(f"{median([r[(model, n, t)].p50 for r in runs]):.3f}" for t in targets)
            p99 = "/".join(f"{median([r[(model, n, t)].p99 for r in runs]):.3f}" for t in targets)
            added = " ".join(f"{median([r[(model, n, t)].p50 - r[(model, n, 'direct')].p50 for r in runs]):>12.3f}"
                             for t in hops)
            print(f"{n:>7} {p50:>40} {p99:>30} {added}")
        routers = [t for t in ("unary", "stream", "nfront", "bare", "native") if t in targets]
        print(f"{'callers':>7} " + " ".join(f"{t + ' CPU/call':>15}" for t in routers) + f" {'stream/unary CPU':>17}")
        for n in callers:
            cpus = " ".join(f"{median([r[(model, n, t)].cpu_per_request * 1e6 for r in runs]):>12.0f} us" for t in routers)
            share = median([r[(model, n, "stream")].cpu_per_request / r[(model, n, "unary")].cpu_per_request for r in runs])
            print(f"{n:>7} {cpus} {share:>17.2f}")
        servers = [t for t in targets if not (t == "kserve" and model != "add")]
        print(f"{'callers':>7} " + " ".join(f"{'runtime CPU ' + t:>22}" for t in servers) + "  (per call; kserve: its own)")
        for n in callers:
            print(f"{n:>7} " + " ".join(
                f"{median([r[(model, n, t)].runtime_cpu_per_request * 1e6 for r in runs]):>19.0f} us" for t in servers))

    best = "nfront" if "nfront" in targets else "stream"
    print(f"\ntargets (issue #15) for the {best} router, each checked in every repeat:")
    checks = []
    if "add" in model_names and 8 in callers:
        ratios = [r[("add", 8, best)].rps / r[("add", 8, "direct")].rps for r in runs]
        checks.append((f"tiny model, {best} router/direct at 8 callers >= {TARGET_TINY_RATIO}", ratios,
                       lambda v: v >= TARGET_TINY_RATIO))
        cpu = [r[("add", 8, best)].cpu_per_request / r[("add", 8, "unary")].cpu_per_request for r in runs]
        checks.append((f"router CPU per call, {best}/unary at 8 callers <= {TARGET_CPU_SHARE}", cpu,
                       lambda v: v <= TARGET_CPU_SHARE))
        if "kserve" in targets:
            ks = [r[("add", 8, best)].rps / r[("add", 8, "kserve")].rps for r in runs]
            checks.append((f"{best} router / KServe ModelServer at 8 callers >= {TARGET_KSERVE_RATIO}", ks,
                           lambda v: v >= TARGET_KSERVE_RATIO))
    if "add" in model_names and 1 in callers:
        added = [r[("add", 1, best)].p50 - r[("add", 1, "direct")].p50 for r in runs]
        checks.append((f"tiny model, added p50 at 1 caller <= {TARGET_ADDED_P50_MS} ms", added,
                       lambda v: v <= TARGET_ADDED_P50_MS))
    if "dense" in model_names and 8 in callers:
        ratios = [r[("dense", 8, best)].rps / r[("dense", 8, "direct")].rps for r in runs]
        checks.append((f"dense model, {best} router/direct at 8 callers >= {TARGET_WORK_RATIO}", ratios,
                       lambda v: v >= TARGET_WORK_RATIO))
    for what, values, ok in checks:
        print(f"  {what}: median {median(values):.3f}, held in {held(values, ok)} repeats "
              f"({', '.join(f'{v:.3f}' for v in values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--callers", default="1,8")
    parser.add_argument("--models", default="add,dense", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--bare", action="store_true", help="also measure the bare grpc.aio unary proxy")
    parser.add_argument("--bare-sync-threads", type=int, default=0, metavar="N",
                        help="with --bare: make it gRPC's synchronous server with N threads (default: grpc.aio)")
    parser.add_argument("--native", action="store_true",
                        help="also measure the bare native (C++) unary proxy, bench/native_proxy")
    parser.add_argument("--native-front", action="store_true",
                        help="also measure the router with its native front (--native-front; `make native` first); "
                             "the targets are then checked on it")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each router")
    parser.add_argument("--kserve-venv", type=Path, metavar="DIR",
                        help="also measure KServe's ModelServer serving the tiny model (venv created when missing)")
    parser.add_argument("--perf-analyzer", type=Path, metavar="PATH",
                        help="also run this perf_analyzer binary against every target (tiny model)")
    parser.add_argument("--profile-router", type=float, metavar="SECONDS",
                        help="record the stream router with py-spy (in .venv) for this long at 8 callers, tiny model")
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    model_names = args.models.split(",")

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp, EtcdServer(name="bench") as etcd:
        work = Path(tmp)
        runtime = start_runtime_process(work / "runtime", capacity="256MiB")
        processes: list[subprocess.Popen] = []
        try:
            files = {}
            for name in model_names:
                files[name] = MODELS[name][0](work / "models" / name / "model.onnx")
                runtime.load(name, files[name].parent, "onnx")
            asyncio.run(publish(etcd, Keys(fabric="bench"), runtime.address, model_names))
            targets: dict[str, tuple[str, list[int]]] = {"direct": (runtime.address, [])}
            workers = ["--workers", str(args.workers)]
            unary, unary_address = start_router(etcd, work / "router-unary.log", "--no-instance-streams", *workers)
            processes.append(unary)
            stream, stream_address = start_router(etcd, work / "router-stream.log", *workers)
            processes.append(stream)
            targets["unary"] = (unary_address, router_pids(unary, args.workers))
            targets["stream"] = (stream_address, router_pids(stream, args.workers))
            if args.native_front:
                nfront, nfront_address = start_router(etcd, work / "router-nfront.log", "--native-front", *workers)
                processes.append(nfront)
                # The router's CPU is its own and its native front's (a child process).
                targets["nfront"] = (nfront_address, [nfront.pid, *children(nfront.pid)])
            if args.bare:
                bare, bare_address = start_bare_proxy(runtime.address, work / "bare.log", args.bare_sync_threads)
                processes.append(bare)
                targets["bare"] = (bare_address, [bare.pid])
            if args.native:
                native, native_address = start_native_proxy(runtime.address, work / "native.log")
                processes.append(native)
                targets["native"] = (native_address, [native.pid])
            if args.kserve_venv is not None and "add" in model_names:
                kserve, kserve_address = start_kserve(kserve_python(args.kserve_venv), files["add"], work / "kserve.log")
                processes.append(kserve)
                targets["kserve"] = (kserve_address, [kserve.pid])  # its own CPU is the "runtime's"

            names = list(targets)
            print(f"router overhead: {os.cpu_count()} cores, models {', '.join(model_names)}, "
                  f"{args.seconds:g}s per point after {args.warmup:g}s warm-up, {args.repeats} repeats, "
                  f"targets {', '.join(names)}; load average {os.getloadavg()[0]:.2f} before", flush=True)
            runs = []
            for repeat in range(args.repeats):
                order = names[repeat % len(names):] + names[:repeat % len(names)]
                points = {}
                for model in model_names:
                    body = request_bytes(model)
                    for n in callers:
                        for target in order:
                            if target == "kserve" and model != "add":
                                continue
                            address, pids = targets[target]
                            server = [targets["kserve"][1][0]] if target == "kserve" else [runtime.process.pid]
                            points[(model, n, target)] = asyncio.run(
                                drive(address, body, n, args.seconds, args.warmup, pids, server))
                runs.append(points)
                print(f"repeat {repeat + 1} done (order {', '.join(order)}); load average {os.getloadavg()[0]:.2f}",
                      flush=True)
            if "kserve" in names and "dense" in model_names:
                for run in runs:  # KServe serves the tiny model only: no dense figures for it
                    for n in callers:
                        run[("dense", n, "kserve")] = Point(float("nan"), float("nan"), float("nan"), None)
            report(runs, model_names, callers, names)

            if args.profile_router:
                profile(stream.pid, stream_address, args.profile_router, work)

            if args.perf_analyzer is not None:
                print(f"\nperf_analyzer ({args.perf_analyzer}; -i grpc --shape x:1,4 --concurrency-range 1:8:7 "
                      f"--measurement-interval 3000 --stability-percentage 30), model 'add'")
                print(f"{'target':>7} {'conc':>4} {'infer/s':>8} {'avg us':>7} {'p50 us':>7} {'p99 us':>7}")
                for name in [n for n in names if n != "kserve"]:  # it needs ModelConfig, which KServe lacks
                    rows, output = run_perf_analyzer(args.perf_analyzer, targets[name][0])
                    if not rows:
                        print(f"{name:>7} perf_analyzer failed:\n" + "\n".join(output.splitlines()[-15:]))
                        continue
                    notes = [line.strip() for line in output.splitlines()
                             if "stable" in line.lower() or "warning" in line.lower() or "error" in line.lower()]
                    for note in notes:
                        print(f"{name:>7} perf_analyzer: {note}")
                    for conc, row in sorted(rows.items()):
                        print(f"{name:>7} {conc:>4} {row.get('infer_s', float('nan')):>8.0f} "
                              f"{row.get('avg_us', float('nan')):>7.0f} {row.get('p50_us', float('nan')):>7.0f} "
                              f"{row.get('p99_us', float('nan')):>7.0f}")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    process.wait(20)
            runtime.stop()
    return 0


def profile(pid: int, address: str, seconds: float, work: Path) -> None:
    """py-spy's top functions of the router process while 8 callers drive it (tiny model)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        print("\n(no py-spy in this venv: `pip install py-spy` for --profile-router)")
        return
    out = work / "router.txt"
    recorder = subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                 "--format", "raw", "--output", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    asyncio.run(drive(address, request_bytes("add"), 8, seconds + 1, 0.2, []))
    recorder.wait(60)
    totals: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        samples += n
        for frame in set(frames):
            totals[frame] = totals.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"\npy-spy, stream router, {samples} samples; inclusive share, then own share (top 25 each)")
    for frame, n in sorted(totals.items(), key=lambda item: -item[1])[:25]:
        print(f"  {n / samples:6.1%}  {frame}")
    print("  --")
    for frame, n in sorted(own.items(), key=lambda item: -item[1])[:25]:
        print(f"  {n / samples:6.1%}  {frame}")


if __name__ == "__main__":
    sys.exit(main())
