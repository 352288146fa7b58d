"""Routing policy: which loaded copy takes the next request (pure: no I/O, no clock).

A policy is one `choose(candidates, loads)` over a snapshot; the machinery in
`router.routing` owns the counters it reads (requests in flight from this router and a
pick sequence number) and everything else: retries, deadlines, cancellation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["LeastInFlight", "Policy", "ReplicaLoad"]


class ReplicaLoad:
    """This router's view of one instance: requests in flight to it, and when it was last
    picked (a sequence number: higher is more recent; 0 is never)."""

    __slots__ = ("in_flight", "last_pick")

    def __init__(self, in_flight: int = 0, last_pick: int = 0) -> None:
        self.in_flight = in_flight
        self.last_pick = last_pick

    def __repr__(self) -> str:
        return f"ReplicaLoad(in_flight={self.in_flight}, last_pick={self.last_pick})"


class Policy(Protocol):
    def choose(self, candidates: Sequence[str], loads: Mapping[str, ReplicaLoad]) -> str:
        """One of `candidates` (never empty); `loads` may lack an entry (an idle instance)."""
        ...


_IDLE = ReplicaLoad()


class LeastInFlight:
    """Fewest requests in flight from this router; among equals, the least recently picked
    (so idle copies take turns); among those, the first candidate. Deterministic."""

    def choose(self, candidates: Sequence[str], loads: Mapping[str, ReplicaLoad]) -> str:
        best = candidates[0]
        if len(candidates) == 1:
            return best
        load = loads.get(best, _IDLE)
        best_in, best_pick = load.in_flight, load.last_pick
        for candidate in candidates[1:]:
            load = loads.get(candidate, _IDLE)
            if load.in_flight < best_in or (load.in_flight == best_in and load.last_pick < best_pick):
                best, best_in, best_pick = candidate, load.in_flight, load.last_pick
        return best
