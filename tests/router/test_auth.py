"""Who may do what on a router's ports: a real router in-process with the management stack
over a real etcd, auth on with token files written by the test, called through real gRPC
channels, aiohttp and the `meshserve` command line (a subprocess).

The method lists come from the services' descriptors, so a method added to a proto is
covered (and, unclassified, refused) without editing this file.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.api.auth.interceptor import AuthInterceptor
from mesh.api.auth.permissions import METHOD_PERMISSIONS, Permission
from mesh.api.auth.settings import AuthSettings, build_authorizer
from mesh.api.stack import build_management
from mesh.cli.controller import HEALTH_SERVICES
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.timings import FabricTimings
from protos import grpc_service_pb2 as pb
from protos import mesh_admin_pb2 as admin
from protos import model_mesh_pb2 as mm
from protos._pool import POOL
from router.dataplane import SERVICE
from router.server import MANAGEMENT_SERVICES, start_router
from router.settings import RouterSettings
from tests.support.fabric import REPO
from tests.support.ports import free_port
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

MANAGEMENT_TOKEN = "management-7f3c9e"
INFERENCE_TOKEN = "inference-1b2d4a"
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
MESSAGES = {"mmesh.ModelMesh": mm, "meshserve.admin.MeshAdmin": admin, SERVICE: pb}


def _methods(service: str):
    """(path, request class, response class) of every method of a served service."""
    module = MESSAGES[service]
    for method in POOL.FindServiceByName(service).methods:
        yield (f"/{service}/{method.name}", getattr(module, method.input_type.name),
               getattr(module, method.output_type.name), method)


def test_every_method_of_every_served_service_is_classified():
    served = {SERVICE, *MANAGEMENT_SERVICES, *(s for s in HEALTH_SERVICES if s)}
    paths = [path for service in served - {"grpc.health.v1.Health"} for path, *_ in _methods(service)]
    paths += [f"/grpc.health.v1.Health/{m.name}" for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods]
    assert len(paths) > 20
    unclassified = [path for path in paths if path not in METHOD_PERMISSIONS]
    assert not unclassified, f"add these to mesh/api/auth/permissions.py: {unclassified}"
    management = [path for path, *_ in _methods("mmesh.ModelMesh")] + [path for path, *_ in _methods("meshserve.admin.MeshAdmin")]
    assert {METHOD_PERMISSIONS[path] for path in management} == {Permission.MANAGEMENT}


@dataclass
class Guarded:
    channel: grpc.aio.Channel
    rest: str
    port: int
    client: object
    keys: object


@pytest.fixture
async def guarded(fabric, tmp_path) -> AsyncIterator[Guarded]:
    management_file, inference_file = tmp_path / "management-tokens", tmp_path / "inference-tokens"
    management_file.write_text(f"# the old token goes once every client has the new one\nretired-token\n{MANAGEMENT_TOKEN}\n")
    inference_file.write_text(f"{INFERENCE_TOKEN}\n")
    authorizer = build_authorizer(AuthSettings(management_token_file=str(management_file),
                                               inference_token_file=str(inference_file)))
    settings = RouterSettings(host="127.0.0.1", port=0, rest_port=free_port(), metrics_port=0)
    async with RuntimeClients() as runtimes, \
            build_management(fabric.client, fabric.keys, fabric.view, runtimes, FabricTimings()) as management:
        running = await start_router(settings, fabric.view, management.cache_miss, management=management,
                                     authorizer=authorizer)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield Guarded(channel, f"http://127.0.0.1:{running.rest_port}", running.port, fabric.client, fabric.keys)
        finally:
            await running.stop(0)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _code(channel, path, request, response_class, metadata=None) -> grpc.StatusCode:
    call = channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                               response_deserializer=response_class.FromString)
    try:
        await call(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _etcd_state(guarded: Guarded) -> list[tuple[str, int]]:
    _, kvs = await guarded.client.get_prefix(guarded.keys.prefix)
    return sorted((kv.key, kv.mod_revision) for kv in kvs)


# Requests that would each write something if they were let through.
WRITES = {
    "registerModel": mm.RegisterModelRequest(modelId="intruder", modelInfo=mm.ModelInfo(type="onnx", path="s3://b/x")),
    "unregisterModel": mm.UnregisterModelRequest(modelId="kept"),
    "ensureLoaded": mm.EnsureLoadedRequest(modelId="kept", lastUsedTime=2**40),
    "setVModel": mm.SetVModelRequest(vModelId="kept-alias", targetModelId="intruder",
                                     modelInfo=mm.ModelInfo(type="onnx", path="s3://b/x")),
    "deleteVModel": mm.DeleteVModelRequest(vModelId="kept-alias"),
}


async def test_every_management_method_is_refused_without_a_management_token(guarded):
    management = _bearer(MANAGEMENT_TOKEN)
    kept = mm.RegisterModelRequest(modelId="kept", modelInfo=mm.ModelInfo(type="onnx", path="s3://b/kept"))
    assert await _code(guarded.channel, "/mmesh.ModelMesh/registerModel", kept, mm.ModelStatusInfo, management) == grpc.StatusCode.OK
    alias = mm.SetVModelRequest(vModelId="kept-alias", targetModelId="kept")
    assert await _code(guarded.channel, "/mmesh.ModelMesh/setVModel", alias, mm.VModelStatusInfo, management) == grpc.StatusCode.OK
    before = await _etcd_state(guarded)
    methods = [*_methods("mmesh.ModelMesh"), *_methods("meshserve.admin.MeshAdmin"),
               *(m for m in _methods(SERVICE) if m[0].split("/")[-1].startswith("Repository"))]
    for path, request_class, response_class, method in methods:
        request = WRITES.get(method.name, request_class())
        for metadata, expected in ((None, UNAUTHENTICATED), (_bearer("a-guess"), UNAUTHENTICATED),
                                   ((("authorization", f"Basic {MANAGEMENT_TOKEN}"),), UNAUTHENTICATED),
                                   (_bearer(INFERENCE_TOKEN), PERMISSION_DENIED)):
            code = await _code(guarded.channel, path, request, response_class, metadata)
            assert code == expected, (path, metadata, code)
    assert await _etcd_state(guarded) == before  # nothing was written
    for path, request_class, response_class, _ in methods:  # the management token passes each one
        assert await _code(guarded.channel, path, request_class(), response_class, management) not in (
            UNAUTHENTICATED, PERMISSION_DENIED), path


async def test_inference_needs_an_inference_or_management_token_and_health_is_open(guarded):
    infer = pb.ModelInferRequest(model_name="ghost")
    path = f"/{SERVICE}/ModelInfer"
    assert await _code(guarded.channel, path, infer, pb.ModelInferResponse) == UNAUTHENTICATED
    assert await _code(guarded.channel, path, infer, pb.ModelInferResponse, _bearer("a-guess")) == UNAUTHENTICATED
    for token in (INFERENCE_TOKEN, MANAGEMENT_TOKEN):  # let through: the router answers for the model
        assert await _code(guarded.channel, path, infer, pb.ModelInferResponse, _bearer(token)) == grpc.StatusCode.NOT_FOUND
    stream = guarded.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer",
                                           request_serializer=pb.ModelInferRequest.SerializeToString,
                                           response_deserializer=pb.ModelStreamInferResponse.FromString)
    call = stream(iter([infer]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == UNAUTHENTICATED
    assert await _code(guarded.channel, f"/{SERVICE}/ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse) == grpc.StatusCode.OK
    health = health_pb2_grpc.HealthStub(guarded.channel)
    await async_wait_until(lambda: _serving(health), 10, "the router to answer SERVING without a token")


async def _serving(health) -> bool:
    reply = await health.Check(health_pb2.HealthCheckRequest(service="mmesh.ModelMesh"), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()}


async def test_rest_inference_and_the_dashboard_are_guarded_too(guarded):
    bearer = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
    async with aiohttp.ClientSession(guarded.rest) as session:
        async with session.get("/v2/health/live") as response:
            assert response.status == 200
        for method, path in (("POST", "/v2/models/ghost/infer"), ("GET", "/v2/models/ghost"), ("GET", "/v1/models")):
            async with session.request(method, path, json={"inputs": []}) as response:
                assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer", path
                assert "inference permission" in (await response.json())["error"]
        async with session.post("/v2/models/ghost/infer", json={"inputs": []}, headers=bearer) as response:
            assert response.status not in (401, 403)  # past auth: the router's own answer for the body
        async with session.get("/dashboard/api/snapshot") as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
        for headers in (bearer, _basic(INFERENCE_TOKEN)):
            async with session.get("/dashboard/api/snapshot", headers=headers) as response:
                assert response.status == 403
        for headers in ({"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}, _basic(MANAGEMENT_TOKEN)):
            async with session.get("/dashboard/api/snapshot", headers=headers) as response:
                assert response.status == 200 and "models" in await response.json()


async def test_a_method_no_table_classifies_is_refused(tmp_path):
    (tmp_path / "m").write_text(f"{MANAGEMENT_TOKEN}\n")
    authorizer = build_authorizer(AuthSettings(management_token_file=str(tmp_path / "m")))
    server = grpc.aio.server(interceptors=[AuthInterceptor(authorizer)])

    async def echo(body: bytes, context) -> bytes:
        return body

    # A stand-in for a service added later without a line in the permission table.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "meshserve.test.Unlisted", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/meshserve.test.Unlisted/Echo")(b"x", metadata=_bearer(MANAGEMENT_TOKEN), timeout=5)
            assert refused.value.code() == PERMISSION_DENIED and "not classified" in refused.value.details()
    finally:
        await server.stop(None)


async def _meshserve(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_sends_its_token_and_says_in_one_line_when_it_is_refused(guarded, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    router = ["--router", f"127.0.0.1:{guarded.port}"]
    code, _, err = await _meshserve("list", *router, env=env)
    assert code == 1 and err.count("\n") == 1 and "needs a valid token" in err and "--token-file" in err, err
    code, _, err = await _meshserve("list", *router, env={**env, "MESHSERVE_TOKEN": INFERENCE_TOKEN})
    assert code == 1 and err.count("\n") == 1 and "does not allow" in err, err
    token_file = tmp_path / "my-token"
    token_file.write_text(f"{MANAGEMENT_TOKEN}\n")
    code, out, err = await _meshserve("register", "cli-model", "--type", "onnx", "--uri", "s3://bucket/m",
                                      "--token-file", str(token_file), *router, env=env)
    assert code == 0, err
    code, out, err = await _meshserve("list", *router, env={**env, "MESHSERVE_TOKEN_FILE": str(token_file)})
    assert code == 0 and "cli-model" in out, err


@pytest.mark.parametrize("command", [("router", "--workers", "2"), ("controller",)], ids=["router-workers", "controller"])
async def test_a_token_file_that_cannot_be_read_stops_the_process_with_one_line(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    missing = tmp_path / "no-such-file"
    code, _, err = await _meshserve(*command, "--etcd", f"127.0.0.1:{free_port()}", "--port", "0",
                                    "--metrics-port", "0", "--management-token-file", str(missing), env=env)
    lines = [line for line in err.splitlines() if line.startswith("meshserve ")]
    assert code == 1 and lines and all(f"cannot read token file {missing}" in line for line in lines), err
    assert "Traceback" not in err
