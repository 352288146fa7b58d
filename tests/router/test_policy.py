"""The routing policy with fake replicas (pure)."""

from __future__ import annotations

from router.policy import LeastInFlight, ReplicaLoad

policy = LeastInFlight()


def test_single_candidate():
    assert policy.choose(["a"], {}) == "a"


def test_fewest_in_flight_wins():
    loads = {"a": ReplicaLoad(3, 1), "b": ReplicaLoad(1, 9), "c": ReplicaLoad(2, 0)}
    assert policy.choose(["a", "b", "c"], loads) == "b"


def test_ties_go_to_the_least_recently_picked():
    loads = {"a": ReplicaLoad(1, 5), "b": ReplicaLoad(1, 2), "c": ReplicaLoad(1, 7)}
    assert policy.choose(["a", "b", "c"], loads) == "b"


def test_unknown_instances_count_as_idle_and_never_picked():
    loads = {"a": ReplicaLoad(0, 4)}
    assert policy.choose(["a", "new"], loads) == "new"


def test_idle_copies_take_turns():
    """Sequential calls (nothing in flight) rotate over the copies, as the router updates picks."""
    loads: dict[str, ReplicaLoad] = {}
    picks = []
    for sequence in range(1, 7):
        chosen = policy.choose(["a", "b", "c"], loads)
        loads.setdefault(chosen, ReplicaLoad()).last_pick = sequence
        picks.append(chosen)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_concurrent_calls_spread_by_in_flight():
    loads: dict[str, ReplicaLoad] = {}
    for sequence in range(1, 7):  # six calls start, none finishes
        chosen = policy.choose(["a", "b"], loads)
        load = loads.setdefault(chosen, ReplicaLoad())
        load.in_flight += 1
        load.last_pick = sequence
    assert loads["a"].in_flight == 3 and loads["b"].in_flight == 3


def test_deterministic_on_full_ties():
    loads = {"a": ReplicaLoad(2, 3), "b": ReplicaLoad(2, 3)}
    assert policy.choose(["b", "a"], loads) == "b"
