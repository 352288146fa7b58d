"""Tests of bench.copy_lru (the placement simulation's per-instance memory model):
capacity accounting with loads in progress, in-flight pinning, room planning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.copy_lru import CopyLru, DoesNotFit
from mesh.domain.lru import evictable_bytes


def loaded(lru: CopyLru, model_id: str, size: int, now: int) -> None:
    lru.reserve(model_id, size, now)
    lru.loaded(model_id)


def test_reserve_counts_loads_in_progress_against_capacity() -> None:
    lru = CopyLru(100)
    lru.reserve("a", 60, now_ms=0)
    assert (lru.used_bytes, lru.loading_bytes, lru.free_bytes) == (0, 60, 40)
    with pytest.raises(DoesNotFit):
        lru.reserve("b", 50, now_ms=1)
    assert "b" not in lru and lru.free_bytes == 40
    lru.loaded("a")
    assert (lru.used_bytes, lru.loading_bytes, lru.free_bytes) == (60, 0, 40)


def test_plan_room_then_remove_then_reserve() -> None:
    lru = CopyLru(100)
    loaded(lru, "old", 40, 0)
    loaded(lru, "mid", 40, 10)
    lru.touch("old", 20)  # old is now the most recently used
    assert lru.plan_room(20) == []
    assert lru.plan_room(50) == ["mid"]
    assert lru.plan_room(101) is None
    for victim in lru.plan_room(50) or []:
        lru.remove(victim)
    lru.reserve("new", 50, 30)
    assert lru.used_bytes + lru.loading_bytes <= lru.capacity_bytes
    assert list(lru) == ["old", "new"]


def test_in_flight_copy_cannot_be_removed_or_chosen() -> None:
    lru = CopyLru(100)
    loaded(lru, "a", 50, 0)
    loaded(lru, "b", 50, 1)
    lru.begin_request("a", 2)
    lru.begin_request("b", 3)
    assert lru.plan_room(10) is None
    with pytest.raises(ValueError):
        lru.remove("a")
    lru.end_request("a")
    assert lru.plan_room(10) == ["a"]
    assert lru.remove("a") == 50
    lru.end_request("b")
    with pytest.raises(ValueError):
        lru.end_request("b")  # more ends than begins


def test_touch_never_moves_time_backwards_and_lru_age() -> None:
    lru = CopyLru(100)
    assert lru.lru_age_ms(5) is None
    loaded(lru, "a", 10, 100)
    lru.touch("a", 50)
    assert lru.get("a") is not None and lru.get("a").last_used_ms == 100  # type: ignore[union-attr]
    assert lru.lru_age_ms(400) == 300


def test_measured_size_larger_than_reservation_must_fit() -> None:
    lru = CopyLru(100)
    loaded(lru, "a", 50, 0)
    lru.reserve("b", 30, 1)
    with pytest.raises(DoesNotFit):
        lru.loaded("b", actual_size_bytes=60)
    assert lru.get("b").loading  # type: ignore[union-attr]
    lru.loaded("b", actual_size_bytes=45)
    assert (lru.used_bytes, lru.loading_bytes) == (95, 0)


def test_errors_for_unknown_and_duplicate_copies() -> None:
    lru = CopyLru(10)
    with pytest.raises(KeyError):
        lru.touch("nope", 1)
    lru.reserve("a", 1, 0)
    with pytest.raises(ValueError):
        lru.reserve("a", 1, 0)
    lru.loaded("a")
    with pytest.raises(ValueError):
        lru.loaded("a")  # already loaded
    with pytest.raises(ValueError):
        CopyLru(-1)


ops = st.lists(
    st.tuples(
        st.sampled_from(["load", "begin", "end", "evict_for", "touch"]),
        st.sampled_from([f"m{i}" for i in range(8)]),
        st.integers(1, 60),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_agent_like_sequences_keep_the_invariants(ops: list[tuple[str, str, int]]) -> None:
    """Drive CopyLru the way the agent does; capacity and in-flight invariants always hold."""
    lru = CopyLru(100)
    in_flight: dict[str, int] = {}
    for now, (op, mid, n) in enumerate(ops):
        if op == "load" and mid not in lru:
            victims = lru.plan_room(n)
            if victims is None:
                continue
            for v in victims:
                assert in_flight.get(v, 0) == 0
                lru.remove(v)
            lru.reserve(mid, n, now)
            lru.loaded(mid)
        elif op == "begin" and mid in lru:
            lru.begin_request(mid, now)
            in_flight[mid] = in_flight.get(mid, 0) + 1
        elif op == "end" and in_flight.get(mid, 0):
            lru.end_request(mid)
            in_flight[mid] -= 1
        elif op == "evict_for":
            victims = lru.choose_victims(n)
            assert victims is not None or evictable_bytes(lru.copies()) < n
            for v in victims or []:
                assert in_flight.get(v, 0) == 0
        elif op == "touch" and mid in lru:
            lru.touch(mid, now)
        assert 0 <= lru.used_bytes + lru.loading_bytes <= lru.capacity_bytes
        assert lru.used_bytes == sum(
            lru.get(m).size_bytes for m in lru if not lru.get(m).loading  # type: ignore[union-attr]
        )
        for m, count in in_flight.items():
            if count:
                assert m in lru  # a copy with requests in flight is never gone
