"""LRU bookkeeping of the model copies held by one instance (pure: no I/O, no clock).

The instance agent owns its memory. It keeps one :class:`CopyLru` per runtime process and
asks it two questions before every load:

* how many bytes are free, counting loads already in progress (``free_bytes``), and
* which idle copies to unload to make room (``plan_room`` / ``choose_victims``).

Guarantees (each held by ``tests/mesh/domain/test_lru.py``):

1. ``used_bytes + loading_bytes <= capacity_bytes`` always: :meth:`CopyLru.reserve` refuses
   a load that does not fit *now*; the caller must unload the planned victims first.
2. A victim never has a request in flight and is never a load in progress.
3. When victims are returned they free at least the bytes asked for, and the set is minimal:
   dropping any one victim would no longer free enough (no eviction beyond need).
4. Same state in, same answer out: ties on last use are broken by model id.

Time is always passed in (``now_ms``, milliseconds on any monotonic clock the caller
chooses); this module never reads a clock.

The victim choice is also exposed as the module function :func:`choose_victims` over any
mapping of copy-like objects, so the placement engine can ask "could this instance make
room?" about a published snapshot with exactly the rule the instance will apply.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CopyLike",
    "CopyLru",
    "CopyState",
    "DoesNotFit",
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


class DoesNotFit(ValueError):
    """A reservation asked for more bytes than are free on the instance right now.

    Permanent for the current state: the caller must unload victims (see
    :meth:`CopyLru.plan_room`) or choose another instance before trying again.
    """


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
) -> list[str] | None:
    """Pick idle copies to unload so that at least ``needed_bytes`` are freed.

    Returns:
        ``[]`` when ``needed_bytes <= 0``; otherwise model ids in eviction order (least
        recently used first) whose sizes sum to ``>= needed_bytes``; or ``None`` when even
        unloading every idle copy would not free enough (nothing should be unloaded then).

    Guarantees: no victim is loading, has a request in flight, or is in ``protect``; the
    set is minimal (removing any one victim leaves less than ``needed_bytes``); older copies
    are taken before newer ones, ties broken by model id, so the answer is deterministic.
    """
    if needed_bytes <= 0:
        return []
    candidates = sorted(
        (
            (c.last_used_ms, mid, c.size_bytes)
            for mid, c in copies.items()
            if mid not in protect and _is_evictable(c)
        ),
    )
    chosen: list[tuple[int, str, int]] = []
    freed = 0
    for cand in candidates:
        if freed >= needed_bytes:
            break
        chosen.append(cand)
        freed += cand[2]
    if freed < needed_bytes:
        return None
    # Greedy LRU order may take many small old copies before one large one that alone would
    # have been enough. Walk back from the newest victim and spare any copy the others can
    # do without: after one pass every remaining victim is necessary (freed - size < need
    # only gets truer as freed shrinks), so nothing is evicted beyond need.
    kept: list[tuple[int, str, int]] = []
    for cand in reversed(chosen):
        if freed - cand[2] >= needed_bytes:
            freed -= cand[2]
        else:
            kept.append(cand)
    kept.reverse()
    return [mid for _, mid, _ in kept]


@dataclass
class CopyState:
    """Mutable state of one copy inside :class:`CopyLru` (satisfies :class:`CopyLike`)."""

    size_bytes: int
    last_used_ms: int
    in_flight: int = 0
    loading: bool = True


class CopyLru:
    """Capacity and LRU order of the copies on one instance.

    Not thread-safe: the agent calls it from one event loop. Every mutating method keeps
    ``used_bytes + loading_bytes <= capacity_bytes`` (raising :class:`DoesNotFit` rather
    than breaking it) and never drops a copy that has requests in flight.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._copies: dict[str, CopyState] = {}
        self._used = 0  # bytes of loaded copies
        self._loading = 0  # bytes reserved for loads in progress

    # -- reading -----------------------------------------------------------------------

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes held by loaded copies."""
        return self._used

    @property
    def loading_bytes(self) -> int:
        """Bytes reserved by loads in progress."""
        return self._loading

    @property
    def free_bytes(self) -> int:
        """Bytes neither held nor reserved: what a new load may take without evicting."""
        return self._capacity - self._used - self._loading

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._copies

    def __len__(self) -> int:
        return len(self._copies)

    def __iter__(self) -> Iterator[str]:
        """Model ids, least recently used first (ties by id)."""
        return iter(sorted(self._copies, key=lambda m: (self._copies[m].last_used_ms, m)))

    def get(self, model_id: str) -> CopyState | None:
        """The live state of a copy (do not mutate it; use the methods), or None."""
        return self._copies.get(model_id)

    def copies(self) -> Mapping[str, CopyLike]:
        """A read-only view keyed by model id, suitable for :func:`choose_victims`."""
        return self._copies

    def lru_age_ms(self, now_ms: int) -> int | None:
        """Milliseconds since the least recently used loaded copy was used, or None."""
        oldest = lru_last_used_ms(self._copies)
        return None if oldest is None else max(0, now_ms - oldest)

    # -- capacity ----------------------------------------------------------------------

    def choose_victims(self, needed_bytes: int, protect: Collection[str] = ()) -> list[str] | None:
        """Victims freeing ``needed_bytes`` (see the module function of the same name)."""
        return choose_victims(self._copies, needed_bytes, protect)

    def plan_room(self, size_bytes: int, protect: Collection[str] = ()) -> list[str] | None:
        """Victims to unload so that a load of ``size_bytes`` fits.

        ``[]`` means it fits now; ``None`` means it cannot fit even after evicting every
        idle copy (the caller should report capacity exhausted or try another instance).
        The caller unloads each victim, calls :meth:`remove`, then :meth:`reserve`.
        """
        if size_bytes > self._capacity:
            return None
        return choose_victims(self._copies, size_bytes - self.free_bytes, protect)

    # -- lifecycle of a copy -----------------------------------------------------------

    def reserve(self, model_id: str, size_bytes: int, now_ms: int) -> None:
        """Reserve ``size_bytes`` for a load of ``model_id`` that starts now.

        Raises:
            DoesNotFit: the bytes are not free now (nothing changes).
            ValueError: the model already has a copy here, or the size is negative.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        if model_id in self._copies:
            raise ValueError(f"model {model_id!r} already has a copy on this instance")
        if size_bytes > self.free_bytes:
            raise DoesNotFit(
                f"load of {model_id!r} needs {size_bytes} bytes, {self.free_bytes} free"
                f" of {self._capacity}"
            )
        self._copies[model_id] = CopyState(size_bytes, now_ms, 0, loading=True)
        self._loading += size_bytes

    def loaded(self, model_id: str, actual_size_bytes: int | None = None) -> None:
        """Mark the load of ``model_id`` finished, optionally with its measured size.

        A measured size larger than the reservation is accepted only if the extra bytes are
        free; otherwise :class:`DoesNotFit` is raised and the copy stays ``loading`` so the
        caller can make room (``plan_room(extra)``) or unload it.
        """
        copy = self._require(model_id)
        if not copy.loading:
            raise ValueError(f"model {model_id!r} is not loading")
        size = copy.size_bytes if actual_size_bytes is None else actual_size_bytes
        if size < 0:
            raise ValueError(f"actual_size_bytes must be >= 0, got {size}")
        extra = size - copy.size_bytes
        if extra > self.free_bytes:
            raise DoesNotFit(
                f"model {model_id!r} measured {size} bytes, reserved {copy.size_bytes},"
                f" only {self.free_bytes} more free"
            )
        self._loading -= copy.size_bytes
        self._used += size
        copy.size_bytes = size
        copy.loading = False

    def remove(self, model_id: str) -> int:
        """Forget the copy (after it was unloaded, or its load failed); return bytes freed.

        Raises:
            ValueError: the copy has requests in flight (invariant 2: it must not go).
            KeyError: no such copy.
        """
        copy = self._require(model_id)
        if copy.in_flight:
            raise ValueError(f"model {model_id!r} has {copy.in_flight} requests in flight")
        del self._copies[model_id]
        if copy.loading:
            self._loading -= copy.size_bytes
        else:
            self._used -= copy.size_bytes
        return copy.size_bytes

    # -- requests ----------------------------------------------------------------------

    def touch(self, model_id: str, now_ms: int) -> None:
        """Record a use of ``model_id`` at ``now_ms`` (moves it to most recently used).

        Last-use time never goes backwards, so a late, out-of-order touch is harmless.
        """
        copy = self._require(model_id)
        if now_ms > copy.last_used_ms:
            copy.last_used_ms = now_ms

    def begin_request(self, model_id: str, now_ms: int) -> None:
        """A request starts on ``model_id``: touch it and pin it against eviction."""
        copy = self._require(model_id)
        copy.in_flight += 1
        if now_ms > copy.last_used_ms:
            copy.last_used_ms = now_ms

    def end_request(self, model_id: str) -> None:
        """A request on ``model_id`` finished; the copy is evictable once none remain."""
        copy = self._require(model_id)
        if copy.in_flight <= 0:
            raise ValueError(f"model {model_id!r} has no request in flight")
        copy.in_flight -= 1

    def _require(self, model_id: str) -> CopyState:
        try:
            return self._copies[model_id]
        except KeyError:
            raise KeyError(f"no copy of model {model_id!r} on this instance") from None
