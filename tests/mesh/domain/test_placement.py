"""Tests of mesh.domain.placement: instance choice, scaling and re-homing over snapshots."""

from __future__ import annotations

import random
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.domain.lru import evictable_bytes
from mesh.domain.placement import (
    Choice,
    CopyView,
    InstanceView,
    ModelView,
    NoFit,
    PlacementConfig,
    Snapshot,
    choose_instance,
    fleet_free_bytes,
    format_labels,
    lost_copies,
    model_labels,
    parse_labels,
    plan_rehoming,
    plan_scaling,
    supports,
    with_load,
    without_copy,
)

MIN = 60_000
T = frozenset({"mt:onnx"})


def inst(id: str, cap: int = 100, *, zone: str = "z1", copies: dict[str, CopyView] | None = None,
         types: frozenset[str] = T, shutting_down: bool = False, rate: float = 0.0,
         extra_used: int = 0) -> InstanceView:
    """An instance whose used/loading bytes agree with its copies."""
    copies = copies or {}
    used = sum(c.size_bytes for c in copies.values() if not c.loading) + extra_used
    loading = sum(c.size_bytes for c in copies.values() if c.loading)
    return InstanceView(id, cap, used, loading, zone, types, copies, rate, shutting_down)


def model(id: str = "m", size: int = 10, *, last: int | None = None, rate: float = 0.0,
          type: str = "onnx") -> ModelView:
    return ModelView(id, type, size, last, rate)


# -- choose_instance: unit -------------------------------------------------------------


def test_prefers_most_free_space() -> None:
    a = inst("a", copies={"x": CopyView(50, 0)})
    b = inst("b", copies={"y": CopyView(20, 0)})
    assert choose_instance(model(), [a, b]) == Choice("b")


def test_loads_in_progress_count_against_free_space() -> None:
    a = inst("a", copies={"x": CopyView(30, 0, loading=True)})
    b = inst("b", copies={"y": CopyView(20, 0)})
    assert choose_instance(model(), [a, b]) == Choice("b")
    # A full-by-loading instance cannot take it even though nothing is "used" yet.
    full = inst("c", copies={"x": CopyView(95, 0, loading=True)})
    assert isinstance(choose_instance(model(), [full]), NoFit)


# -- GPU memory, apart from host memory ------------------------------------------------------


def gpu(id: str, cap: int = 100, device_cap: int = 100, *, copies: dict[str, CopyView] | None = None) -> InstanceView:
    """An instance with a GPU, its host and device use agreeing with its copies."""
    plain = inst(id, cap, copies=copies)
    device_used = sum(c.device_bytes for c in (copies or {}).values())
    return replace(plain, device_capacity_bytes=device_cap, device_used_bytes=device_used)


def gpu_model(id: str = "g", size: int = 10, device: int = 60) -> ModelView:
    return replace(model(id, size), device_size_estimate_bytes=device)


def test_a_model_with_device_bytes_fits_only_where_the_gpu_and_the_host_both_have_room() -> None:
    device_full = gpu("a", copies={"x": CopyView(5, 0, device_bytes=50, in_flight=1)})  # 50 free on the GPU
    host_full = gpu("b", copies={"y": CopyView(95, 0, in_flight=1)})  # GPU empty, 5 free on the host
    result = choose_instance(gpu_model(), [device_full, host_full])
    assert isinstance(result, NoFit) and result.for_room and "60 on a GPU" in result.reason
    roomy = gpu("c")
    assert choose_instance(gpu_model(), [device_full, host_full, roomy]) == Choice("c")


def test_a_model_with_device_bytes_prefers_the_gpu_with_most_free_device_memory() -> None:
    more_host = gpu("a", cap=1000, copies={"x": CopyView(10, 0, device_bytes=30)})
    more_device = gpu("b", cap=100, device_cap=1000)
    assert choose_instance(gpu_model(), [more_host, more_device]) == Choice("b")
    assert choose_instance(model(), [more_host, more_device]) == Choice("a")  # host only: host free decides


def test_eviction_frees_the_kind_that_is_short() -> None:
    copies = {"old-cpu": CopyView(30, 100), "gpu-1": CopyView(5, 200, device_bytes=50),
              "gpu-2": CopyView(5, 300, device_bytes=40)}
    inst_ = gpu("a", copies=copies)  # host 60 free, GPU 10 free
    choice = choose_instance(gpu_model(device=40), [inst_])
    assert choice == Choice("a", ("gpu-1",))  # the older copy on the host would free no GPU bytes
    after = with_load(inst_, "g", 10, choice.evict, 400, device_bytes=40)
    assert after.device_used_bytes == 80 and after.copies["g"].device_bytes == 40 and after.loading_bytes == 10
    assert without_copy(after, "g").device_used_bytes == 40
    assert isinstance(choose_instance(gpu_model(device=101), [inst_]), NoFit)  # more than the whole GPU


def test_without_a_gpu_a_model_runs_on_the_cpu_and_all_its_bytes_are_host_bytes() -> None:
    cpu = inst("cpu", cap=100, copies={"x": CopyView(40, 0, in_flight=1)})  # 60 free
    assert choose_instance(gpu_model(size=10, device=40), [cpu]) == Choice("cpu")  # 50 of host memory
    assert isinstance(choose_instance(gpu_model(size=10, device=55), [cpu]), NoFit)  # 65 > 60
    after = with_load(cpu, "g", 10, (), 1, device_bytes=40)
    assert after.loading_bytes == 50 and after.device_used_bytes == 0 and after.copies["g"].device_bytes == 0


def test_scaling_and_rehoming_account_device_bytes_per_decision() -> None:
    hot = replace(gpu_model("g", device=60), last_used_ms=1000, rate_per_min=10_000.0)
    instances = [gpu("a", copies={"g": CopyView(10, 1000, device_bytes=60)}), gpu("b"), gpu("c", device_cap=50)]
    plan = plan_scaling(Snapshot(1000, tuple(instances), {"g": hot}), PlacementConfig(scale_up_rate_per_copy=2000))
    assert [a.instance_id for a in plan.adds] == ["b"]  # "c"'s GPU is too small; one more would not fit anywhere
    moved = plan_rehoming(Snapshot(1000, (gpu("b"), gpu("c", device_cap=50)), {"g": replace(hot, rate_per_min=0)}),
                          gone=[instances[0]])
    assert [r.choice for r in moved] == [Choice("b")]


def test_skips_unsupported_types_and_shutting_down_instances() -> None:
    wrong = inst("a", types=frozenset({"mt:pytorch"}))
    leaving = inst("b", shutting_down=True)
    result = choose_instance(model(), [wrong, leaving])
    assert isinstance(result, NoFit) and result.unsupported and not result.for_room
    assert "labels mt:onnx" in result.reason and "type 'onnx'" in result.reason
    assert choose_instance(model(), [wrong, leaving, inst("c", 20)]) == Choice("c")


def test_supported_but_excluded_or_holding_is_not_unsupported() -> None:
    holder = inst("a", copies={"m": CopyView(10, 0)})
    result = choose_instance(model(), [holder, inst("b")], exclude={"b"})
    assert isinstance(result, NoFit) and not result.unsupported and not result.for_room


# -- runtime labels ----------------------------------------------------------------------


@pytest.mark.parametrize("model_type, labels", [
    ("onnx", {"mt:onnx"}),
    ("ONNX", {"mt:onnx"}),
    ("onnx:1", {"mt:onnx"}),  # a plain type's version is the runtime's business, as before labels
    ("pytorch", {"mt:pytorch"}),
    ("mt:onnx", {"mt:onnx"}),
    ("mt:onnx:1", {"mt:onnx:1"}),
    ("rt:triton-2.x", {"rt:triton-2.x"}),
    ("mt:sklearn|pv:grpc-v2", {"mt:sklearn", "pv:grpc-v2"}),
    (" mt:sklearn | pv:grpc-v2 |", {"mt:sklearn", "pv:grpc-v2"}),
    ("", set()),
])
def test_model_labels(model_type: str, labels: set[str]) -> None:
    assert model_labels(model_type) == labels
    assert model(type=model_type).labels == labels


TRITON = frozenset({"rt:triton-2.x", "mt:onnx", "mt:onnx:1", "mt:pytorch", "pv:grpc-v2"})
MLSERVER = frozenset({"rt:mlserver-1.x", "mt:sklearn", "mt:xgboost", "pv:grpc-v2"})


@pytest.mark.parametrize("model_type, chosen", [
    ("onnx", "t"),
    ("mt:onnx:1", "t"),
    ("rt:triton-2.x", "t"),
    ("mt:sklearn|pv:grpc-v2", "m"),
    ("rt:mlserver-1.x|mt:xgboost", "m"),
])
def test_a_model_goes_only_where_every_label_of_its_type_is(model_type: str, chosen: str) -> None:
    fleet = [inst("t", types=TRITON), inst("m", types=MLSERVER)]
    assert choose_instance(model(type=model_type), fleet) == Choice(chosen)


@pytest.mark.parametrize("model_type", ["mt:onnx:2", "mt:sklearn|pv:grpc-v1", "rt:triton-2.x|mt:sklearn", "tensorflow"])
def test_a_model_no_instance_has_all_labels_for_is_unsupported(model_type: str) -> None:
    result = choose_instance(model(type=model_type), [inst("t", types=TRITON), inst("m", types=MLSERVER)])
    assert isinstance(result, NoFit) and result.unsupported
    assert format_labels(model_labels(model_type)) in result.reason


def test_labels_compare_case_insensitively_and_parse_from_a_list() -> None:
    assert supports(inst("a", types=frozenset({"MT:ONNX", "PV:grpc-v2"})), model(type="mt:onnx|pv:GRPC-V2"))
    assert parse_labels(" rt:Triton-2.x, ,pv:grpc-v2,rt:triton-2.x") == ("rt:triton-2.x", "pv:grpc-v2")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_labels("mt:onnx|pv:grpc-v2")


def test_scaling_adds_copies_only_where_the_labels_are() -> None:
    now = MIN
    fleet = (inst("t0", 1000, zone="z0", types=TRITON, copies={"hot": CopyView(10, now)}),
             inst("m1", 1000, zone="z1", types=MLSERVER), inst("t2", 1000, zone="z2", types=TRITON),
             inst("t3", 1000, zone="z3", types=TRITON))
    snap = Snapshot(now, fleet, {"hot": model("hot", last=now, rate=10**6, type="rt:triton-2.x")})
    assert sorted(a.instance_id for a in plan_scaling(snap).adds) == ["t2", "t3"]


def test_empty_type_set_supports_nothing() -> None:
    assert isinstance(choose_instance(model(), [inst("a", types=frozenset())]), NoFit)


def test_never_a_second_copy_on_the_same_instance() -> None:
    a = inst("a", copies={"m": CopyView(10, 0)})
    assert isinstance(choose_instance(model(), [a]), NoFit)


def test_prefers_a_zone_without_a_copy() -> None:
    holder = inst("a", zone="z1", copies={"m": CopyView(10, 0)})
    same_zone_roomy = inst("b", 1000, zone="z1")
    other_zone = inst("c", 100, zone="z2")
    assert choose_instance(model(), [holder, same_zone_roomy, other_zone]) == Choice("c")


def test_evicts_when_full_and_prefers_oldest_lru() -> None:
    a = inst("a", copies={"p": CopyView(95, 500)})
    b = inst("b", copies={"q": CopyView(95, 100)})
    assert choose_instance(model(), [a, b]) == Choice("b", ("q",))
    assert choose_instance(model(), [a, b], allow_eviction=False) == NoFit(
        "no instance has room for 'm' (10 bytes) in free space", for_room=True)


def test_free_space_beats_eviction() -> None:
    full_old = inst("a", copies={"p": CopyView(95, 0)})
    roomy = inst("b", copies={"q": CopyView(85, 10**9)})
    assert choose_instance(model(), [full_old, roomy]) == Choice("b")


def test_in_flight_copies_block_eviction() -> None:
    busy = inst("a", copies={"p": CopyView(95, 0, in_flight=3)})
    result = choose_instance(model(), [busy])
    assert isinstance(result, NoFit) and "even after evicting" in result.reason


def test_model_larger_than_any_instance() -> None:
    assert isinstance(choose_instance(model(size=101), [inst("a")]), NoFit)


def test_busy_loading_and_request_rate_break_ties() -> None:
    busy = inst("a", copies={"l1": CopyView(1, 0, loading=True),
                             "l2": CopyView(1, 0, loading=True)})
    calm = inst("b", extra_used=2)
    assert choose_instance(model(), [busy, calm]) == Choice("b")
    hot = inst("c", rate=500.0)
    cool = inst("d", rate=5.0)
    assert choose_instance(model(), [hot, cool]) == Choice("d")


def test_exclude() -> None:
    assert choose_instance(model(), [inst("a"), inst("b")], exclude={"a"}) == Choice("b")


def test_snapshot_views_are_read_only() -> None:
    i = inst("a", copies={"m": CopyView(10, 0)})
    with pytest.raises(TypeError):
        i.copies["n"] = CopyView(1, 1)  # type: ignore[index]
    with pytest.raises(AttributeError):
        i.used_bytes = 0  # type: ignore[misc]


# -- choose_instance: properties -------------------------------------------------------

IDS = [f"m{i}" for i in range(6)]

copy_st = st.builds(CopyView, size_bytes=st.integers(1, 60), last_used_ms=st.integers(0, 100),
                    in_flight=st.integers(0, 2), loading=st.booleans())


@st.composite
def instance_st(draw: st.DrawFn, id: str) -> InstanceView:
    copies = draw(st.dictionaries(st.sampled_from(IDS), copy_st, max_size=4))
    held = sum(c.size_bytes for c in copies.values())
    cap = draw(st.integers(max(1, held), held + 120))
    return inst(id, cap, zone=draw(st.sampled_from(["z1", "z2", "z3"])), copies=copies,
                types=draw(st.sampled_from([T, frozenset({"mt:onnx", "mt:pt", "pv:grpc-v2"}), frozenset({"mt:pt"})])),
                shutting_down=draw(st.booleans()), rate=draw(st.sampled_from([0.0, 10.0])))


fleet_st = st.integers(0, 6).flatmap(
    lambda n: st.tuples(*[instance_st(f"i{k}") for k in range(n)]))
model_st = st.builds(model, id=st.sampled_from(IDS), size=st.integers(1, 100),
                     type=st.sampled_from(["onnx", "pt", "mt:pt|pv:grpc-v2", "mt:sklearn"]))


@settings(max_examples=400, deadline=None)
@given(fleet=fleet_st, m=model_st, allow=st.booleans(), seed=st.integers(0, 1000))
def test_choice_always_fits_and_is_eligible(fleet: tuple[InstanceView, ...], m: ModelView,
                                            allow: bool, seed: int) -> None:
    result = choose_instance(m, list(fleet), allow_eviction=allow)
    shuffled = list(fleet)
    random.Random(seed).shuffle(shuffled)
    assert choose_instance(m, shuffled, allow_eviction=allow) == result  # order-independent
    eligible = [i for i in fleet if not i.shutting_down and m.labels <= i.labels
                and m.id not in i.copies]
    if isinstance(result, NoFit):
        assert result.unsupported == (not any(not i.shutting_down and m.labels <= i.labels for i in fleet))
        for i in eligible:  # refuses only when truly nothing fits
            room = i.free_bytes + (evictable_bytes(i.copies) if allow else 0)
            assert room < m.size_estimate_bytes or i.capacity_bytes < m.size_estimate_bytes
        return
    chosen = next(i for i in fleet if i.id == result.instance_id)
    assert chosen in eligible
    freed = sum(chosen.copies[v].size_bytes for v in result.evict)
    assert chosen.free_bytes + freed >= m.size_estimate_bytes
    assert all(chosen.copies[v].in_flight == 0 and not chosen.copies[v].loading
               for v in result.evict)
    assert allow or not result.evict
    if result.evict:
        # Eviction only when no eligible instance had the room free.
        assert all(i.free_bytes < m.size_estimate_bytes for i in eligible)
    # Zone spread: a zone without a copy is used whenever one qualifies at the same cost
    # (fitting in free space beats spreading; spreading beats everything after that).
    copy_zones = {i.zone for i in fleet if m.id in i.copies and not i.shutting_down}
    if chosen.zone in copy_zones:
        fresh = [i for i in eligible if i.zone not in copy_zones]
        for i in fresh:
            room = i.free_bytes + (evictable_bytes(i.copies) if allow and result.evict else 0)
            assert room < m.size_estimate_bytes


# -- plan_scaling ----------------------------------------------------------------------


def roomy_fleet(n: int = 3, cap: int = 1000, **copies_by_inst: dict[str, CopyView]
                ) -> tuple[InstanceView, ...]:
    return tuple(inst(f"i{k}", cap, zone=f"z{k}", copies=copies_by_inst.get(f"i{k}"))
                 for k in range(n))


def test_hot_model_gets_copies_until_per_copy_rate_is_under_threshold() -> None:
    now = 10 * MIN
    fleet = roomy_fleet(4, i0={"hot": CopyView(10, now)})
    snap = Snapshot(now, fleet, {"hot": model("hot", last=now, rate=5000.0)})
    plan = plan_scaling(snap)
    assert sorted(a.instance_id for a in plan.adds) == ["i1", "i2"]  # 3 copies: 1667/min
    assert all(a.model_id == "hot" for a in plan.adds) and not plan.removes


def test_threshold_is_configurable_and_capped() -> None:
    now = MIN
    fleet = roomy_fleet(4, i0={"hot": CopyView(10, now)})
    snap = Snapshot(now, fleet, {"hot": model("hot", last=now, rate=5000.0)})
    assert len(plan_scaling(snap, PlacementConfig(scale_up_rate_per_copy=600)).adds) == 3
    capped = PlacementConfig(scale_up_rate_per_copy=600, max_copies_per_model=2)
    assert len(plan_scaling(snap, capped).adds) == 1
    under = plan_scaling(snap, PlacementConfig(scale_up_rate_per_copy=6000)).adds
    assert [a.reason for a in under] == ["second copy for a model in regular use"]


def test_second_copy_for_regular_use_only_into_free_space() -> None:
    now = 100 * MIN
    fleet = roomy_fleet(2, i0={"reg": CopyView(10, now), "stale": CopyView(10, 0)})
    models = {"reg": model("reg", last=now - MIN, rate=5.0),
              "stale": model("stale", last=0, rate=0.0)}
    plan = plan_scaling(Snapshot(now, fleet, models))
    assert [(a.model_id, a.instance_id, a.evict) for a in plan.adds] == [("reg", "i1", ())]
    # With the second instance full of idle copies, no eviction is made for a second copy.
    full = (fleet[0], inst("i1", 100, zone="z1", copies={"x": CopyView(100, 0)}))
    plan = plan_scaling(Snapshot(now, full, models))
    assert not plan.adds and plan.skipped and plan.skipped[0][0] == "reg"


def test_no_scale_up_for_models_without_copies() -> None:
    snap = Snapshot(MIN, roomy_fleet(2), {"m": model("m", last=MIN, rate=10**6)})
    assert plan_scaling(snap).adds == ()


def test_cold_copies_removed_only_when_space_is_short() -> None:
    now = 1000 * MIN
    cold = {"cold": CopyView(40, now - 5 * MIN)}
    models = {"cold": model("cold", size=40, last=now - 5 * MIN, rate=3.0),
              "old": model("old", size=40, last=0, rate=0.0)}
    # Plenty of room: nothing is removed.
    fleet = (inst("i0", 100, copies=dict(cold)), inst("i1", 100, copies=dict(cold)))
    assert plan_scaling(Snapshot(now, fleet, models)).removes == ()
    # Short of room: the surplus copy of the cold model goes, the last one stays (recent),
    # and the only copy of a model nobody used within the window goes too.
    fleet = (inst("i0", 85, copies={**cold, "old": CopyView(40, 0)}),
             inst("i1", 100, copies={**cold, "x": CopyView(55, now)}))
    models |= {"x": model("x", 55, last=now, rate=9)}
    # 10 of 185 bytes free; removing "old" alone reaches the default 10% target ...
    plan = plan_scaling(Snapshot(now, fleet, models))
    assert [(r.model_id, r.instance_id) for r in plan.removes] == [("old", "i0")]
    # ... a 50% target also takes the surplus cold copy, but never the last one.
    plan = plan_scaling(Snapshot(now, fleet, models), PlacementConfig(min_free_fraction=0.5))
    removed = sorted((r.model_id, r.instance_id) for r in plan.removes)
    assert ("old", "i0") in removed
    assert sum(1 for m, _ in removed if m == "cold") == 1
    assert all(m != "x" for m, _ in removed)


def test_never_removes_in_flight_or_below_one_recent_copy() -> None:
    now = 1000 * MIN
    models = {"a": model("a", size=50, last=now - MIN, rate=0.5)}
    fleet = (inst("i0", 50, copies={"a": CopyView(50, now, in_flight=1)}),
             inst("i1", 50, copies={"a": CopyView(50, now)}))
    plan = plan_scaling(Snapshot(now, fleet, models))
    assert [(r.model_id, r.instance_id) for r in plan.removes] == [("a", "i1")]


def test_draining_instance_copies_move() -> None:
    now = MIN
    fleet = (inst("i0", copies={"m": CopyView(10, now)}, shutting_down=True), inst("i1"))
    plan = plan_scaling(Snapshot(now, fleet, {"m": model("m", last=now, rate=1.0)}))
    assert [(a.model_id, a.instance_id) for a in plan.adds] == [("m", "i1")]


@st.composite
def snapshot_st(draw: st.DrawFn) -> Snapshot:
    fleet = draw(fleet_st)
    now = 200
    models = {mid: ModelView(mid, draw(st.sampled_from(["onnx", "pt"])), draw(st.integers(1, 60)),
                             draw(st.one_of(st.none(), st.integers(0, now))),
                             draw(st.sampled_from([0.0, 1.0, 900.0, 2500.0, 9000.0])))
              for mid in draw(st.sets(st.sampled_from(IDS)))}
    return Snapshot(now, fleet, models)


SMALL = PlacementConfig(scale_up_rate_per_copy=1000, regular_use_window_ms=50,
                        recent_use_window_ms=100, min_free_fraction=0.3)


@settings(max_examples=300, deadline=None)
@given(snap=snapshot_st(), seed=st.integers(0, 1000))
def test_scaling_plan_invariants(snap: Snapshot, seed: int) -> None:
    plan = plan_scaling(snap, SMALL)
    shuffled = list(snap.instances)
    random.Random(seed).shuffle(shuffled)
    assert plan_scaling(Snapshot(snap.now_ms, tuple(shuffled), snap.models), SMALL) == plan
    assert len(plan.adds) <= SMALL.max_adds_per_plan
    assert not {a.model_id for a in plan.adds} & {r.model_id for r in plan.removes}
    # Replaying the plan never overfills an instance, places nothing twice on one
    # instance or on a wrong one, and never removes a busy copy.
    by_id = {i.id: i for i in snap.instances}
    state = {i.id: dict(i.copies) for i in snap.instances}
    free = {i.id: i.free_bytes for i in snap.instances}
    for a in plan.adds:
        i = by_id[a.instance_id]
        m = snap.models[a.model_id]
        assert not i.shutting_down and m.labels <= i.labels
        assert a.model_id not in state[i.id]
        for v in a.evict:
            victim = state[i.id].pop(v)
            assert victim.in_flight == 0 and not victim.loading
            free[i.id] += victim.size_bytes
        state[i.id][a.model_id] = CopyView(m.size_estimate_bytes, snap.now_ms, loading=True)
        free[i.id] -= m.size_estimate_bytes
        assert free[i.id] >= 0  # capacity holds, counting loads in progress
    for r in plan.removes:
        c = state[r.instance_id].pop(r.model_id)
        assert c.in_flight == 0 and not c.loading
    for mid, m in snap.models.items():
        if m.last_used_ms is not None and snap.now_ms - m.last_used_ms <= 100:
            before = sum(1 for i in snap.instances if not i.shutting_down and mid in i.copies)
            after = sum(1 for i in snap.instances if not i.shutting_down and mid in state[i.id])
            assert after >= min(before, 1)  # never below one copy of a recently used model


# -- re-homing -------------------------------------------------------------------------


def test_rehomes_recent_models_from_gone_instances() -> None:
    now = 100 * MIN
    dead = inst("dead", copies={"recent": CopyView(10, now), "ancient": CopyView(10, 0),
                                "unregistered": CopyView(10, now)})
    alive = (inst("a", zone="z1"), inst("b", zone="z2", copies={"recent": CopyView(10, now)}))
    models = {"recent": model("recent", last=now - MIN), "ancient": model("ancient", last=0)}
    snap = Snapshot(now, alive, models)
    assert lost_copies(snap, [dead]) == {"ancient": ("dead",), "recent": ("dead",),
                                         "unregistered": ("dead",)}
    plan = plan_rehoming(snap, [dead])
    assert [(r.model_id, r.lost_from, r.choice) for r in plan] == [
        ("recent", ("dead",), Choice("a"))]


def test_lost_copies_from_registry_records_and_no_home() -> None:
    now = MIN
    m = ModelView("m", "onnx", 500, now, 1.0, recorded_instance_ids=frozenset({"x", "a"}))
    snap = Snapshot(now, (inst("a", 100),), {"m": m})
    assert lost_copies(snap) == {"m": ("x",)}
    (r,) = plan_rehoming(snap)
    assert r.model_id == "m" and isinstance(r.choice, NoFit)


def test_last_copy_rehome_may_evict_extra_copies_may_not() -> None:
    now = 10 * MIN
    dead = inst("dead", copies={"m": CopyView(50, now)})
    dead2 = inst("dead2", copies={"m": CopyView(50, now)})
    full = (inst("a", 100, copies={"idle": CopyView(80, 0)}),
            inst("b", 100, zone="z2", copies={"idle2": CopyView(80, 0)}))
    plan = plan_rehoming(Snapshot(now, full, {"m": model("m", 50, last=now)}), [dead, dead2])
    assert [r.choice for r in plan] == [Choice("a", ("idle",)),
                                        NoFit("no instance has room for 'm' (50 bytes)"
                                              " in free space", for_room=True)]


def test_fleet_free_ignores_shutting_down() -> None:
    assert fleet_free_bytes([inst("a", 100, extra_used=30),
                             inst("b", 100, shutting_down=True)]) == (70, 100)


def test_a_scale_up_never_evicts_the_last_copy_of_a_recently_used_model():
    """Found by the invariant test above: m5 (hot) went to i0 by evicting m3, whose only copy
    was there and which was used 100 ms ago."""
    snap = Snapshot(now_ms=200, instances=(
        InstanceView("i0", 2, 2, 0, "z1", frozenset({"mt:onnx"}),
                     MappingProxyType({"m0": CopyView(1, 0, 1, False), "m3": CopyView(1, 0, 0, False)})),
        InstanceView("i1", 3, 3, 0, "z1", frozenset({"mt:onnx"}),
                     MappingProxyType({"m0": CopyView(1, 0), "m5": CopyView(1, 0), "m1": CopyView(1, 0)}))),
        models=MappingProxyType({m: ModelView(m, "onnx", 1, used, rate) for m, used, rate in (
            ("m0", None, 0.0), ("m1", None, 0.0), ("m3", 100, 0.0), ("m5", None, 2500.0))}))
    plan = plan_scaling(snap, SMALL)
    assert all("m3" not in add.evict for add in plan.adds), plan
