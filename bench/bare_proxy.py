"""A bare grpc.aio unary proxy: the floor of what any Python grpc.aio hop costs.

One grpc.aio server with one GenericRpcHandler that answers every method with a unary
handler forwarding the request's bytes to one upstream address through
`channel.unary_unary(method)` (no serializers: bytes in, bytes out) and returning the
upstream's reply bytes. Nothing else: no metadata handling, no metrics, no routing, no
error mapping (an upstream error surfaces as the handler's exception). Same server and
channel options as the router (router/server.py, router/routing.py), so the difference to
`meshserve router` is the router's own code.

Used by bench/router_overhead.py, which starts it as its own process:

    python bench/bare_proxy.py --port PORT --upstream HOST:PORT

It prints READY once the port is bound. `--sync-threads N` forwards with gRPC's synchronous
API instead (a server with an N-thread pool, a blocking channel call per request): the other
Python transport a hop could use.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

MAX_MESSAGE_BYTES = 16 << 20  # the router's default max_message_bytes (router/settings.py)
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
]


class Forward(grpc.GenericRpcHandler):
    """Answers every method by forwarding its bytes upstream; `make_forward(upstream)` gives the
    handler function for one method's upstream callable (awaiting for grpc.aio, blocking for sync)."""

    def __init__(self, channel, make_forward) -> None:
        self._channel = channel
        self._make_forward = make_forward
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            forward = self._make_forward(self._channel.unary_unary(method))
            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


def awaiting(upstream):
    async def forward(body: bytes, context) -> bytes:
        return await upstream(body)

    return forward


def blocking(upstream):
    def forward(body: bytes, context) -> bytes:
        return upstream(body, timeout=context.time_remaining())

    return forward


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream, options=CHANNEL_OPTIONS)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((Forward(channel, awaiting),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"bare proxy: cannot listen on 127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def serve_blocking(port: int, upstream: str, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    channel = grpc.insecure_channel(upstream, options=CHANNEL_OPTIONS)
    server = grpc.server(ThreadPoolExecutor(threads), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((Forward(channel, blocking),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"bare proxy: cannot listen on 127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port to forward every call to")
    parser.add_argument("--sync-threads", type=int, metavar="N",
                        help="use gRPC's synchronous server and channel, with N handler threads, instead of grpc.aio")
    args = parser.parse_args()
    if args.sync_threads:
        serve_blocking(args.port, args.upstream, args.sync_threads)
    else:
        asyncio.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
