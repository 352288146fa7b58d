"""Fuzzing the management API (mmesh.ModelMesh) on a real gRPC server over a real etcd.

Random sequences of calls with odd ids (empty, '/', control characters, very long),
odd model info (unknown types, keys that are not JSON) and odd flags: each call answers
OK or a status that names the caller's mistake or the fabric's state, never INTERNAL or
UNKNOWN; a model the API registered reads back until it is unregistered. Few examples
(each call is an etcd round trip): hypothesis draws the sequences, the test plays them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import model_mesh_pb2 as mm
from tests.mesh.api.test_model_mesh import Api, _api

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

# What a call may answer besides OK: a mistake of the caller's, or the state of the fabric
# (no instance runs here, so loads find no room or no runtime).
EXPECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}



def _mostly(plain, odd, share: int = 7):
    """`plain` in `share` draws of 10, else `odd`: calls then meet each other's models."""
    return st.integers(0, 9).flatmap(lambda n: plain if n < share else odd)


ids = _mostly(st.sampled_from(["m", "n", "v", "w"]),
              st.one_of(st.text(max_size=12), st.sampled_from(["", "a/b", "../m", "a\x00b", "\t", " m", "m\n"]),
                        st.text(min_size=300, max_size=2000)))
infos = st.builds(mm.ModelInfo, type=_mostly(st.just("onnx"), st.text(max_size=8)),
                  path=_mostly(st.just("s3://b/m"), st.text(max_size=20)),
                  key=_mostly(st.just(""), st.one_of(st.just('{"bucket": "b"}'), st.text(max_size=12))))
times = st.integers(0, 2**64 - 1)
calls = st.one_of(
    st.builds(lambda i, info, load, t, has_info: ("registerModel", mm.RegisterModelRequest(
        modelId=i, modelInfo=info if has_info else None, loadNow=load, sync=False, lastUsedTime=t)),
        ids, infos, st.booleans(), times, _mostly(st.just(True), st.just(False), 8)),
    st.builds(lambda i: ("unregisterModel", mm.UnregisterModelRequest(modelId=i)), ids),
    st.builds(lambda i: ("getModelStatus", mm.GetStatusRequest(modelId=i)), ids),
    st.builds(lambda i, t: ("ensureLoaded", mm.EnsureLoadedRequest(modelId=i, lastUsedTime=t, sync=False)), ids, times),
    st.builds(lambda v, target, info, flags, owner: ("setVModel", mm.SetVModelRequest(
        vModelId=v, targetModelId=target, modelInfo=info, updateOnly=flags[0], autoDeleteTargetModel=flags[1],
        force=flags[2], loadNow=False, sync=False, owner=owner)),
        ids, ids, st.one_of(st.none(), infos), st.tuples(st.booleans(), st.booleans(), st.booleans()),
        st.one_of(st.just(""), st.text(max_size=6))),
    st.builds(lambda v, owner: ("deleteVModel", mm.DeleteVModelRequest(vModelId=v, owner=owner)), ids,
              st.one_of(st.just(""), st.text(max_size=6))),
    st.builds(lambda v: ("getVModelStatus", mm.GetVModelStatusRequest(vModelId=v)), ids),
)


def _sequences(count: int) -> list[list[tuple[str, object]]]:
    """`count` call sequences drawn by hypothesis (played afterwards: the calls are async)."""
    drawn: list[list[tuple[str, object]]] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(calls, min_size=1, max_size=6))
    def draw(sequence):
        drawn.append(sequence)

    draw()
    return drawn


@pytest.fixture
async def api(etcd, keys) -> AsyncIterator[Api]:
    async for made in _api(etcd, keys):
        yield made


async def test_any_call_sequence_answers_ok_or_an_expected_status(api):
    played = 0
    for sequence in _sequences(60):
        registered: set[str] = set()
        for method, request in sequence:
            played += 1
            try:
                await getattr(api.stub, method)(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                assert error.code() in EXPECTED, (method, request, error.code(), error.details())
                assert error.details(), (method, request)
                continue
            if method == "registerModel":
                registered.add(request.modelId)
            elif method == "unregisterModel":
                registered.discard(request.modelId)
        if any(method in ("setVModel", "deleteVModel") for method, _ in sequence):
            continue  # a vmodel may take its target model with it (autoDeleteTargetModel)
        for model_id in registered:
            status = await api.stub.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
            assert status.status != mm.ModelStatusInfo.NOT_FOUND, model_id
    assert played >= 60
