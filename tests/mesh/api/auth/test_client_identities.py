"""The management API behind mTLS with a client identity allow-list: a real grpc.aio server
with `grpc.ssl_server_credentials` (client certificates required), the management stack
over a real etcd, and clients holding certificates the test makes (`cryptography`). Each
client certificate is self-signed and trusted by the server as its own root, which stands
in for a CA signing the clients' certificates. A stand-in streaming method (an echo under
ModelStreamInfer's name) shows an identity let through reaches a streaming handler whole."""

from __future__ import annotations

import grpc
import pytest

from mesh.api.auth.interceptor import AuthInterceptor
from mesh.api.auth.settings import AuthSettings, build_authorizer
from mesh.api.stack import build_management
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.timings import FabricTimings
from mesh.state.fabric_view import FabricView
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support.tls import self_signed

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _register(model_id: str) -> mm.RegisterModelRequest:
    return mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=f"s3://b/{model_id}"))


async def test_an_allowed_client_certificate_grants_management_and_another_does_not(etcd, keys, tmp_path):
    server_cert, server_key = self_signed(tmp_path / "server", "meshserve-router")
    ops_cert, ops_key = self_signed(tmp_path / "ops", "ops-client")  # the CN on the allow-list
    other_cert, other_key = self_signed(tmp_path / "other", "intruder")  # verified, but not allowed
    (tmp_path / "inference-tokens").write_text("some-inference-token\n")  # inference guarded too
    authorizer = build_authorizer(AuthSettings(management_client_identities="ops-client",
                                               inference_token_file=str(tmp_path / "inference-tokens")))
    credentials = grpc.ssl_server_credentials([(server_key.read_bytes(), server_cert.read_bytes())],
                                              root_certificates=ops_cert.read_bytes() + other_cert.read_bytes(),
                                              require_client_auth=True)
    view = FabricView(etcd, keys)
    await view.start()
    async with RuntimeClients() as runtimes, build_management(etcd, keys, view, runtimes, FabricTimings()) as management:
        server = grpc.aio.server(interceptors=[AuthInterceptor(authorizer)])
        management.add_to_server(server)

        async def echo_stream(requests, context):
            async for body in requests:
                yield body

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(echo_stream)}),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()

        def channel(cert, key) -> grpc.aio.Channel:
            client = grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes(),
                                                  private_key=key.read_bytes(), certificate_chain=cert.read_bytes())
            return grpc.aio.secure_channel(f"127.0.0.1:{port}", client,
                                           options=[("grpc.ssl_target_name_override", "localhost")])
        try:
            async with channel(ops_cert, ops_key) as allowed, channel(other_cert, other_key) as other:
                info = await mm_grpc.ModelMeshStub(allowed).registerModel(_register("by-ops"), timeout=10)
                assert info.status == mm.ModelStatusInfo.NOT_LOADED
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await mm_grpc.ModelMeshStub(other).registerModel(_register("by-intruder"), timeout=10)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert await management.registry.get("by-intruder") is None
                assert await management.registry.get("by-ops") is not None
                stream = "/inference.GRPCInferenceService/ModelStreamInfer"
                replies = [r async for r in allowed.stream_stream(stream)(iter([b"a", b"b"]), timeout=10)]
                assert replies == [b"a", b"b"]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    _ = [r async for r in other.stream_stream(stream)(iter([b"a"]), timeout=10)]
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # known (verified), not allowed
        finally:
            await server.stop(None)
            await view.close()
