"""ModelInfer throughput and latency of a real runtime process, against a bare grpc.aio ceiling.

What it measures: requests/s and p50/p99 latency of `inference.GRPCInferenceService/ModelInfer`
for the tiny ONNX model of the tests (`add_onnx`: input x FP32 [1, 4], outputs y and z), at 1
and 8 concurrent callers, against a real `meshserve runtime` process on loopback. In the same
run, the same client drives a bare grpc.aio echo server (its own process, a generic handler
with identity serializers) that answers every call with the very bytes of a real
ModelInferResponse of the runtime for that request, so request and response sizes are equal.
The echo server does no protobuf work at all: it is the ceiling of Python grpc.aio on this
machine, and the runtime/echo ratio is the share of that ceiling the runtime reaches.

A third process, the floor, answers with the least any Python V2 runtime must do per call:
decode the raw input with numpy, run the same ONNX file in ONNX Runtime on the event loop,
build and serialize the reply; no checks, metrics, statistics, limits or error mapping.
floor/echo is what decoding, ONNX Runtime and encoding cost by themselves on this machine;
runtime/floor is the share of that the runtime's own code (validation, statistics,
metrics, concurrency limits, error mapping) keeps.

The load generator is one asyncio grpc.aio client process: one channel per target, N caller
tasks, each awaiting a generic unary_unary call of a pre-serialized request (identity
serializers), so client overhead is minimal and the same for both targets. Each measurement
runs a warm-up, then a fixed window; requests that complete inside the window count, and their
latencies give p50/p99. Server and client CPU time over the window (from /proc) are reported
per request. Targets alternate (runtime, floor, echo) for each caller count, `--repeats` times; the
first table shows each target's median repeat by requests/s, and each ratio is the median over
the repeats of the ratio within one repeat (windows measured back to back), so slow drift in
the machine's load cancels out; with several repeats their range is printed too.

Caveat: client and servers share the machine's cores (2 on the project's development
machine), so the client's own CPU use caps both targets, and the ratio understates what the
runtime would reach with the client elsewhere. The output says how many cores there were.

    python bench/runtime_infer.py [--seconds 5] [--warmup 1] [--callers 1,8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from protos import grpc_service_pb2 as pb  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_ID = "add"
TARGET_RATIO = 0.8
# The runtime's own server options (runtimes/server.py), so the echo server matches it.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.so_reuseport", 0),
]


# -- the echo server (run in its own process) --------------------------------------------
async def serve_echo(port: int, response_file: Path) -> None:
    response = response_file.read_bytes()

    async def model_infer(request: bytes, context) -> bytes:
        return response

    await serve(port, grpc.unary_unary_rpc_method_handler(model_infer))


# -- the floor server (run in its own process) -------------------------------------------
async def serve_floor(port: int, model_file: Path) -> None:
    """The least any Python V2 runtime does per call: decode the raw input, run ONNX Runtime
    on the event loop, build and serialize the reply. No checks, metrics, statistics,
    concurrency limits or error mapping; the request is assumed to be the benchmark's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # as the runtime's sessions
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    async def model_infer(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
        results = session.run(output_names, {tensor.name: x})
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for name, array in zip(output_names, results):
            response.outputs.add(name=name, datatype="FP32", shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    handler = grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=pb.ModelInferRequest.FromString,
                                                  response_serializer=pb.ModelInferResponse.SerializeToString)
    await serve(port, handler)


async def serve(port: int, handler: grpc.RpcMethodHandler) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"benchmark server: cannot listen on 127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def start_server_process(serve_flag: str, *options: str) -> tuple[subprocess.Popen, str]:
    """This script as a server process (`serve_flag` PORT: --serve-echo or --serve-floor, then its
    options); returns it and its address once it listens."""
    from tests.support.ports import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, serve_flag, str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()  # blocks until READY or the process dies
    if line.strip() != "READY":
        process.kill()
        raise SystemExit(f"{serve_flag} server did not start: {line}{process.stdout.read()}")
    return process, f"127.0.0.1:{port}"


def start_echo_process(response_file: Path) -> tuple[subprocess.Popen, str]:
    return start_server_process("--serve-echo", "--response-file", str(response_file))


# -- measurement -------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Result:
    target: str
    callers: int
    requests: int
    seconds: float
    latencies: np.ndarray
    server_cpu: float
    client_cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else float("nan")

    def server_us_per_request(self) -> float:
        return self.server_cpu / max(self.requests, 1) * 1e6

    def client_us_per_request(self) -> float:
        return self.client_cpu / max(self.requests, 1) * 1e6


async def measure(target: str, address: str, server_pid: int, request: bytes, callers: int,
                  warmup: float, seconds: float) -> Result:
    """`callers` tasks send `request` back to back; count what completes in the window."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        await call(request, timeout=10)  # connect before the clock starts
        clock = time.perf_counter
        begin = clock() + warmup
        end = begin + seconds
        latencies: list[float] = []
        record = latencies.append

        async def caller() -> None:
            while True:
                started = clock()
                if started >= end:
                    return
                await call(request, timeout=10)
                finished = clock()
                if begin <= finished < end:
                    record(finished - started)

        async def cpu_window() -> tuple[float, float]:
            await asyncio.sleep(max(begin - clock(), 0))
            server0, client0 = cpu_seconds(server_pid), own_cpu_seconds()
            await asyncio.sleep(max(end - clock(), 0))
            return cpu_seconds(server_pid) - server0, own_cpu_seconds() - client0

        window, *_ = await asyncio.gather(cpu_window(), *(caller() for _ in range(callers)))
    return Result(target, callers, len(latencies), seconds, np.array(latencies), *window)


def infer_request() -> tuple[bytes, np.ndarray]:
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    request = pb.ModelInferRequest(model_name=MODEL_ID, id="bench")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString(), x


def check_response(raw: bytes, x: np.ndarray) -> None:
    response = pb.ModelInferResponse.FromString(raw)
    outputs = {o.name: np.frombuffer(c, dtype=np.float32).reshape(list(o.shape))
               for o, c in zip(response.outputs, response.raw_output_contents)}
    if set(outputs) != {"y", "z"} or not (np.array_equal(outputs["y"], x + 1) and np.array_equal(outputs["z"], x * 2)):
        raise SystemExit(f"unexpected runtime response: {response}")


# -- report ------------------------------------------------------------------------------
def table(results: list[Result], ratios: dict[int, dict[str, float]]) -> str:
    lines = [
        "| target | callers | requests/s | p50 ms | p99 ms | server CPU µs/req | client CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.target} | {r.callers} | {r.rps:,.0f} | {r.percentile_ms(50):.3f} | {r.percentile_ms(99):.3f} "
                     f"| {r.server_us_per_request():.0f} | {r.client_us_per_request():.0f} |")
    names = list(next(iter(ratios.values())))
    lines += ["", "| callers | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for callers, row in ratios.items():
        lines.append(f"| {callers} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def median_by_rps(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


async def run_all(args, targets: list[tuple[str, str, int]], request: bytes) -> list[Result]:
    """Every target once per repeat, alternating, so drift in the machine's load hits all alike."""
    results = []
    for callers in args.callers:
        for _ in range(args.repeats):
            for target, address, pid in targets:
                result = await measure(target, address, pid, request, callers, args.warmup, args.seconds)
                print(f"  {target:7s} callers={callers}: {result.rps:,.0f} req/s", file=sys.stderr, flush=True)
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per target and caller count")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before each window (seconds)")
    parser.add_argument("--callers", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8],
                        help="comma-separated concurrent caller counts (default 1,8)")
    parser.add_argument("--repeats", type=int, default=1, help="windows per target and caller count; medians are shown")
    parser.add_argument("--serve-echo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--response-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        asyncio.run(serve_echo(args.serve_echo, args.response_file))
        return 0
    if args.serve_floor is not None:
        asyncio.run(serve_floor(args.serve_floor, args.model_file))
        return 0

    from tests.support.models import add_onnx
    from tests.support.runtime_process import start_runtime_process

    request, x = infer_request()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-runtime-infer-") as tmp:
        work = Path(tmp)
        model_file = add_onnx(work / "store" / MODEL_ID / "1" / "model.onnx")
        runtime = start_runtime_process(work / "runtime", capacity="1GiB")
        helpers: list[subprocess.Popen] = []
        try:
            runtime.load(MODEL_ID, model_file.parent.parent, "onnx")
            response = call_once(runtime.address, request)
            check_response(response, x)
            (work / "response.bin").write_bytes(response)
            echo, echo_address = start_echo_process(work / "response.bin")
            helpers.append(echo)
            floor, floor_address = start_server_process("--serve-floor", "--model-file", str(model_file))
            helpers.append(floor)
            check_response(call_once(floor_address, request), x)
            print(f"request {len(request)} B, response {len(response)} B; "
                  f"{args.warmup:g} s warm-up + {args.seconds:g} s window each", file=sys.stderr, flush=True)
            targets = [("runtime", runtime.address, runtime.process.pid), ("floor", floor_address, floor.pid),
                       ("echo", echo_address, echo.pid)]
            results = asyncio.run(run_all(args, targets, request))
        finally:
            for helper in helpers:
                helper.terminate()
                helper.wait(10)
            runtime.stop()

    shown, ratios, spreads = [], {}, {}
    for callers in args.callers:
        runs = {t: [r for r in results if r.target == t and r.callers == callers] for t in ("runtime", "floor", "echo")}
        shown += [median_by_rps(runs[t]) for t in runs]
        # Ratios of the windows of one repeat (measured back to back), then their median: drift in
        # the machine's load between repeats cancels out of each ratio.
        per_repeat = [
            {"runtime/echo requests/s": rt.rps / ec.rps, "floor/echo requests/s": fl.rps / ec.rps,
             "runtime/floor requests/s": rt.rps / fl.rps,
             "runtime/echo p50": rt.percentile_ms(50) / ec.percentile_ms(50),
             "runtime/echo p99": rt.percentile_ms(99) / ec.percentile_ms(99)}
            for rt, fl, ec in zip(runs["runtime"], runs["floor"], runs["echo"])
        ]
        ratios[callers] = {name: float(np.median([r[name] for r in per_repeat])) for name in per_repeat[0]}
        spreads[callers] = {name: (min(r[name] for r in per_repeat), max(r[name] for r in per_repeat))
                            for name in per_repeat[0]}

    cores = len(os.sched_getaffinity(0))
    print(f"## ModelInfer: meshserve runtime vs a minimal ONNX handler (floor) vs bare grpc.aio echo ({MODEL_ID}: "
          f"x FP32 [1,4] -> y, z; request {len(request)} B, response {len(response)} B)\n")
    print(f"{cores} CPU cores, shared by the client and the servers (loopback); {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s window, {args.repeats} repeat(s) (median shown). Python {sys.version.split()[0]}, "
          f"grpcio {grpc.__version__}. 1-min load average before the run: {load_before:.2f} (other work on the machine "
          "skews every target; compare ratios, not absolute figures).\n")
    print(table(shown, ratios))
    if args.repeats > 1:
        print("\nRatios are medians over the repeats of each repeat's own ratio; their range:")
        for callers, spread in spreads.items():
            print(f"- {callers} caller(s): " + "; ".join(f"{name} {low:.2f}-{high:.2f}"
                                                      for name, (low, high) in spread.items() if "requests/s" in name))
    top = max(args.callers)
    reached = ratios[top]["runtime/echo requests/s"]
    verdict = "meets" if reached >= TARGET_RATIO else "misses"
    print(f"\nAt {top} callers the runtime reaches {reached:.2f} of the echo ceiling: it {verdict} the "
          f"{TARGET_RATIO} target. The floor (decode, ONNX Runtime, encode; nothing else) reaches "
          f"{ratios[top]['floor/echo requests/s']:.2f}.")
    if load_before > 0.5:
        print(f"Warning: the machine was busy before the run (load {load_before:.2f}); a CPU-starved echo server "
              "makes the ratio look better than it is. Rerun on a quiet machine for a verdict.")
    if cores <= 2:
        print(f"Note: with {cores} cores the client competes with the server for CPU; the ratio is a lower bound on "
              "what the runtime reaches with the client on other cores.")
    return 0


def call_once(address: str, request: bytes) -> bytes:
    with grpc.insecure_channel(address) as channel:
        return channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)(request, timeout=10)


if __name__ == "__main__":
    sys.exit(main())
