"""What KServe V1 costs next to V2 REST: the same small model, the same router, one run.

A fabric of real processes (`tests.support.fabric`: a private etcd, a `meshserve runtime`
joined by its agent, a `meshserve router` serving REST) holds the tests' tiny ONNX model
(`add_onnx`: x FP32 [-1, 4] -> y, z). An aiohttp client sends, in interleaved rounds so
drift hits all alike, for a fixed window per caller count:

- V2: `POST /v2/models/add/infer` with one [1, 4] tensor (both outputs come back);
- V1: `POST /v1/models/add:predict` with `{"instances": [[...]]}` (the same input; `y` back);
- metadata: `GET /v2/models/add`, the hop an uncached V1 predict would add (V1 needs the
  model's datatype and shape; the router keeps them per model, `router.rest_v1`).

Printed per caller count: calls, p50/p99 and mean latency of each, the ratio V1/V2 of
p50 and of mean latency, and what V1 would cost if it asked for the metadata on every
call ((V1 + metadata) / V2, p50). Client, router and runtime share the machine's cores.

    python bench/rest_v1.py [--seconds 5] [--warmup 1] [--callers 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from protos import model_mesh_pb2 as mm  # noqa: E402
from tests.support.fabric import Fabric  # noqa: E402
from tests.support.models import add_onnx  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

X = [[0.5, -1.25, 3.0, 7.0]]
TARGETS = {
    "V2": ("POST", "/v2/models/add/infer",
           json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}).encode()),
    "V1": ("POST", "/v1/models/add:predict", json.dumps({"instances": X}).encode()),
    "metadata": ("GET", "/v2/models/add", None),
}
ROUND = 20  # requests per target per round: interleaved so that drift hits all three alike


async def _one(session: aiohttp.ClientSession, target: str) -> float:
    method, path, body = TARGETS[target]
    started = time.perf_counter()
    async with session.request(method, path, data=body, headers={"Content-Type": "application/json"}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target}: HTTP {response.status}")
    return time.perf_counter() - started


async def drive(base: str, callers: int, seconds: float, warmup: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    connector = aiohttp.TCPConnector(limit=callers)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        async def caller(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                for target in TARGETS:
                    for _ in range(ROUND):
                        elapsed = await _one(session, target)
                        if record:
                            samples[target].append(elapsed)

        await asyncio.gather(*(caller(time.perf_counter() + warmup, False) for _ in range(callers)))
        await asyncio.gather(*(caller(time.perf_counter() + seconds, True) for _ in range(callers)))
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per caller count")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--callers", default="1,8", help="comma-separated caller counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rest-v1-") as work:
        fabric = Fabric(Path(work))
        try:
            fabric.start_etcd()
            fabric.add_runtime("rt0", "256MiB")
            rest_port = free_port()
            router = fabric.add_router("--rest-port", str(rest_port))
            folder = add_onnx(Path(work) / "store" / "add" / "model.onnx").parent
            router.mesh.registerModel(mm.RegisterModelRequest(modelId="add", modelInfo=mm.ModelInfo(
                type="onnx", path=str(folder))), timeout=30)
            router.mesh.ensureLoaded(mm.EnsureLoadedRequest(modelId="add", sync=True), timeout=60)
            print(f"cores: {os.cpu_count()}; window {args.seconds}s per caller count; "
                  f"one router, one runtime, model 'add' (FP32 [1, 4])")
            for callers in (int(c) for c in args.callers.split(",")):
                samples = asyncio.run(drive(f"http://127.0.0.1:{rest_port}", callers, args.seconds, args.warmup))
                p50 = {t: percentile(s, 0.5) * 1e3 for t, s in samples.items()}
                print(f"\n{callers} caller(s):")
                mean = {t: sum(s) / len(s) * 1e3 for t, s in samples.items()}
                for target, values in samples.items():
                    print(f"  {target:9s} {len(values):6d} calls  p50 {p50[target]:.3f} ms  "
                          f"p99 {percentile(values, 0.99) * 1e3:.3f} ms  mean {mean[target]:.3f} ms")
                print(f"  ratio V1/V2 p50: {p50['V1'] / p50['V2']:.2f}  mean: {mean['V1'] / mean['V2']:.2f}  "
                      f"(V1 adds {p50['V1'] - p50['V2']:+.3f} ms at p50)")
                print(f"  uncached V1 would be (V1 + metadata)/V2 p50: {(p50['V1'] + p50['metadata']) / p50['V2']:.2f}")
        finally:
            fabric.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
