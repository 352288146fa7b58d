"""The Prometheus exposition every meshserve process serves on its metrics port.

ModelMesh's dashboards and alerts are written against its exposition, so this is part of
the wire contract (hence here, in the one package every process kind may import):

- the text format (0.0.4) always, never OpenMetrics: Prometheus asks for OpenMetrics
  first, and OpenMetrics would force `_total` onto every counter;
- counters under their bare name where ModelMesh's have one (`BareCounter`:
  `# TYPE modelmesh_loadmodel_failure counter`, sample `modelmesh_loadmodel_failure 3`),
  `_total` on meshserve's own counters as prometheus_client writes them;
- no `_created` series (ModelMesh has none; they double the series count for nothing);
- ModelMesh's bucket lists, in milliseconds and bytes;
- https when a certificate and key are given (modelmesh-serving's default scheme), http otherwise;
  the files are re-read when they change (`protos.tls`).

`serve_metrics` starts the server for every process kind; `BoundedLabels` caps the
per-model label values.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from protos.tls import ServerTls, TlsFiles

__all__ = [
    "AGE_BUCKETS_MS", "MESSAGE_SIZE_BUCKETS", "MODEL_SIZE_BUCKETS", "OTHER", "TIMING_BUCKETS_MS",
    "BareCounter", "BoundedLabels", "MetricsServer", "render", "serve_metrics",
]

_S, _MIN, _H, _D = 1000, 60_000, 3_600_000, 86_400_000
#: ModelMesh's timing buckets (milliseconds).
TIMING_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 60_000,
                     120_000, 300_000)
#: Age of a copy when it was evicted (milliseconds): 30 s .. 90 days.
AGE_BUCKETS_MS = (30 * _S, 5 * _MIN, 15 * _MIN, _H, 4 * _H, 12 * _H, _D, 7 * _D, 30 * _D, 90 * _D)
#: Loaded model sizes (bytes): 256 KiB times 4^k, to 4 GiB.
MODEL_SIZE_BUCKETS = tuple((256 << 10) * 4 ** k for k in range(8))
#: Request and response payloads (bytes): 128 times 4^k, to 2 MiB.
MESSAGE_SIZE_BUCKETS = tuple(128 * 4 ** k for k in range(8))

#: The label value every model past the cap shares.
OTHER = "__other__"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BoundedLabels:
    """Model ids as label values, up to `limit` distinct ones; later ones share `OTHER`.

    Keeps the series count bounded when a process sees thousands of models. The first
    `limit` ids seen keep their own series for the life of the process.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(0, limit)
        self._known: set[str] = set()

    def __call__(self, model_id: str) -> str:
        if model_id in self._known:
            return model_id
        if len(self._known) < self._limit:
            self._known.add(model_id)
            return model_id
        return OTHER


class BareCounter:
    """A counter without labels exposed under its bare name (no `_total`), as ModelMesh's are.

    Registered on `registry` at construction; `inc` is thread-safe.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self._documentation = documentation
        self._value = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        return self._value

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self._documentation, "counter")]

    def collect(self) -> list[Metric]:
        metric = Metric(self.name, self._documentation, "counter")
        metric.add_sample(self.name, {}, self._value)
        return [metric]


_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary",
          "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the text format, with the rules in the module docstring."""
    out: list[str] = []
    for metric in registry.collect():
        samples = [s for s in metric.samples if not s.name.endswith(("_created", "_gsum", "_gcount"))]
        name = metric.name
        if metric.type == "counter" and any(s.name != metric.name for s in samples):
            name += "_total"  # prometheus_client's own counters keep their suffix
        elif metric.type == "info":
            name += "_info"
        out.append(f"# HELP {name} {_escape_help(metric.documentation)}\n")
        out.append(f"# TYPE {name} {_TYPES.get(metric.type, 'untyped')}\n")
        out.extend(_sample_line(s.name, s.labels, s.value) for s in samples)
    return "".join(out).encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {floatToGoString(value)}\n"
    return f"{name} {floatToGoString(value)}\n"


class MetricsServer:
    """A started /metrics server (daemon threads); `shutdown` stops it and frees the port."""

    def __init__(self, http: ThreadingHTTPServer, scheme: str) -> None:
        self._http = http
        self.scheme = scheme
        self.port: int = http.server_address[1]
        self._thread = threading.Thread(target=http.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int, *, tls_cert_file: str = "",
                  tls_key_file: str = "") -> MetricsServer:
    """Serve `registry` at `/metrics` on host:port (0: a free port): https when both a
    certificate and a key file are given, http when neither is. Raises OSError when the port
    cannot be bound, ValueError for one TLS file without the other or files that do not load."""
    if bool(tls_cert_file) != bool(tls_key_file):
        raise ValueError("metrics TLS needs both a certificate file and a key file (or neither)")
    context = None
    if tls_cert_file:
        try:  # re-read when the files change (a rotated secret), no client certificates asked
            context = ServerTls(TlsFiles(tls_cert_file, tls_key_file)).ssl_context(client_auth=False)
        except ValueError as error:
            raise ValueError(f"cannot load the metrics certificate {tls_cert_file} with key {tls_key_file}: "
                             f"{error}") from None
    handler = type("Handler", (_MetricsHandler,), {"registry": registry})
    http = _Server((host, port), handler, context)
    return MetricsServer(http, "https" if context else "http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, on the request's own thread, so a slow or plain-text
        # client cannot hold up the accept loop.
        if self._context is not None:
            request.settimeout(10)
            try:
                request = self._context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)


class _MetricsHandler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            self._answer(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = render(self.registry)
        except Exception as error:  # a collector that fails: say so instead of a dropped connection
            self._answer(500, f"cannot collect metrics: {error}\n".encode(), "text/plain; charset=utf-8")
            return
        self._answer(200, body, CONTENT_TYPE)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Iterable[Any]) -> None:  # scrapes every second are not news
        pass
