"""What auth adds to an inference call: a grpc.aio server with no interceptor (auth off, as
the router runs without token files) against the same server with `AuthInterceptor` and an
inference token file (the token sent on every call), and with an interceptor that does
nothing (what grpc.aio's interceptor path costs by itself), plus the authorizer's decision alone.

In one process: one grpc.aio server per variant on loopback, each serving a unary echo of raw
bytes (the router's forwarders take and return raw bytes too), and one client sending
`--calls` sequential calls per round to each in turn, rounds alternating which goes first.
Printed: wall and CPU µs per call of each (client and server share the process, so its CPU
time is all the work a call costs; on a busy machine CPU time is the steadier figure),
medians over rounds, and the median of each round pair's difference and ratio; then the
decision (`Authorizer.refusal`, token file with `--tokens` lines) timed with timeit.

    python bench/auth_overhead.py [--calls 500] [--rounds 20] [--tokens 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from mesh.api.auth.interceptor import AuthInterceptor  # noqa: E402
from mesh.api.auth.permissions import Permission  # noqa: E402
from mesh.api.auth.settings import AuthSettings, build_authorizer  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"
TOKEN = "inference-token-0123456789abcdef"


async def _echo(body: bytes, context) -> bytes:
    return body


async def _server(interceptors) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


class _Nothing(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        return await continuation(handler_call_details)


async def _round(channel: grpc.aio.Channel, calls: int, metadata) -> tuple[float, float]:
    """(wall, CPU) µs per call."""
    call = channel.unary_unary(METHOD)
    body = b"x" * 64
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call(body, metadata=metadata)
    return (time.perf_counter() - started) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


async def _interceptor_alone(interceptor: AuthInterceptor, metadata, calls: int = 50_000) -> float:
    """µs per call that `intercept_service` adds to awaiting the continuation directly
    (median of 5 alternating rounds, CPU time)."""
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    details = SimpleNamespace(method=METHOD, invocation_metadata=metadata)  # what grpc.aio passes, in shape

    async def continuation(_details):
        return handler

    differences = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            await continuation(details)
        bare = time.process_time() - started
        started = time.process_time()
        for _ in range(calls):
            await interceptor.intercept_service(continuation, details)
        differences.append((time.process_time() - started - bare) / calls * 1e6)
    return statistics.median(differences)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=2, help="tokens in each token file (a rotation holds 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for kind in ("management", "inference"):
            path = Path(folder) / kind
            path.write_text("".join(f"{kind}-{i}\n" for i in range(args.tokens - 1)) + (TOKEN if kind == "inference" else "m") + "\n")
            files[kind] = str(path)
        authorizer = build_authorizer(AuthSettings(management_token_file=files["management"],
                                                   inference_token_file=files["inference"]))
        off, off_port = await _server(None)
        on, on_port = await _server([AuthInterceptor(authorizer)])
        noop, noop_port = await _server([_Nothing()])
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        times: dict[str, list[tuple[float, float]]] = {"off": [], "on": [], "noop": []}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{off_port}") as c_off, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{on_port}") as c_on, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{noop_port}") as c_noop:
                targets = [("off", c_off), ("on", c_on), ("noop", c_noop)]
                for _, channel in targets:  # warm each
                    await _round(channel, 200, metadata)
                for i in range(args.rounds):
                    for name, channel in targets[i % 3:] + targets[:i % 3]:  # no target always first
                        times[name].append(await _round(channel, args.calls, metadata))
        finally:
            for server in (off, on, noop):
                await server.stop(None)
        print(f"unary echo, {args.calls} sequential calls x {args.rounds} rounds, medians (µs/call):")
        for index, what in ((0, "wall"), (1, "CPU ")):
            off_us = statistics.median(t[index] for t in times["off"])
            on_us = statistics.median(t[index] for t in times["on"])
            added = statistics.median(on[index] - off[index] for on, off in zip(times["on"], times["off"]))
            ratio = statistics.median(on[index] / off[index] for on, off in zip(times["on"], times["off"]))
            noop = statistics.median(n[index] - off[index] for n, off in zip(times["noop"], times["off"]))
            print(f"  {what}: auth off (no interceptor) {off_us:7.1f}, inference auth on (token sent) {on_us:7.1f}, "
                  f"added {added:6.1f} (x{ratio:.3f}); a do-nothing interceptor adds {noop:6.1f}")
        own = await _interceptor_alone(AuthInterceptor(authorizer), metadata)
        print(f"  AuthInterceptor.intercept_service alone (no network), minus a bare continuation: {own:6.2f} µs")
        n = 100_000
        decision = timeit.timeit(lambda: authorizer.refusal(Permission.INFERENCE, METHOD, TOKEN), number=n) / n * 1e6
        print(f"  the decision alone ({args.tokens} tokens/file): {decision:8.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
