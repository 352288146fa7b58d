"""The .proto sources stay wire-compatible with tritonclient, and the generated modules stay fresh."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from protos import generate
from protos import grpc_service_pb2, model_config_pb2, model_mesh_pb2, model_runtime_pb2


def test_generated_modules_are_fresh():
    assert generate.main(["--check"]) == 0, "run `make protos` and commit the result"


def _messages(file_descriptor):
    stack = list(file_descriptor.message_types_by_name.values())
    while stack:
        message = stack.pop()
        yield message
        stack.extend(message.nested_types)


def _triton_message(full_name):
    for module in (triton_service, triton_config):
        try:
            return module.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    raise AssertionError(f"tritonclient has no message {full_name}")


@pytest.mark.parametrize("ours", [grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR], ids=lambda d: d.name)
def test_every_field_matches_tritonclient(ours):
    checked = 0
    for message in _messages(ours):
        theirs = _triton_message(message.full_name)
        for field in message.fields:
            other = theirs.fields_by_name.get(field.name)
            assert other is not None, f"{message.full_name}.{field.name} is not in tritonclient"
            assert (field.number, field.type) == (other.number, other.type), f"{message.full_name}.{field.name}"
            assert (field.message_type.full_name if field.message_type else None) == (
                other.message_type.full_name if other.message_type else None
            ), f"{message.full_name}.{field.name} message type"
            assert field.is_repeated == other.is_repeated, f"{message.full_name}.{field.name} label"
            checked += 1
    assert checked >= 15  # the test looked at something


def test_datatype_enum_matches_tritonclient():
    ours = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    theirs = triton_config.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def test_service_methods_match_tritonclient():
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert method.server_streaming == other.server_streaming


def test_mmesh_field_numbers_follow_the_wire_tables():
    load = model_runtime_pb2.LoadModelRequest.DESCRIPTOR.fields_by_name
    assert [load[n].number for n in ("modelId", "modelType", "modelPath", "modelKey")] == [1, 2, 3, 4]
    status = model_runtime_pb2.RuntimeStatusResponse.DESCRIPTOR.fields_by_name
    assert status["methodInfos"].number == 8 and status["allowAnyMethod"].number == 10
    vmodel = model_mesh_pb2.SetVModelRequest.DESCRIPTOR.fields_by_name
    assert vmodel["expectedTargetModelId"].number == 9 and vmodel["owner"].number == 10
    copy = model_mesh_pb2.ModelStatusInfo.ModelCopyInfo.DESCRIPTOR.fields_by_name
    assert copy["time"].type == copy["time"].TYPE_UINT64
