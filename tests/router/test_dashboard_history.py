"""The dashboard's pure parts: samples, the ring buffer, loads and evictions from records."""

from __future__ import annotations

from mesh.domain.records import HeldCopy, InstanceRecord
from protos import mesh_admin_pb2 as admin
from router.dashboard.history import History, Sample, copy_churn, history_length, make_sample
from router.traffic import Observers, TrafficCounters, TrafficTotals


def _instance(instance_id: str, **copies: bool) -> InstanceRecord:
    """`copies`: model id -> loading?"""
    return InstanceRecord(instance_id, "127.0.0.1:1", capacity_bytes=100,
                          copies={m: HeldCopy(size_bytes=10, last_used_ms=1, loading=loading) for m, loading in copies.items()})


def test_history_keeps_the_newest_samples_of_one_window():
    assert history_length(10.0) == 360 and history_length(0.5, 10) == 20
    history = History(3)
    for t in range(5):
        history.add(Sample(t, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert [s.time_ms for s in history.samples()] == [2, 3, 4] and history.length == 3
    assert [d["time_ms"] for d in history.as_json()] == [2, 3, 4] and history.as_json()[0] == history.samples()[0].to_json()


def test_a_sample_is_the_difference_of_two_readings():
    status = admin.FabricStatus(instances=[admin.InstanceStatus(id="a", request_rate_per_min=6.0, loading_bytes=5),
                                           admin.InstanceStatus(id="b", request_rate_per_min=4.0, loading_bytes=1)],
                                used_bytes=30, capacity_bytes=200)
    sample = make_sample(1000, 10.0, status, TrafficTotals(5, 1, 2, 1.0, 0), TrafficTotals(25, 3, 6, 3.0, 1), 4, 1)
    assert sample.requests == 20 and sample.requests_per_min == 120.0 and sample.errors_per_min == 12.0
    assert sample.cache_misses == 4 and sample.miss_delay_ms == 500.0
    assert sample.fabric_rate_per_min == 10.0 and sample.loading_bytes == 6
    assert (sample.loads, sample.evictions, sample.used_bytes, sample.capacity_bytes) == (4, 1, 30, 200)
    quiet = make_sample(1000, 10.0, status, TrafficTotals(5, 0, 2, 1.0, 0), TrafficTotals(5, 0, 2, 1.0, 0), 0, 0)
    assert quiet.miss_delay_ms == 0.0 and quiet.requests_per_min == 0.0


def test_copy_churn_counts_loads_and_evictions_of_live_instances():
    a, b = _instance("a", m1=False, m2=True), _instance("b", m3=False)
    before = {"a": a, "b": b}
    # m2 finished loading on a, m1 was evicted; b expired (its copy was lost, not evicted); c came with m4
    after = {"a": _instance("a", m2=False), "c": _instance("c", m4=False)}
    assert copy_churn(before, after, lambda m: True) == (2, 1)
    # an unregistered model's copy is unloaded, not evicted
    assert copy_churn(before, after, lambda m: m != "m1") == (2, 0)
    # the same record objects: nothing changed, nothing looked at
    assert copy_churn(before, dict(before), lambda m: True) == (0, 0)
    # a copy still loading is not a load yet
    assert copy_churn({}, {"d": _instance("d", m5=True)}, lambda m: True) == (0, 0)


def test_traffic_counters_through_observers():
    class Other:
        per_model = True

        def __init__(self):
            self.calls = []

        def observe_call(self, *args, **kwargs):
            self.calls.append(("call", args, kwargs))

        def cache_miss(self, *args, **kwargs):
            self.calls.append(("miss", args))

        def retried(self, reason):
            self.calls.append(("retry", reason))

    counters, other = TrafficCounters(), Other()
    observers = Observers(other, counters)
    assert observers.per_model and not Observers(counters).per_model
    observers.observe_call("ModelInfer", "OK", 0.1, 10, 20, model_id="m", vmodel_id="")
    observers.observe_call("ModelInfer", "NOT_FOUND", 0.1)
    observers.cache_miss(0.25, "m")
    observers.cache_miss(0.75)
    observers.retried("unavailable")
    assert counters.totals() == TrafficTotals(requests=2, errors=1, cache_misses=2, miss_seconds=1.0, retries=1)
    assert other.calls[0] == ("call", ("ModelInfer", "OK", 0.1, 10, 20), {"model_id": "m", "vmodel_id": ""})
    assert len(other.calls) == 5
