"""protos.tls against real gRPC servers and ssl sockets: certificates re-read on change, a
half-written rotation not taken, mutual TLS modes, the client's identity visible to servicers
(`context.auth_context()`), and files that do not load refused by name."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from protos.tls import ServerTls, TlsFiles, TlsSettings, add_port, aio_channel
from tests.support.tls import Pki, make_pki, served_serial


@pytest.fixture
def pki(tmp_path) -> Pki:
    return make_pki(tmp_path)


class _Identities(health_aio.HealthServicer):
    """Health answers, and the auth context of each call (what an authorization layer reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    async def Check(self, request, context):  # noqa: N802 (grpc's name)
        self.seen.append(context.auth_context())
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _serve(files: TlsFiles) -> tuple[grpc.aio.Server, int, _Identities]:
    server = grpc.aio.server()
    servicer = _Identities()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = add_port(server, "127.0.0.1:0", files.server())
    await server.start()
    return server, port, servicer


async def _check(port: int, files: TlsFiles) -> None:
    async with aio_channel(f"127.0.0.1:{port}", tls=files.client()) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_with_mutual_tls_required_the_servicer_sees_the_client_certificate_and_none_is_refused(pki):
    server, port, servicer = await _serve(pki.server_files("require"))
    try:
        await _check(port, pki.client_files())
        assert servicer.seen[-1]["x509_common_name"] == [b"client-a"]
        assert b"BEGIN CERTIFICATE" in servicer.seen[-1]["x509_pem_cert"][0]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(port, pki.client_files(with_cert=False))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_optional_client_auth_on_grpc_lets_clients_without_a_certificate_in(pki):
    server, port, _ = await _serve(pki.server_files("optional"))
    try:
        await _check(port, pki.client_files(with_cert=False))
        await _check(port, pki.client_files())
    finally:
        await server.stop(0)


async def test_a_rotated_certificate_is_served_to_new_connections_and_a_half_written_one_is_not_taken(pki):
    server, port, _ = await _serve(pki.server_files())
    old = pki.server.serial
    try:
        async with aio_channel(f"127.0.0.1:{port}", tls=pki.client_files().client()) as kept:
            stub = health_pb2_grpc.HealthStub(kept)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            fresh = pki.ca.issue(pki.folder / "next", "server")
            os.replace(fresh.cert_file, pki.server.cert_file)  # the certificate first, its key not yet
            assert await asyncio.to_thread(served_serial, port, pki) == old  # a mismatched pair is not taken
            os.replace(fresh.key_file, pki.server.key_file)
            assert await asyncio.to_thread(served_serial, port, pki) == fresh.serial
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # the connection from before still works
    finally:
        await server.stop(0)


def test_the_ssl_context_takes_rotated_files_at_the_next_handshake_and_checks_client_certificates(pki):
    context = ServerTls(pki.server_files("require")).ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert ServerTls(pki.server_files("optional")).ssl_context().verify_mode == ssl.CERT_OPTIONAL
    assert ServerTls(pki.server_files("require")).ssl_context(client_auth=False).verify_mode == ssl.CERT_NONE
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept(connections: int) -> None:  # a TLS server with this context, for two handshakes
            for _ in range(connections):
                raw, _ = listener.accept()
                try:
                    with context.wrap_socket(raw, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass

        thread = threading.Thread(target=accept, args=(2,), daemon=True)
        thread.start()
        assert served_serial(port, pki) == pki.server.serial
        fresh = pki.rotate_server()
        assert served_serial(port, pki) == fresh.serial
        thread.join(10)


def test_files_that_do_not_load_are_refused_by_name_without_their_contents(pki, tmp_path: Path):
    with pytest.raises(ValueError, match="both a certificate file and a key file"):
        TlsFiles(cert_file=str(pki.server.cert_file))
    with pytest.raises(ValueError, match="needs tls_ca_file"):
        TlsFiles(str(pki.server.cert_file), str(pki.server.key_file), client_auth="require")
    with pytest.raises(ValueError, match=f"does not|cannot load the TLS certificate {pki.server.cert_file}"):
        ServerTls(TlsFiles(str(pki.server.cert_file), str(pki.client.key_file)))  # a key of another certificate
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="is not PEM") as junk:
        TlsFiles(ca_file=str(tmp_path / "junk.pem")).client()
    assert "not a certificate" not in str(junk.value)
    with pytest.raises(ValueError, match="Value error, tls_client_auth optional needs tls_ca_file"):
        TlsSettings(tls_cert_file=str(pki.server.cert_file), tls_key_file=str(pki.server.key_file),
                    tls_client_auth="optional")
