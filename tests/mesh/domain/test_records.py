"""Registry records round-trip through JSON, reject malformed documents, and map to placement views."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.domain.records import (
    CopyClaim, HeldCopy, InstanceRecord, LoadFailure, ModelRecord, RecordError, VModelRecord, decode, encode,
    formats_of,
)

ids = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12)
times = st.integers(min_value=0, max_value=2**53)
sizes = st.integers(min_value=0, max_value=2**50)

model_records = st.builds(
    ModelRecord, model_id=ids, model_type=st.sampled_from(["onnx", "pytorch"]), storage_path=st.text(max_size=30),
    storage_key=st.text(max_size=30), registered_ms=times, last_used_ms=times, size_estimate_bytes=sizes,
    device_size_estimate_bytes=sizes,
    copies=st.dictionaries(ids, st.builds(CopyClaim, state=st.sampled_from(["loading", "loaded"]), since_ms=times), max_size=4),
    failures=st.dictionaries(ids, st.builds(LoadFailure, reason=st.text(max_size=40), time_ms=times, expires_ms=times), max_size=3),
    vmodel_refs=st.lists(ids, max_size=3).map(tuple), auto_delete=st.booleans(),
)
instance_records = st.builds(
    InstanceRecord, instance_id=ids, address=st.just("127.0.0.1:8085"), capacity_bytes=sizes, used_bytes=sizes,
    loading_bytes=sizes, zone=ids, model_types=st.lists(ids, max_size=3).map(tuple), version=ids,
    labels=st.lists(st.sampled_from(["mt:onnx", "mt:onnx:1", "rt:triton-2.x", "pv:grpc-v2"]), max_size=4, unique=True).map(tuple),
    shutting_down=st.booleans(), request_rate_per_min=st.floats(min_value=0, max_value=1e9),
    copies=st.dictionaries(ids, st.builds(HeldCopy, size_bytes=sizes, last_used_ms=times,
                                          in_flight=st.integers(0, 1000), loading=st.booleans(),
                                          device_bytes=sizes), max_size=5),
    published_ms=times, device_capacity_bytes=sizes, device_used_bytes=sizes,
)


@settings(max_examples=80, deadline=None)
@given(record=model_records)
def test_model_record_round_trip(record):
    assert decode(ModelRecord, encode(record)) == record


@settings(max_examples=80, deadline=None)
@given(record=instance_records)
def test_instance_record_round_trip(record):
    assert decode(InstanceRecord, encode(record)) == record


def test_vmodel_record_round_trip_and_transition():
    record = VModelRecord("v", active_model_id="a", target_model_id="b", owner="ksp", auto_delete_target=True)
    assert decode(VModelRecord, encode(record)) == record
    assert record.transitioning and not VModelRecord("v", "a", "a").transitioning


def test_unknown_fields_are_ignored_for_forward_compatibility():
    document = json.loads(encode(ModelRecord("m", "onnx", "s3://b/m")))
    document["added_by_a_newer_version"] = {"x": 1}
    assert decode(ModelRecord, json.dumps(document)).model_id == "m"


@pytest.mark.parametrize("data, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"model_type": "onnx", "storage_path": "p"}', "model_id"),
    (b'{"model_id": 7, "model_type": "onnx", "storage_path": "p"}', "'model_id' must be str"),
    (b'{"model_id": "m", "model_type": "onnx", "storage_path": "p", "last_used_ms": true}', "not a boolean"),
    (b'{"model_id": "m", "model_type": "onnx", "storage_path": "p", "copies": []}', "'copies' must be an object"),
    (b'{"model_id": "m", "model_type": "onnx", "storage_path": "p", "vmodel_refs": "v"}', "list of strings"),
])
def test_malformed_documents_name_the_key_and_the_problem(data, message):
    with pytest.raises(RecordError, match=message) as caught:
        decode(ModelRecord, data, key="/meshserve/f/models/m")
    assert "/meshserve/f/models/m" in str(caught.value)


def test_instance_record_maps_to_the_placement_view():
    record = InstanceRecord("i1", "h:1", capacity_bytes=100, used_bytes=40, loading_bytes=10, zone="z1",
                            labels=("mt:onnx", "rt:triton-2.x"),
                            copies={"a": HeldCopy(40, 5, in_flight=2), "b": HeldCopy(10, 9, loading=True)})
    view = record.to_view()
    assert view.free_bytes == 50 and view.labels == frozenset({"mt:onnx", "rt:triton-2.x"}) and view.loads_in_progress == 1
    assert view.copies["a"].in_flight == 2
    assert record.lru_last_used_ms == 5


def test_device_memory_maps_to_the_view_and_records_without_it_are_of_instances_without_a_gpu():
    record = InstanceRecord("i1", "h:1", capacity_bytes=100, used_bytes=40, device_capacity_bytes=1000,
                            device_used_bytes=300, copies={"a": HeldCopy(40, 5, device_bytes=300)})
    view = record.to_view()
    assert view.has_device and view.device_free_bytes == 700 and view.copies["a"].device_bytes == 300
    assert view.free_bytes == 60  # host memory apart
    model = ModelRecord("m", "onnx", "p", size_estimate_bytes=10, device_size_estimate_bytes=200)
    assert model.to_view().device_size_estimate_bytes == 200
    # Written by an agent older than GPU memory (or of an instance without one): no device fields.
    document = json.loads(encode(record))
    for name in ("device_capacity_bytes", "device_used_bytes"):
        del document[name]
    del document["copies"]["a"]["device_bytes"]
    older = decode(InstanceRecord, json.dumps(document)).to_view()
    assert not older.has_device and older.device_free_bytes == 0 and older.copies["a"].device_bytes == 0
    model_document = json.loads(encode(model))
    del model_document["device_size_estimate_bytes"]
    assert decode(ModelRecord, json.dumps(model_document)).device_size_estimate_bytes == 0
    with pytest.raises(RecordError, match="device_used_bytes"):
        decode(InstanceRecord, json.dumps({**json.loads(encode(record)), "device_used_bytes": "300"}))


def test_labels_round_trip_and_a_record_written_before_labels_advertises_its_types():
    record = InstanceRecord("i1", "h:1", 100, model_types=formats_of(("mt:onnx", "mt:onnx:1", "pv:grpc-v2", "mt:pytorch")),
                            labels=("mt:onnx", "mt:onnx:1", "pv:grpc-v2", "mt:pytorch"))
    assert record.model_types == ("onnx", "pytorch")  # what an older reader matches a model's type against
    document = json.loads(encode(record))
    assert document["labels"] == ["mt:onnx", "mt:onnx:1", "pv:grpc-v2", "mt:pytorch"]
    assert decode(InstanceRecord, json.dumps(document)) == record
    # A record from an agent older than labels: its model types stand for mt:<type>.
    del document["labels"]
    older = decode(InstanceRecord, json.dumps(document))
    assert older.labels == () and older.to_view().labels == frozenset({"mt:onnx", "mt:pytorch"})
    assert ModelRecord("m", "onnx:1", "p").to_view().labels <= older.to_view().labels
    assert not ModelRecord("m", "mt:onnx|pv:grpc-v2", "p").to_view().labels <= older.to_view().labels


def test_model_record_view_and_failure_expiry():
    record = ModelRecord("m", "onnx", "p", last_used_ms=0, size_estimate_bytes=7,
                         copies={"i1": CopyClaim("loaded", 1)},
                         failures={"i2": LoadFailure("corrupt", 10, expires_ms=100), "i3": LoadFailure("x", 10, 50)})
    view = record.to_view(rate_per_min=3.0)
    assert view.last_used_ms is None and view.recorded_instance_ids == frozenset({"i1"}) and view.rate_per_min == 3.0
    assert set(record.live_failures(now_ms=60)) == {"i2"}
