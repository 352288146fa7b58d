"""LRU victim choice over the model copies held by one instance (pure: no I/O, no clock).

Two callers ask the same question, "which idle copies would have to go to free N bytes?",
and must get the same answer:

* the instance agent (`mesh.instance.agent`), before a load, about its runtime's
  `ModelManager` entries (the manager itself accounts capacity, used and reserved bytes);
* the placement engine (`mesh.domain.placement`), about an instance's published copies,
  to judge whether that instance could make room.

Both go through :func:`choose_victims` over any mapping of :class:`CopyLike` objects.

Guarantees (each held by ``tests/mesh/domain/test_lru.py``):

1. A victim never has a request in flight, is never a load in progress and is never in
   ``protect``.
2. When victims are returned they free at least the bytes asked for, of each kind (host
   bytes, and GPU bytes where a copy holds some: `device_bytes`), and the set is minimal:
   dropping any one victim would no longer free enough of one kind (no eviction beyond need).
3. Same state in, same answer out: ties on last use are broken by model id.

Times (``last_used_ms``) are the caller's, on any monotonic clock; this module never reads
a clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

__all__ = [
    "CopyLike",
    "choose_victims",
    "evictable_bytes",
    "lru_last_used_ms",
]


class CopyLike(Protocol):
    """What victim selection needs to know about one copy (read-only)."""

    @property
    def size_bytes(self) -> int: ...

    @property
    def last_used_ms(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def loading(self) -> bool: ...

    @property
    def device_bytes(self) -> int:
        """GPU bytes the copy holds, apart from `size_bytes` (0: none)."""


def _is_evictable(copy: CopyLike) -> bool:
    # A load in progress cannot be "unloaded" to free bytes it does not hold yet, and a copy
    # serving requests must finish them first (invariant 2 of the architecture).
    return not copy.loading and copy.in_flight == 0


def evictable_bytes(copies: Mapping[str, CopyLike], protect: Collection[str] = ()) -> int:
    """Bytes that unloading every idle, loaded copy (not in ``protect``) would free."""
    return sum(
        c.size_bytes for mid, c in copies.items() if mid not in protect and _is_evictable(c)
    )


def lru_last_used_ms(copies: Mapping[str, CopyLike]) -> int | None:
    """Last-use time of the least recently used *loaded* copy, or None if there is none.

    ``now_ms - lru_last_used_ms(...)`` is ModelMesh's "LRU age" of an instance: the larger it
    is, the colder the coldest thing the instance would evict first.
    """
    times = [c.last_used_ms for c in copies.values() if not c.loading]
    return min(times) if times else None


def choose_victims(
    copies: Mapping[str, CopyLike],
    needed_bytes: int,
    protect: Collection[str] = (),
    needed_device_bytes: int = 0,
) -> list[str] | None:
    """Pick idle copies to unload so that at least ``needed_bytes`` host bytes and
    ``needed_device_bytes`` GPU bytes are freed.

    Returns:
        ``[]`` when neither is needed (both ``<= 0``); otherwise model ids in eviction order
        (least recently used first) whose sizes sum to at least each need; or ``None`` when
        even unloading every idle copy would not free enough (nothing should be unloaded then).

    Guarantees: no victim is loading, has a request in flight, or is in ``protect``; the
    set is minimal (removing any one victim leaves less than one of the needs); older copies
    are taken before newer ones, ties broken by model id, so the answer is deterministic.
    A copy that frees only the kind not needed is never kept as a victim.
    """
    need = (max(needed_bytes, 0), max(needed_device_bytes, 0))
    if need == (0, 0):
        return []
    candidates = sorted(
        (
            (c.last_used_ms, mid, (c.size_bytes, c.device_bytes))
            for mid, c in copies.items()
            if mid not in protect and _is_evictable(c)
        ),
    )

    def short(freed: tuple[int, int]) -> bool:
        return freed[0] < need[0] or freed[1] < need[1]

    chosen: list[tuple[int, str, tuple[int, int]]] = []
    freed = (0, 0)
    for cand in candidates:
        if not short(freed):
            break
        chosen.append(cand)
        freed = (freed[0] + cand[2][0], freed[1] + cand[2][1])
    if short(freed):
        return None
    # Greedy LRU order may take many small old copies before one large one that alone would
    # have been enough (or copies that free only the other kind). Walk back from the newest
    # victim and spare any copy the others can do without: after one pass every remaining
    # victim is necessary (freed - size < need only gets truer as freed shrinks), so nothing
    # is evicted beyond need.
    kept: list[tuple[int, str, tuple[int, int]]] = []
    for cand in reversed(chosen):
        without = (freed[0] - cand[2][0], freed[1] - cand[2][1])
        if not short(without):
            freed = without
        else:
            kept.append(cand)
    kept.reverse()
    return [mid for _, mid, _ in kept]
