"""Dynamic batching off vs on, in one run: in a model manager of this process, through the
fabric (a router in front of a runtime process), and straight to the runtime process.

What it measures: requests/s and p50/p99 latency (one row per request) for two ONNX MLPs, an
MNIST-sized one (784-128-10) and a heavier one (four 1024-wide layers), at 1, 8 and 32
concurrent callers, each model loaded twice: as it is, and with `{"batching":
{"max_batch_size": 32, "max_queue_delay_us": D}}` in its modelKey. Three sections
(`--sections`):

- in-process: caller tasks await `ModelManager.run` directly (a manager with the runtime's
  defaults, the worker pool included; no gRPC): what the batcher itself does to a model;
- fabric: ModelInfer to `meshserve router --native-front` (its view from a real etcd), which
  forwards each call as a frame on the runtime's meshserve.stream.v1 stream: the path a
  fabric's callers take to a model, and the one the verdicts are about;
- runtime: unary ModelInfer straight to the `meshserve runtime` process, which no fabric
  caller takes (routers use the stream), shown because it is what a bare runtime costs.

Callers are `bench/runtime_infer.py`'s load generator (one asyncio grpc.aio client,
pre-serialized requests). By default the runtime gets half the cores to itself
(`--runtime-cores`; it is started on them, so it sizes its threads and batches by them, as
it does by a pod's CPU limit) and the callers, the router and its front get the rest: in a
cluster they do not share a runtime pod's CPU. `--runtime-cores 0` shares every core.

Off and on alternate for each caller count, `--repeats` times; the
median repeat by requests/s is shown, and the ratios are medians of each repeat's own
ratio, so drift in the machine's load cancels out. The mean batch size of a window is the
model's inference count over its execution count (V2 ModelStatistics, before and after).
The runtime's CPU time per request (from /proc, over the window) is the figure least moved
by other work on the machine: off/on is how many more requests the same cores serve.

The exit status is the fabric section's verdicts (or every section's, without it). The
issue's targets: at 32 callers at least 2x the requests/s with batching on for the heavier
model; p99 on no worse than p99 off plus D; at 1 caller, p50 on no more than D over p50 off.

    python bench/batching.py [--seconds 3] [--warmup 1] [--callers 1,8,32] [--repeats 1]
                             [--delay-us 500] [--max-batch-size 32] [--runtime-cores N]
                             [--sections in-process,fabric,runtime] [-- extra runtime flags]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from bench.runtime_infer import Result, call_once, measure, median_by_rps, own_cpu_seconds  # noqa: E402
from protos import grpc_service_pb2 as pb  # noqa: E402

MODELS = {"mnist": (784, 128, 10), "heavy": (1024,) * 5}
TARGET_SPEEDUP = 2.0


def request_for(model_id: str, width: int) -> bytes:
    request = pb.ModelInferRequest(model_name=model_id, id="bench")
    request.inputs.add(name="x", datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(np.random.default_rng(0).random((1, width), dtype=np.float32).tobytes())
    return request.SerializeToString()


def counts(address: str, model_id: str) -> tuple[int, int]:
    """(inference count, execution count) of the model, from V2 ModelStatistics."""
    from protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model_id), timeout=10).model_stats[0]
    return stats.inference_count, stats.execution_count


async def window(address: str, runtime, model_id: str, request: bytes, callers: int,
                 args) -> tuple[Result, float]:
    """One measured window of calls to `address` (the runtime or a router in front of it), its
    CPU the runtime's, and the mean batch size the runtime ran."""
    before = counts(runtime.address, model_id)
    result = await measure(model_id, address, runtime.process.pid, request, callers, args.warmup, args.seconds)
    after = counts(runtime.address, model_id)
    return result, (after[0] - before[0]) / max(after[1] - before[1], 1)


async def in_process_window(manager, model_id: str, x: np.ndarray, callers: int, args) -> tuple[Result, float]:
    """`callers` tasks await ModelManager.run back to back; what completes in the window counts."""
    stats = manager.get(model_id).stats
    clock = time.perf_counter
    begin = clock() + args.warmup
    end = begin + args.seconds
    latencies: list[float] = []
    counted = {}

    async def caller() -> None:
        while (started := clock()) < end:
            await manager.run(model_id, {"x": x}, [])
            finished = clock()
            await asyncio.sleep(0)  # a run on the event loop does not yield: let the other callers (and the clock) in
            if begin <= finished < end:
                latencies.append(finished - started)

    async def cpu_window() -> float:
        await asyncio.sleep(max(begin - clock(), 0))
        cpu0, counted["before"] = own_cpu_seconds(), (stats.inference_count, stats.execution_count)
        await asyncio.sleep(max(end - clock(), 0))
        counted["after"] = stats.inference_count, stats.execution_count
        return own_cpu_seconds() - cpu0

    cpu, *_ = await asyncio.gather(cpu_window(), *(caller() for _ in range(callers)))
    (i0, e0), (i1, e1) = counted["before"], counted["after"]
    return Result(model_id, callers, len(latencies), args.seconds, np.array(latencies), cpu, 0.0), (i1 - i0) / max(e1 - e0, 1)


async def run_all(args, measure_one) -> dict:
    """{(model, callers): {"off": [(Result, batch)], "on": [...]}}, off and on alternating;
    `measure_one(model_id, width, callers)` measures one window."""
    runs: dict = {}
    for name, widths in ((n, MODELS[n]) for n in args.models):
        for callers in args.callers:
            slot = runs[(name, callers)] = {"off": [], "on": []}
            for _ in range(args.repeats):
                for mode, model_id in (("off", name), ("on", f"{name}-batched")):
                    result, batch = await measure_one(model_id, widths[0], callers)
                    slot[mode].append((result, batch))
                    print(f"  {name} {mode:3s} callers={callers}: {result.rps:,.0f} req/s, p99 "
                          f"{result.percentile_ms(99):.2f} ms, batch {batch:.1f}", file=sys.stderr, flush=True)
    return runs


async def in_process(args, store: Path, key: str) -> dict:
    from runtimes.backends import BackendRegistry
    from runtimes.model_manager import ManagerConfig, ModelManager
    from runtimes.settings import RuntimeSettings
    from tests.runtime.test_model_manager import LocalFiles

    defaults = RuntimeSettings()
    config = ManagerConfig(capacity_bytes=4 << 30, max_concurrency=defaults.max_concurrency,
                           max_queue=defaults.max_queue, infer_threads=defaults.infer_threads,
                           max_batches_at_once=defaults.max_batches_at_once)
    manager = ModelManager(config, BackendRegistry.default(defaults.threads_per_model), LocalFiles())
    try:
        for name in args.models:
            await manager.load(name, "onnx", str(store / name))
            await manager.load(f"{name}-batched", "onnx", str(store / name), key)
        rows = {width: np.random.default_rng(0).random((1, width), dtype=np.float32)
                for width in (MODELS[n][0] for n in args.models)}
        return await run_all(args, lambda model_id, width, callers: in_process_window(
            manager, model_id, rows[width], callers, args))
    finally:
        await manager.close()


@contextmanager
def batching_runtime(args, store: Path, key: str):
    """A `meshserve runtime` holding each model twice, as it is and batched (`key`), checked to answer alike."""
    from tests.support.runtime_process import start_runtime_process

    # Started on its cores, it sizes its threads and batches by them (runtimes.cpus).
    with on_cores(args.cores and args.cores[0]):
        runtime = start_runtime_process(store.parent / "runtime", *args.runtime_flags, capacity="2GiB")
    try:
        for name, widths in ((n, MODELS[n]) for n in args.models):
            runtime.load(name, store / name, "onnx")
            runtime.load(f"{name}-batched", store / name, "onnx", key)
            replies = [pb.ModelInferResponse.FromString(call_once(runtime.address, request_for(m, widths[0])))
                       for m in (name, f"{name}-batched")]
            if replies[0].raw_output_contents != replies[1].raw_output_contents:
                raise SystemExit(f"{name}: the batched copy answered differently")
        yield runtime
    finally:
        runtime.stop()


def split_cores(runtime_cores: int) -> tuple[set[int], set[int]] | None:
    """(the runtime's cores, everyone else's) out of this process's, or None to share them all."""
    cores = sorted(os.sched_getaffinity(0))
    if runtime_cores <= 0 or runtime_cores >= len(cores):
        return None
    return set(cores[:runtime_cores]), set(cores[runtime_cores:])


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of process `pid` on `cores` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except (ProcessLookupError, FileNotFoundError):
            pass  # a thread that ended meanwhile


@contextmanager
def on_cores(cores: set[int] | None, *others: int):
    """This process, and the processes `others`, on `cores` for the block (None: as they are);
    this process back on all its cores after it (its children keep theirs)."""
    everyone = os.sched_getaffinity(0)
    if cores:
        for pid in (os.getpid(), *others):
            pin(pid, cores)
    try:
        yield
    finally:
        pin(os.getpid(), everyone)


def measure_all(args, runtime, address: str, others: tuple[int, ...] = ()) -> dict:
    """Every window against `address`; with --runtime-cores, this process (the callers) and
    `others` (a router, its front) on the cores the runtime was not started on: in a cluster a
    runtime pod has CPU of its own, and its callers and routers run elsewhere."""
    with on_cores(args.cores and args.cores[1], *others):
        return asyncio.run(run_all(args, lambda model_id, width, callers: window(
            address, runtime, model_id, request_for(model_id, width), callers, args)))


def through_runtime(args, store: Path, key: str) -> dict:
    with batching_runtime(args, store, key) as runtime:
        return measure_all(args, runtime, runtime.address)


def through_fabric(args, store: Path, key: str) -> dict:
    """Callers -> `meshserve router --native-front` -> the runtime's meshserve.stream.v1 stream:
    how a fabric's callers reach a model. The router's view comes from a real etcd, where an
    instance record says the runtime holds the models (no agent runs: nothing here moves them)."""
    from bench.router_overhead import children, publish, start_router
    from mesh.etcd.keys import Keys
    from router.native_front.supervisor import NativeFrontError, find_binary
    from tests.support.etcd_server import EtcdServer

    try:
        find_binary()
    except NativeFrontError as error:
        raise SystemExit(f"the fabric section needs the router's native front: {error}") from None
    model_ids = [m for n in args.models for m in (n, f"{n}-batched")]
    with EtcdServer(name="bench") as etcd, batching_runtime(args, store, key) as runtime:
        asyncio.run(publish(etcd, Keys(fabric="bench"), runtime.address, model_ids))
        router, address = start_router(etcd, store.parent / "router.log", "--native-front", model=model_ids[-1])
        try:
            return measure_all(args, runtime, address, (router.pid, *children(router.pid)))
        finally:
            router.terminate()
            router.wait(30)


def report(args, runs: dict, section: str) -> bool:
    delay_ms = args.delay_us / 1000
    print(f"\n### {section}\n")
    print("| model | callers | batching | requests/s | p50 ms | p99 ms | mean batch | runtime CPU µs/req |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for (name, callers), slot in runs.items():
        for mode in ("off", "on"):
            shown = median_by_rps([r for r, _ in slot[mode]])
            batch = next(b for r, b in slot[mode] if r is shown)
            print(f"| {name} | {callers} | {mode} | {shown.rps:,.0f} | {shown.percentile_ms(50):.2f} | "
                  f"{shown.percentile_ms(99):.2f} | {batch:.1f} | {shown.server_us_per_request():.0f} |")
        pairs = list(zip((r for r, _ in slot["off"]), (r for r, _ in slot["on"])))
        ratios[(name, callers)] = {
            "speedup": float(np.median([on.rps / off.rps for off, on in pairs])),
            "p99 on - off ms": float(np.median([on.percentile_ms(99) - off.percentile_ms(99) for off, on in pairs])),
            "p50 on - off ms": float(np.median([on.percentile_ms(50) - off.percentile_ms(50) for off, on in pairs])),
            "cpu off/on": float(np.median([off.server_us_per_request() / on.server_us_per_request() for off, on in pairs])),
        }
    print("\n| model | callers | requests/s on/off | runtime CPU per request off/on | p99 on - off (ms) | p50 on - off (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, callers), row in ratios.items():
        print(f"| {name} | {callers} | {row['speedup']:.2f} | {row['cpu off/on']:.2f} | {row['p99 on - off ms']:+.2f} "
              f"| {row['p50 on - off ms']:+.2f} |")

    # The targets: the heavier model at the most callers (throughput, p99), and a lone
    # caller of either model (added latency). The other rows are figures, not verdicts.
    top, low = max(args.callers), min(args.callers)
    heavy = ratios.get(("heavy", top))
    checks = [
        *([(f"heavy at {top} callers: {heavy['speedup']:.2f}x the requests/s (target >= {TARGET_SPEEDUP:g}x)",
            heavy["speedup"] >= TARGET_SPEEDUP),
           (f"heavy at {top} callers: p99 {heavy['p99 on - off ms']:+.2f} ms (target <= +{delay_ms:g} ms)",
            heavy["p99 on - off ms"] <= delay_ms)] if heavy else []),
        *((f"{name} at {low} caller(s): p50 {ratios[(name, low)]['p50 on - off ms']:+.2f} ms "
           f"(target <= +{delay_ms:g} ms)", ratios[(name, low)]["p50 on - off ms"] <= delay_ms) for name in args.models),
    ]
    print()
    for text, ok in checks:
        print(f"- {'meets' if ok else 'MISSES'}: {text}")
    return all(ok for _, ok in checks)


#: name -> (heading, measure): in the order they run and are shown.
SECTIONS = {
    "in-process": ("In process (ModelManager.run; CPU is this process's)",
                   lambda args, store, key: asyncio.run(in_process(args, store, key))),
    "fabric": ("Through the fabric (ModelInfer to a router with its native front, which forwards on the "
               "runtime's stream; CPU is the runtime's)", through_fabric),
    "runtime": ("Straight to a runtime process (unary ModelInfer over gRPC; CPU is the runtime's)", through_runtime),
}
#: Whose verdicts decide the exit status: how the fabric's callers reach a model.
VERDICT_SECTION = "fabric"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per model, mode and caller count")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window (seconds)")
    parser.add_argument("--callers", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=1, help="windows per model, mode and caller count")
    parser.add_argument("--delay-us", type=int, default=500, help="max_queue_delay_us of the batched copies")
    parser.add_argument("--max-batch-size", type=int, default=32, help="max_batch_size of the batched copies")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default all)")
    parser.add_argument("--runtime-cores", type=int, default=max(len(os.sched_getaffinity(0)) // 2, 1),
                        help="cores the runtime gets to itself in the fabric and runtime sections; callers and "
                             "router get the rest (default half; 0: everyone shares every core)")
    parser.add_argument("--sections", type=lambda s: s.split(","), default=list(SECTIONS),
                        help=f"comma-separated, of {', '.join(SECTIONS)} (default all)")
    parser.add_argument("runtime_flags", nargs="*", help="extra flags for the runtime process (after --)")
    args = parser.parse_args(argv)
    args.cores = split_cores(args.runtime_cores)  # (the runtime's, everyone else's), or None

    from tests.support.models import mlp_onnx

    load_before = os.getloadavg()[0]
    key = json.dumps({"batching": {"max_batch_size": args.max_batch_size, "max_queue_delay_us": args.delay_us}})
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        store = Path(tmp) / "store"
        for name in args.models:
            mlp_onnx(store / name / "model.onnx", MODELS[name])
        sections = {SECTIONS[name][0]: SECTIONS[name][1](args, store, key) for name in SECTIONS if name in args.sections}

    cores = len(os.sched_getaffinity(0))
    layout = (f"the runtime on {len(args.cores[0])} of them to itself (cores {sorted(args.cores[0])}), callers and "
              f"router on the rest" if args.cores else "shared by the callers, the router and the runtime")
    print(f"## Dynamic batching off vs on: ONNX MLPs {', '.join(f'{n} {MODELS[n]}' for n in args.models)}, one row "
          f"per request, max_batch_size {args.max_batch_size}, max_queue_delay_us {args.delay_us}\n")
    print(f"{cores} CPU cores, {layout} (loopback); {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s window, {args.repeats} repeat(s) (median shown); runtime flags "
          f"{' '.join(args.runtime_flags) or '(defaults)'}. 1-min load average before the run: {load_before:.2f}.\n")
    verdicts = {section: report(args, runs, section) for section, runs in sections.items()}
    met = verdicts.get(SECTIONS[VERDICT_SECTION][0], all(verdicts.values()))
    if load_before > 0.5:
        print(f"\nWarning: the machine was busy before the run (load {load_before:.2f}); latencies include waits "
              "for CPU that other work took.")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
