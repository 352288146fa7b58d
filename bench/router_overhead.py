"""What one hop through the router costs: direct calls to a runtime vs the same calls routed.

In one run: a real `meshserve runtime` process holding the tests' tiny ONNX model
(`add_onnx`: x FP32 [1, 4] -> y, z), a private etcd holding an `instances/<id>` record that
describes it, a real `meshserve router` process (its own process, so its CPU time can be read
from /proc/<pid>/stat) watching that fabric, and a bare grpc.aio proxy process
(`bench/bare_proxy.py`: one generic handler forwarding every unary call's bytes to the
runtime, nothing else) as the floor of any Python grpc.aio hop. One asyncio grpc.aio client
process sends pre-serialized ModelInfer requests (identity serializers) from N caller tasks
for a fixed window, straight to the runtime, then through the bare proxy, then through the
router, at 1 and 8 callers.

Printed per caller count: requests/s of each target, the ratios bare/direct, router/direct
(the target's "ratio") and router/bare, p50/p99 latency and what each hop adds to the direct
figures, and the CPU time per request of the bare proxy and of the router (user + system
from /proc/<pid>/stat over the measurement window; with --workers N the router's worker
processes are included). Targets (issue #5): router/direct >= 0.6 at 8 callers, added p50 <
0.35 ms at 1 caller. What the bare proxy already costs is the share of the gap that belongs
to grpc.aio itself (a server plus a client channel in one Python process), not to the
router's code.

With --bare-sync-threads N the bare proxy uses gRPC's synchronous API instead (a server with
an N-thread pool, one blocking channel call per request), the other Python transport a hop
could use.

With --perf-analyzer PATH, also runs Triton's perf_analyzer (gRPC, concurrency 1 and 8)
against the three targets and prints its infer/s and latencies.

Caveat: client, runtime and the proxies share the machine's cores (the output says how many);
with 2 cores a hop competes with the runtime and the client for CPU, so the ratio at 8
callers understates what a router on its own cores reaches.

    python bench/router_overhead.py [--seconds 5] [--warmup 1] [--callers 1,8] [--workers 1]
                                    [--bare-sync-threads 16] [--perf-analyzer /tmp/pa-venv/bin/perf_analyzer]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
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
MODEL_ID = "add"
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RATIO = 0.6  # router/direct requests/s at 8 callers
TARGET_ADDED_P50_MS = 0.35  # router p50 - direct p50 at 1 caller


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


def request_bytes() -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL_ID)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return request.SerializeToString()


@dataclass
class Point:
    rps: float
    p50: float  # ms
    p99: float  # ms
    cpu_per_request: float | None  # seconds of the hop's CPU per request, None for direct


async def drive(address: str, callers: int, seconds: float, warmup: float, pids: list[int]) -> Point:
    """N caller tasks for warmup + seconds; latencies and the CPU of `pids` over the window."""
    body = request_bytes()
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
        cpu_before = cpu_seconds(pids)
        state["measuring"] = True
        await asyncio.sleep(seconds)
        state["measuring"] = False
        cpu = cpu_seconds(pids) - cpu_before  # the window's CPU; calls in flight at its edges blur it slightly
        state["stop"] = True
        await asyncio.gather(*tasks)
    count = len(latencies)
    return Point(count / seconds, percentile(latencies, 50), percentile(latencies, 99),
                 cpu / count if pids and count else None)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000 if values else float("nan")


async def publish(etcd: EtcdServer, keys: Keys, address: str) -> None:
    async with EtcdClient([etcd.endpoint]) as client:
        now = int(time.time() * 1000)
        record = InstanceRecord("bench-0", address, 256 << 20,
                                copies={MODEL_ID: HeldCopy(1 << 10, now)}, published_ms=now)
        await client.put(keys.instance("bench-0"), to_document(record))


def start_bare_proxy(upstream: str, log_path: Path, sync_threads: int = 0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    flags = ["--sync-threads", str(sync_threads)] if sync_threads else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "bench" / "bare_proxy.py"), "--port", str(port),
                                    "--upstream", upstream, *flags], stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"bare proxy exited: {log_path.read_text()}")
        return "READY" in log_path.read_text()

    wait_until(ready, 30, "the bare proxy to listen")
    return process, f"127.0.0.1:{port}"


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
    command = [str(binary), "-m", MODEL_ID, "-i", "grpc", "-u", address, "--shape", "x:1,4",
               "--concurrency-range", "1:8:7", "--measurement-interval", "3000"]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--callers", default="1,8")
    parser.add_argument("--workers", type=int, default=1, help="router worker processes (the bare proxy has one)")
    parser.add_argument("--bare-sync-threads", type=int, default=0, metavar="N",
                        help="make the bare proxy gRPC's synchronous server with N threads (default: grpc.aio)")
    parser.add_argument("--perf-analyzer", type=Path, metavar="PATH",
                        help="also run this perf_analyzer binary against direct, bare proxy and router")
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp, EtcdServer(name="bench") as etcd:
        work = Path(tmp)
        model_dir = models.add_onnx(work / "models" / "add" / "model.onnx").parent
        runtime = start_runtime_process(work / "runtime", capacity="256MiB")
        router = bare = None
        try:
            runtime.load(MODEL_ID, model_dir, "onnx")
            keys = Keys(fabric="bench")
            asyncio.run(publish(etcd, keys, runtime.address))
            bare, bare_address = start_bare_proxy(runtime.address, work / "bare.log", args.bare_sync_threads)
            port = free_port()
            log = open(work / "router.log", "wb")
            router = subprocess.Popen(
                [sys.executable, "-m", "mesh.cli", "router", "--etcd", etcd.endpoint, "--fabric", "bench",
                 "--host", "127.0.0.1", "--port", str(port), "--rest-port", "0", "--metrics-port", "0",
                 "--workers", str(args.workers), "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            router_address = f"127.0.0.1:{port}"
            probe_channel = grpc.insecure_channel(router_address)
            probe = probe_channel.unary_unary("/inference.GRPCInferenceService/ModelReady")

            def routed() -> bool:
                if router.poll() is not None:
                    raise SystemExit(f"router exited: {(work / 'router.log').read_text()}")
                return pb.ModelReadyResponse.FromString(
                    probe(pb.ModelReadyRequest(name=MODEL_ID).SerializeToString(), timeout=2)).ready

            wait_until(routed, 60, "the router to route to the runtime")
            probe_channel.close()
            router_pids = [router.pid, *children(router.pid)] if args.workers > 1 else [router.pid]
            targets = (("direct", runtime.address, []), ("bare", bare_address, [bare.pid]),
                       ("router", router_address, router_pids))

            bare_kind = f"synchronous gRPC ({args.bare_sync_threads} threads)" if args.bare_sync_threads else "grpc.aio"
            print(f"router overhead: {os.cpu_count()} cores, model '{MODEL_ID}' (FP32 [1,4]), "
                  f"{args.seconds:g}s per point after {args.warmup:g}s warm-up, router workers {args.workers}, "
                  f"bare {bare_kind} proxy 1 process; load average {os.getloadavg()[0]:.2f} before")
            results: dict[int, dict[str, Point]] = {}
            for n in callers:
                results[n] = {name: asyncio.run(drive(address, n, args.seconds, args.warmup, pids))
                              for name, address, pids in targets}

            print(f"\n{'callers':>7} {'direct rps':>10} {'bare rps':>9} {'router rps':>10} {'ratio':>6} "
                  f"{'bare/d':>6} {'router/bare':>11} {'bare CPU/req':>13} {'router CPU/req':>15}")
            for n, r in results.items():
                d, b, ro = r["direct"], r["bare"], r["router"]
                print(f"{n:>7} {d.rps:>10.0f} {b.rps:>9.0f} {ro.rps:>10.0f} {ro.rps / d.rps:>6.2f} "
                      f"{b.rps / d.rps:>6.2f} {ro.rps / b.rps:>11.2f} {b.cpu_per_request * 1e6:>10.0f} us "
                      f"{ro.cpu_per_request * 1e6:>12.0f} us")
            print("(ratio = router/direct; bare/d = bare proxy/direct)")

            print(f"\n{'callers':>7} {'p50 d/b/r ms':>20} {'p99 d/b/r ms':>20} {'+p50 bare':>9} {'+p50 ms':>8} "
                  f"{'+p99 bare':>9} {'+p99 ms':>8} {'router-bare p50':>15}")
            for n, r in results.items():
                d, b, ro = r["direct"], r["bare"], r["router"]
                print(f"{n:>7} {d.p50:>6.3f}/{b.p50:.3f}/{ro.p50:<6.3f} {d.p99:>6.3f}/{b.p99:.3f}/{ro.p99:<6.3f} "
                      f"{b.p50 - d.p50:>9.3f} {ro.p50 - d.p50:>8.3f} {b.p99 - d.p99:>9.3f} {ro.p99 - d.p99:>8.3f} "
                      f"{ro.p50 - b.p50:>15.3f}")
            print("(+p50/+p99 ms: router minus direct; '+... bare': bare proxy minus direct)")

            verdicts = []
            if 8 in results:
                ratio = results[8]["router"].rps / results[8]["direct"].rps
                verdicts.append(f"ratio at 8 callers {ratio:.2f} (target >= {TARGET_RATIO}: "
                                f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}; bare proxy "
                                f"{results[8]['bare'].rps / results[8]['direct'].rps:.2f})")
            if 1 in results:
                added = results[1]["router"].p50 - results[1]["direct"].p50
                verdicts.append(f"added p50 at 1 caller {added:.3f} ms (target < {TARGET_ADDED_P50_MS}: "
                                f"{'met' if added < TARGET_ADDED_P50_MS else 'NOT met'}; bare proxy "
                                f"{results[1]['bare'].p50 - results[1]['direct'].p50:.3f} ms)")
            for line in verdicts:
                print(line)

            if args.perf_analyzer is not None:
                print(f"\nperf_analyzer ({args.perf_analyzer}; -i grpc --shape x:1,4 --concurrency-range 1:8:7 "
                      f"--measurement-interval 3000)")
                print(f"{'target':>7} {'conc':>4} {'infer/s':>8} {'avg us':>7} {'p50 us':>7} {'p99 us':>7}")
                for name, address, _ in targets:
                    rows, output = run_perf_analyzer(args.perf_analyzer, address)
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
            for process in (router, bare):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(20)
            runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
