"""The exposition every process serves: ModelMesh's bare counter names, the text format
whatever the scraper asks for, https with a certificate, clear refusals of bad TLS settings."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from protos.metrics_exposition import (
    MESSAGE_SIZE_BUCKETS, MODEL_SIZE_BUCKETS, TIMING_BUCKETS_MS, BareCounter, BoundedLabels, render, serve_metrics,
)
from tests.support.tls import self_signed

#: What Prometheus 2.x sends: OpenMetrics first, which would force `_total` onto counters.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    failures = BareCounter("modelmesh_loadmodel_failure", "Model loads that failed.", registry)
    failures.inc(2)
    Counter("meshserve_router_retries", "Retries.", ["reason"], registry=registry).labels("unavailable").inc()
    Histogram("modelmesh_loadmodel_milliseconds", "Load time.", buckets=TIMING_BUCKETS_MS, registry=registry).observe(42)
    return registry


def test_a_bare_counter_has_no_total_suffix_and_our_own_counters_keep_theirs():
    text = render(_registry()).decode()
    assert "# TYPE modelmesh_loadmodel_failure counter\nmodelmesh_loadmodel_failure 2.0\n" in text
    assert "modelmesh_loadmodel_failure_total" not in text
    assert "# TYPE meshserve_router_retries_total counter\n" in text
    assert 'meshserve_router_retries_total{reason="unavailable"} 1.0' in text
    assert "_created" not in text  # ModelMesh has none
    assert 'modelmesh_loadmodel_milliseconds_bucket{le="50.0"} 1.0' in text


def test_bare_counter_refuses_to_go_down_and_is_read_by_get_sample_value():
    registry = CollectorRegistry()
    counter = BareCounter("modelmesh_unloadmodel_failure", "Unloads that failed.", registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1)
    counter.inc()
    assert registry.get_sample_value("modelmesh_unloadmodel_failure") == 1
    with pytest.raises(ValueError):  # the name is taken: a second one would be a duplicate series
        BareCounter("modelmesh_unloadmodel_failure", "again", registry)


def test_bucket_lists_are_modelmeshs():
    assert TIMING_BUCKETS_MS[0] == 0.5 and TIMING_BUCKETS_MS[-1] == 300_000 and len(TIMING_BUCKETS_MS) == 19
    assert MODEL_SIZE_BUCKETS == tuple(262_144 * 4 ** k for k in range(8)) and MODEL_SIZE_BUCKETS[-1] == 4 << 30
    assert MESSAGE_SIZE_BUCKETS[0] == 128 and MESSAGE_SIZE_BUCKETS[-1] == 2 << 20


def test_bounded_labels_put_models_past_the_cap_under_other():
    label = BoundedLabels(2)
    assert [label(m) for m in ("a", "b", "c", "a", "d")] == ["a", "b", "__other__", "a", "__other__"]


def test_http_serves_the_text_format_even_when_openmetrics_is_asked_for():
    server = serve_metrics(_registry(), "127.0.0.1", 0)
    try:
        assert server.scheme == "http"
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "modelmesh_loadmodel_failure 2.0" in reply.read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=10)
        assert missing.value.code == 404
    finally:
        server.shutdown()


def test_https_with_a_certificate_and_a_plain_client_does_not_stall_it(tmp_path):
    cert, key = self_signed(tmp_path)
    server = serve_metrics(_registry(), "127.0.0.1", 0, tls_cert_file=str(cert), tls_key_file=str(key))
    try:
        assert server.scheme == "https"
        # A plain-text client gets no metrics (a reset or an alert).
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
            plain.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            try:
                answer = plain.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert b"modelmesh" not in answer
        context = ssl.create_default_context(cafile=str(cert))
        # A client that connects and says nothing holds no one up: the handshake runs on its own thread.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10):
            with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/metrics", context=context,
                                        timeout=5) as reply:
                assert "# TYPE modelmesh_loadmodel_failure counter" in reply.read().decode()
        with pytest.raises(urllib.error.URLError):  # not trusted without the certificate
            urllib.request.urlopen(f"https://127.0.0.1:{server.port}/metrics", timeout=10)
    finally:
        server.shutdown()


def test_one_tls_file_without_the_other_or_a_bad_file_is_refused_clearly(tmp_path):
    cert, _ = self_signed(tmp_path)
    with pytest.raises(ValueError, match="both a certificate file and a key file"):
        serve_metrics(CollectorRegistry(), "127.0.0.1", 0, tls_cert_file=str(cert))
    with pytest.raises(ValueError, match="cannot load the metrics certificate"):
        serve_metrics(CollectorRegistry(), "127.0.0.1", 0, tls_cert_file=str(cert), tls_key_file=str(tmp_path / "none"))


def test_a_taken_port_is_an_os_error_and_shutdown_frees_the_port():
    first = serve_metrics(CollectorRegistry(), "127.0.0.1", 0)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            serve_metrics(CollectorRegistry(), "127.0.0.1", holder.getsockname()[1])
    port = first.port
    first.shutdown()
    again = serve_metrics(CollectorRegistry(), "127.0.0.1", port)
    again.shutdown()
