"""Tests of mesh.domain.lru: in-flight-aware, minimal, deterministic LRU victim choice."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.domain.lru import choose_victims, evictable_bytes, lru_last_used_ms


@dataclass(frozen=True)
class C:
    size_bytes: int
    last_used_ms: int
    in_flight: int = 0
    loading: bool = False
    device_bytes: int = 0


# -- choose_victims --------------------------------------------------------------------


def test_victims_are_least_recently_used_first() -> None:
    copies = {"a": C(10, 300), "b": C(10, 100), "c": C(10, 200)}
    assert choose_victims(copies, 15) == ["b", "c"]


def test_nothing_needed_means_no_victims() -> None:
    assert choose_victims({"a": C(10, 1)}, 0) == []
    assert choose_victims({"a": C(10, 1)}, -5) == []


def test_in_flight_loading_and_protected_copies_are_never_victims() -> None:
    copies = {
        "busy": C(50, 1, in_flight=1),
        "loading": C(50, 2, loading=True),
        "kept": C(50, 3),
        "idle": C(50, 4),
    }
    assert choose_victims(copies, 50, protect={"kept"}) == ["idle"]
    assert evictable_bytes(copies) == 100
    assert evictable_bytes(copies, protect={"kept"}) == 50


def test_impossible_returns_none() -> None:
    copies = {"busy": C(100, 1, in_flight=2), "idle": C(10, 2)}
    assert choose_victims(copies, 50) is None


def test_does_not_evict_beyond_need() -> None:
    # Greedy LRU would take a, b and c; c alone is enough, so a and b are spared.
    copies = {"a": C(2, 1), "b": C(1, 2), "c": C(10, 3), "d": C(10, 4)}
    assert choose_victims(copies, 10) == ["c"]


def test_gpu_bytes_are_freed_by_copies_that_hold_some_and_no_more_than_needed() -> None:
    # "a" is the oldest but holds nothing on the GPU; "b" and "c" do.
    copies = {"a": C(10, 100), "b": C(10, 200, device_bytes=50), "c": C(10, 300, device_bytes=80)}
    assert choose_victims(copies, 0, needed_device_bytes=40) == ["b"]  # not "a": it frees no GPU bytes
    assert choose_victims(copies, 15, needed_device_bytes=40) == ["a", "b"]  # both kinds short
    assert choose_victims(copies, 0, needed_device_bytes=100) == ["b", "c"]
    assert choose_victims(copies, 0, needed_device_bytes=200) is None
    assert choose_victims(copies, 0, needed_device_bytes=0) == []


def test_ties_on_last_use_break_by_model_id() -> None:
    copies = {"z": C(10, 5), "y": C(10, 5), "x": C(10, 5)}
    assert choose_victims(copies, 10) == ["x"]


def test_lru_last_used_ignores_loads_in_progress() -> None:
    assert lru_last_used_ms({}) is None
    assert lru_last_used_ms({"a": C(1, 5, loading=True), "b": C(1, 9)}) == 9


copy_st = st.builds(
    C,
    size_bytes=st.integers(0, 1000),
    last_used_ms=st.integers(0, 50),
    in_flight=st.integers(0, 2),
    loading=st.booleans(),
)
copies_st = st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]), copy_st, max_size=12)


@settings(max_examples=300, deadline=None)
@given(copies=copies_st, needed=st.integers(-10, 6000),
       protect=st.sets(st.sampled_from([f"m{i}" for i in range(12)]), max_size=3))
def test_victim_properties(copies: dict[str, C], needed: int, protect: set[str]) -> None:
    victims = choose_victims(copies, needed, protect)
    available = evictable_bytes(copies, protect)
    if needed <= 0:
        assert victims == []
        return
    if victims is None:
        assert available < needed  # only refuses when it is truly impossible
        return
    assert len(set(victims)) == len(victims)
    for v in victims:
        c = copies[v]
        assert c.in_flight == 0 and not c.loading and v not in protect
    freed = sum(copies[v].size_bytes for v in victims)
    assert freed >= needed
    for v in victims:  # minimal: every victim is needed
        assert freed - copies[v].size_bytes < needed
    # Deterministic and independent of the mapping's order.
    assert choose_victims(dict(reversed(list(copies.items()))), needed, protect) == victims


@settings(max_examples=300, deadline=None)
@given(copies=st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]),
                              st.builds(C, size_bytes=st.integers(0, 1000), last_used_ms=st.integers(0, 50),
                                        in_flight=st.integers(0, 2), loading=st.booleans(),
                                        device_bytes=st.integers(0, 1000)), max_size=12),
       needed=st.integers(-10, 4000), needed_device=st.integers(-10, 4000))
def test_victim_properties_with_gpu_bytes(copies: dict[str, C], needed: int, needed_device: int) -> None:
    victims = choose_victims(copies, needed, needed_device_bytes=needed_device)
    idle = [c for c in copies.values() if c.in_flight == 0 and not c.loading]
    if needed <= 0 and needed_device <= 0:
        assert victims == []
        return
    if victims is None:  # only refuses when one kind cannot be freed even by every idle copy
        assert sum(c.size_bytes for c in idle) < needed or sum(c.device_bytes for c in idle) < needed_device
        return
    freed = (sum(copies[v].size_bytes for v in victims), sum(copies[v].device_bytes for v in victims))
    assert freed[0] >= needed and freed[1] >= needed_device
    for v in victims:  # minimal: without any one victim, one kind is short
        c = copies[v]
        assert c.in_flight == 0 and not c.loading
        assert freed[0] - c.size_bytes < needed or freed[1] - c.device_bytes < needed_device
