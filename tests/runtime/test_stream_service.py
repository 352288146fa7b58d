"""meshserve.stream.v1.InferenceStream on a real runtime process, spoken at the frame level
(as a router does): the open's header, batches, ids, headers, per-call errors and limits."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import meshserve_stream_pb2 as spb

CALLS = "/meshserve.stream.v1.InferenceStream/Calls"


@pytest.fixture(scope="module")
def loaded(runtime, model_store):
    runtime.load("add", model_store["add"], "onnx")
    return runtime


def _request(name: str, value: float = 1.0) -> bytes:
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full(4, value, dtype=np.float32).tobytes())
    return request.SerializeToString()


def _y(body: bytes) -> list[float]:
    response = pb.ModelInferResponse.FromString(body)
    names = [o.name for o in response.outputs]
    return np.frombuffer(response.raw_output_contents[names.index("y")], dtype=np.float32).tolist()


async def _exchange(address: str, batches: list[spb.CallBatch], expected: int, metadata=()) -> tuple[dict, dict]:
    """Send the batches, read until `expected` replies came; (replies by id, the open's headers)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(CALLS, request_serializer=spb.CallBatch.SerializeToString,
                                     response_deserializer=spb.ReplyBatch.FromString)(metadata=metadata, timeout=30)
        opened = dict(await call.initial_metadata())
        for batch in batches:
            await call.write(batch)
        replies = {}
        while len(replies) < expected:
            batch = await call.read()
            assert batch is not grpc.aio.EOF
            replies.update({reply.id: reply for reply in batch.replies})
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # half-closed with nothing running: the stream ends
        assert await call.code() == grpc.StatusCode.OK
    return replies, opened


async def test_a_batch_of_calls_is_answered_by_id(loaded):
    batch = spb.CallBatch(calls=[spb.CallFrame(id=7, body=_request("add", 1.0), timeout_us=10_000_000),
                                 spb.CallFrame(id=3, body=_request("add", 5.0))])
    replies, opened = await _exchange(loaded.address, [batch], 2)
    assert opened["meshserve-stream"] == "v1"  # the router writes nothing before it sees this
    assert (replies[7].code, _y(replies[7].body)) == (0, [2.0] * 4)
    assert (replies[3].code, _y(replies[3].body)) == (0, [6.0] * 4)


async def test_the_model_id_header_names_a_request_without_a_name(loaded):
    frame = spb.CallFrame(id=1, body=_request(""), metadata=[spb.Header(key="mm-model-id", value="add")])
    nameless = spb.CallFrame(id=2, body=_request(""))
    replies, _ = await _exchange(loaded.address, [spb.CallBatch(calls=[frame, nameless])], 2)
    assert (replies[1].code, _y(replies[1].body)) == (0, [2.0] * 4)
    assert replies[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no model name" in replies[2].message


async def test_each_call_fails_alone_with_the_unary_status(loaded):
    calls = [spb.CallFrame(id=1, body=b"\xff\xff\xff"),  # not a ModelInferRequest
             spb.CallFrame(id=2, body=_request("nope")),
             spb.CallFrame(id=3, body=_request("add")),
             spb.CallFrame(id=99, cancel=True)]  # a cancel for no call: ignored
    replies, _ = await _exchange(loaded.address, [spb.CallBatch(calls=calls)], 3)
    assert replies[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[2].code == grpc.StatusCode.NOT_FOUND.value[0] and "nope" in replies[2].message
    assert (replies[3].code, _y(replies[3].body)) == (0, [2.0] * 4)
    assert set(replies) == {1, 2, 3}


async def test_a_reply_over_the_callers_limit_is_refused_alone(loaded):
    big = pb.ModelInferRequest(model_name="add")
    big.inputs.add(name="x", datatype="FP32", shape=[1000, 4])
    big.raw_input_contents.append(np.zeros((1000, 4), dtype=np.float32).tobytes())
    calls = [spb.CallFrame(id=1, body=big.SerializeToString()), spb.CallFrame(id=2, body=_request("add"))]
    replies, _ = await _exchange(loaded.address, [spb.CallBatch(calls=calls)], 2,
                                 metadata=(("meshserve-max-reply-bytes", "10000"),))
    assert replies[1].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "larger than max" in replies[1].message
    assert (replies[2].code, _y(replies[2].body)) == (0, [2.0] * 4)
