"""Resident memory of a runtime and a router answering 100,000 malformed requests each.

Setup, real processes on loopback (`tests.support.fabric.Fabric`): a private etcd, one
runtime with its instance agent, one router (V2 gRPC, management API and REST); the
tests' `add` model (x FP32 [-1, 4]) registered through the router and loaded by one call.

Phases, each `--requests` malformed requests after `--warmup` more that are not measured
(the allocator's pools and the processes' caches fill first):
1. runtime gRPC: ModelInfer straight to the runtime: wrong raw sizes, shapes, datatypes,
   BYTES framing, negative, huge and too many dimensions, raw contents that do not match
   the inputs, typed values that do not fit, unknown inputs, unknown models;
2. router gRPC: the same through the router, plus bytes that are not a message (the
   router's wire parser) and well-framed messages with a broken tensor inside;
3. router REST: V2 JSON (not JSON, nesting past the recursion limit, lone surrogates,
   shapes and data that disagree, int64 overflows, bad binary header lengths) and V1
   predict bodies (ragged, wrong types), with distinct unknown model names among them.

Each answer must carry its case's status (INVALID_ARGUMENT / NOT_FOUND; HTTP 400 / 404);
VmRSS (/proc/<pid>/status) of the runtime and the router is read after the warm-up and
after every fifth of the phase. A valid call must still answer right at the end.

Exit status 1 when an answer had another status or a process grew more than
`--max-growth-mib` over a phase. Not part of the test run.

    python bench/fuzz_memory.py [--requests 100000] [--warmup 5000] [--window 32]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from protos import grpc_service_pb2 as pb  # noqa: E402
from bench.fabric_run import run_in_scratch_dir  # noqa: E402
from protos import model_mesh_pb2 as mm  # noqa: E402
from tests.support.fabric import Fabric  # noqa: E402
from tests.support.models import add_onnx  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL = "add"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

Case = Callable[[np.random.Generator, int], tuple[bytes, set]]


# -- malformed ModelInferRequests -------------------------------------------------------------
def _request(model: str = MODEL, name: str = "x", datatype: str = "FP32", shape=(1, 4), raw: bytes | None = b"\0" * 16,
             typed: tuple[str, list] | None = None, extra_raw: int = 0) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if typed is not None:
        getattr(tensor.contents, typed[0]).extend(typed[1])
    elif raw is not None:
        request.raw_input_contents.append(raw)
        for _ in range(extra_raw):
            request.raw_input_contents.append(b"\0")
    return request.SerializeToString()


def _wrong_raw_size(rng, n):
    size = int(rng.choice([0, 1, 15, 17, 64, 1000]))
    return _request(raw=rng.bytes(size)), {INVALID}


def _wrong_shape(rng, n):
    width = int(rng.choice([1, 2, 3, 5, 8]))
    return _request(shape=(1, width), raw=b"\0" * 4 * width), {INVALID}


def _wrong_datatype(rng, n):
    datatype = str(rng.choice(["INT32", "FP64", "UINT8", "BOOL", "FP16", "BF16"]))
    size = {"INT32": 4, "FP64": 8, "UINT8": 1, "BOOL": 1, "FP16": 2, "BF16": 2}[datatype]
    return _request(datatype=datatype, raw=b"\0" * 4 * size), {INVALID}


def _unknown_datatype(rng, n):
    return _request(datatype=str(rng.choice(["FP33", "fp32", "", "STRING", "INT128"]))), {INVALID}


def _broken_bytes_framing(rng, n):
    return _request(datatype="BYTES", raw=struct.pack("<I", int(rng.integers(5, 2**32))) + rng.bytes(4)), {INVALID}


def _odd_dimensions(rng, n):
    shape, raw = [((1, -4), b"\0" * 16), ((1,) * 65, b"\0" * 4), ((2**62, 2**62, 0), b"")][n % 3]
    return _request(shape=shape, raw=raw), {INVALID}


def _raw_count_mismatch(rng, n):
    return _request(extra_raw=1 + int(rng.integers(0, 3))), {INVALID}


def _typed_overflow(rng, n):
    return _request(datatype="UINT8", shape=(1, 4), typed=("uint_contents", [300, 1, 2, 3])), {INVALID}


def _unknown_input(rng, n):
    return _request(name=f"in{n % 1000}"), {INVALID}


def _unknown_model(rng, n):
    return _request(model=f"nope-{n}"), {NOT_FOUND}


RUNTIME_CASES: list[Case] = [_wrong_raw_size, _wrong_shape, _wrong_datatype, _unknown_datatype, _broken_bytes_framing,
                             _odd_dimensions, _raw_count_mismatch, _typed_overflow, _unknown_input, _unknown_model]


def _not_a_message(rng, n):
    # Bytes whose framing breaks; a prefix that happens to frame names a model or none.
    return b"\x0a\xff\xff" + rng.bytes(int(rng.integers(0, 40))), {INVALID}


def _broken_tensor_inside(rng, n):
    # Field 1 names the model, field 2 (an input tensor) holds bytes that are no message:
    # the router forwards it (it reads only the top level), the runtime refuses it.
    inner = b"\x0a\xff\xff\xff"
    return b"\x0a\x03add\x12" + bytes([len(inner)]) + inner, {INVALID}


ROUTER_CASES: list[Case] = [*RUNTIME_CASES, _not_a_message, _broken_tensor_inside]


def requests_of(cases: list[Case], start: int, count: int) -> Iterator[tuple[str, bytes, set]]:
    """Requests number start.. start + count - 1 (each number its own unknown model name)."""
    rng = np.random.default_rng(start)
    for n in range(start, start + count):
        case = cases[n % len(cases)]
        body, expected = case(rng, n)
        yield case.__name__.lstrip("_"), body, expected


def send_grpc(address: str, items: Iterator[tuple[str, bytes, set]], window: int, answers: Counter,
              unexpected: list[str]) -> None:
    """Every request through one channel, `window` in flight at a time."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER)  # bytes in, bytes out: the requests stay as made
        pending: list[tuple[str, set, grpc.Future]] = []

        def settle(kind: str, expected: set, future: grpc.Future) -> None:
            try:
                future.result()
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            answers[(kind, code.name)] += 1
            if code not in expected and len(unexpected) < 20:
                unexpected.append(f"{kind}: {code.name} {getattr(future.exception(), 'details', lambda: '')()}")

        for kind, body, expected in items:
            pending.append((kind, expected, call.future(body, timeout=30)))
            if len(pending) >= window:
                settle(*pending.pop(0))
        for item in pending:
            settle(*item)


# -- malformed REST bodies --------------------------------------------------------------------
def _v2_body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _x(**overrides) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4], **overrides}


REST_CASES: list[Callable[[int], tuple[str, str, bytes, dict, int]]] = [
    lambda n: ("not json", "/v2/models/add/infer", b"{nope", {}, 400),
    lambda n: ("not an object", "/v2/models/add/infer", b"[1, 2]", {}, 400),
    lambda n: ("too deep", "/v2/models/add/infer", b"[" * 3000 + b"]" * 3000, {}, 400),
    lambda n: ("lone surrogate", "/v2/models/add/infer",
               b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}', {}, 400),
    lambda n: ("shape vs data", "/v2/models/add/infer", _v2_body([_x(shape=[2, 4])]), {}, 400),
    lambda n: ("data types", "/v2/models/add/infer", _v2_body([_x(data=["a", 1, None, 2])]), {}, 400),
    lambda n: ("int64 overflow", "/v2/models/add/infer", _v2_body([_x()], parameters={"p": 2**64}), {}, 400),
    lambda n: ("model says no", "/v2/models/add/infer", _v2_body([_x(shape=[1, 2], data=[1, 2])]), {}, 400),
    lambda n: ("header length", "/v2/models/add/infer", _v2_body([_x()]),
               {"Inference-Header-Content-Length": "99999"}, 400),
    lambda n: ("unknown model", f"/v2/models/nope-{n}/infer", _v2_body([_x()]), {}, 404),
    lambda n: ("v1 ragged", "/v1/models/add:predict", json.dumps({"instances": [[1, 2, 3, 4], [1]]}).encode(), {}, 400),
    lambda n: ("v1 not json", "/v1/models/add:predict", b"instances", {}, 400),
]


def send_rest(port: int, count: int, offset: int, threads: int, answers: Counter, unexpected: list[str]) -> None:
    def worker(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(offset + index, offset + count, threads):
            kind, path, body, headers, expected = REST_CASES[n % len(REST_CASES)](n)
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
            response = connection.getresponse()
            reply = response.read()
            answers[(kind, str(response.status))] += 1
            if response.status != expected and len(unexpected) < 20:
                unexpected.append(f"{kind}: HTTP {response.status} {reply[:200]!r}")
        connection.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


# -- memory -----------------------------------------------------------------------------------
def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def run_phase(name: str, pids: dict[str, int], send: Callable[[int, int], None], args) -> dict:
    """Warm-up, then the measured requests in five chunks, VmRSS read between them."""
    send(0, args.warmup)
    series = {role: [vm_rss_kib(pid)] for role, pid in pids.items()}
    chunk = args.requests // 5
    started = time.monotonic()
    for index in range(5):
        send(args.warmup + index * chunk, chunk)
        for role, pid in pids.items():
            series[role].append(vm_rss_kib(pid))
        print(f"{name}: {(index + 1) * chunk:,} requests", file=sys.stderr, flush=True)
    return {"name": name, "series": series, "seconds": time.monotonic() - started}


def check_valid_call(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER)
        x = np.arange(4, dtype=np.float32)
        reply = pb.ModelInferResponse.FromString(call(_request(raw=x.tobytes()), timeout=30))
    names = [o.name for o in reply.outputs]
    y = np.frombuffer(reply.raw_output_contents[names.index("y")], dtype=np.float32)
    return y.tolist() == (x + 1).tolist()


def run(args: argparse.Namespace, workdir: Path) -> int:
    fabric = Fabric(workdir, lease_ttl_s=3)
    try:
        fabric.start_etcd()
        runtime = fabric.add_runtime("rt0", "256MiB")
        rest_port = free_port()
        router = fabric.add_router("--rest-port", str(rest_port))  # the last flag wins
        path = add_onnx(workdir / "store" / MODEL / "model.onnx").parent
        router.mesh.registerModel(mm.RegisterModelRequest(modelId=MODEL, modelInfo=mm.ModelInfo(type="onnx", path=str(path))),
                                  timeout=60)
        router_address = f"127.0.0.1:{router.port}"
        if not check_valid_call(router_address):
            raise SystemExit("the add model did not answer right before the fuzzing")
        pids = {"runtime": runtime.process.pid, "router": router.process.pid}
        answers: Counter = Counter()
        unexpected: list[str] = []

        def grpc_sender(address: str, cases: list[Case]) -> Callable[[int, int], None]:
            return lambda offset, count: send_grpc(address, requests_of(cases, offset, count), args.window, answers,
                                                   unexpected)

        phases = [
            run_phase("1. runtime gRPC", pids, grpc_sender(runtime.address, RUNTIME_CASES), args),
            run_phase("2. router gRPC", pids, grpc_sender(router_address, ROUTER_CASES), args),
            run_phase("3. router REST", pids, lambda offset, count: send_rest(rest_port, count, offset, args.rest_threads,
                                                                               answers, unexpected), args),
        ]
        still_right = check_valid_call(router_address) and check_valid_call(runtime.address)
        return report(args, phases, answers, unexpected, still_right)
    finally:
        fabric.close()


def report(args, phases: list[dict], answers: Counter, unexpected: list[str], still_right: bool) -> int:
    print(f"## {args.requests:,} malformed requests per phase (after {args.warmup:,} unmeasured), "
          f"{os.cpu_count()} cores\n")
    print("| phase | requests/s | process | VmRSS after warm-up (MiB) | after each fifth (MiB) | growth (MiB) |")
    print("|---|---:|---|---:|---|---:|")
    grown = []
    for phase in phases:
        rate = args.requests / phase["seconds"]
        for role, series in phase["series"].items():
            growth = (series[-1] - series[0]) / 1024
            if growth > args.max_growth_mib:
                grown.append(f"{role} grew {growth:.1f} MiB in {phase['name']}")
            fifths = ", ".join(f"{kib / 1024:.1f}" for kib in series[1:])
            print(f"| {phase['name']} | {rate:,.0f} | {role} | {series[0] / 1024:.1f} | {fifths} | {growth:+.1f} |")
    print("\nAnswers by case (warm-up included):\n")
    print("| case | status | count |")
    print("|---|---|---:|")
    for (kind, code), count in sorted(answers.items()):
        print(f"| {kind} | {code} | {count:,} |")
    for line in unexpected:
        print(f"- unexpected: {line}")
    broken = grown + ([f"{len(unexpected)}+ answers with another status"] if unexpected else [])
    if not still_right:
        broken.append("a valid call no longer answers right")
    print("\nVerdict: " + ("every answer had its status, memory stayed bounded, valid calls still right"
                           if not broken else "BROKEN: " + "; ".join(broken)))
    return 1 if broken else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="malformed requests measured per phase")
    parser.add_argument("--warmup", type=int, default=5_000, help="malformed requests before the first VmRSS reading")
    parser.add_argument("--window", type=int, default=32, help="gRPC requests in flight at a time")
    parser.add_argument("--rest-threads", type=int, default=8, help="REST clients (one keep-alive connection each)")
    parser.add_argument("--max-growth-mib", type=float, default=16.0, help="the most a process may grow over a phase")
    args = parser.parse_args()

    run_in_scratch_dir("meshserve-fuzz-memory-", lambda workdir: run(args, workdir))


if __name__ == "__main__":
    main()
