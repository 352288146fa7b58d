"""What one hop through the router costs: direct calls to a runtime vs the same calls routed.

In one run: a real `meshserve runtime` process holding the tests' tiny ONNX model
(`add_onnx`: x FP32 [1, 4] -> y, z), a private etcd holding an `instances/<id>` record that
describes it, and a real `meshserve router` process (its own process, so its CPU time can
be read from /proc/<pid>/stat) watching that fabric. One asyncio grpc.aio client process
sends pre-serialized ModelInfer requests (identity serializers) from N caller tasks for a
fixed window, first straight to the runtime, then through the router, at 1 and 8 callers.

Printed per caller count: requests/s of each, the ratio router/direct, p50/p99 latency and
what the router adds to them, and the router's CPU time per request. Targets: ratio >= 0.6
at 8 callers, added p50 < 0.35 ms at 1 caller.

Caveat: client, runtime and router share the machine's cores (the output says how many);
with 2 cores the router competes with the runtime and the client for CPU, so the ratio at 8
callers understates what a router on its own cores reaches.

    python bench/router_overhead.py [--seconds 5] [--warmup 1] [--callers 1,8] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from mesh.etcd_client import EtcdClient  # noqa: E402
from mesh.keys import Keys  # noqa: E402
from mesh.records import HeldCopy, InstanceRecord, to_document  # noqa: E402
from protos import grpc_service_pb2 as pb  # noqa: E402
from tests.support import models  # noqa: E402
from tests.support.etcd_server import EtcdServer  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.runtime_process import start_runtime_process  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_ID = "add"
TICKS = os.sysconf("SC_CLK_TCK")


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


async def drive(address: str, callers: int, seconds: float, warmup: float) -> tuple[int, list[float]]:
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
        state["measuring"] = True
        await asyncio.sleep(seconds)
        state["measuring"] = False
        state["stop"] = True
        await asyncio.gather(*tasks)
    return len(latencies), latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000 if values else float("nan")


async def publish(etcd: EtcdServer, keys: Keys, address: str) -> None:
    async with EtcdClient([etcd.endpoint]) as client:
        now = int(time.time() * 1000)
        record = InstanceRecord("bench-0", address, 256 << 20,
                                copies={MODEL_ID: HeldCopy(1 << 10, now)}, published_ms=now)
        await client.put(keys.instance("bench-0"), to_document(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--callers", default="1,8")
    parser.add_argument("--workers", type=int, default=1, help="router worker processes")
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]

    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp, EtcdServer(name="bench") as etcd:
        work = Path(tmp)
        model_dir = models.add_onnx(work / "models" / "add" / "model.onnx").parent
        runtime = start_runtime_process(work / "runtime", capacity="256MiB")
        router = None
        try:
            runtime.load(MODEL_ID, model_dir, "onnx")
            keys = Keys(fabric="bench")
            asyncio.run(publish(etcd, keys, runtime.address))
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

            print(f"router overhead: {os.cpu_count()} cores, model '{MODEL_ID}' (FP32 [1,4]), "
                  f"{args.seconds:g}s per point, router workers {args.workers}")
            print(f"{'callers':>7} {'direct rps':>10} {'router rps':>10} {'ratio':>6} "
                  f"{'p50 d/r ms':>13} {'p99 d/r ms':>13} {'+p50 ms':>8} {'+p99 ms':>8} {'router CPU/req':>15}")
            for n in callers:
                direct_count, direct_lat = asyncio.run(drive(runtime.address, n, args.seconds, args.warmup))
                before = cpu_seconds(router_pids)
                routed_count, routed_lat = asyncio.run(drive(router_address, n, args.seconds, args.warmup))
                cpu = cpu_seconds(router_pids) - before  # includes the warm-up's requests too
                direct_rps, routed_rps = direct_count / args.seconds, routed_count / args.seconds
                all_routed = routed_count * (args.seconds + args.warmup) / args.seconds
                d50, r50 = percentile(direct_lat, 50), percentile(routed_lat, 50)
                d99, r99 = percentile(direct_lat, 99), percentile(routed_lat, 99)
                print(f"{n:>7} {direct_rps:>10.0f} {routed_rps:>10.0f} {routed_rps / direct_rps:>6.2f} "
                      f"{d50:>6.3f}/{r50:<6.3f} {d99:>6.3f}/{r99:<6.3f} {r50 - d50:>8.3f} {r99 - d99:>8.3f} "
                      f"{cpu / all_routed * 1e6:>12.0f} us")
        finally:
            if router is not None and router.poll() is None:
                router.terminate()
                router.wait(20)
            runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
