"""`CopyLru`: capacity and LRU bookkeeping of the model copies on one simulated instance.

Used by ``bench/placement_sim.py`` (and its tests in ``tests/bench/``), not by the fabric:
in production the runtime's ``ModelManager`` accounts capacity, used and reserved bytes,
and the instance agent asks ``mesh.domain.lru.choose_victims`` about the manager's entries.
`CopyLru` models that same accounting in one small pure object, so the simulation makes
room with exactly the victim rule the agent applies (it delegates to ``choose_victims``).

Guarantees (each held by ``tests/bench/test_copy_lru.py``):

1. ``used_bytes + loading_bytes <= capacity_bytes`` always: :meth:`CopyLru.reserve` refuses
   a load that does not fit *now*; the caller must unload the planned victims first.
2. A copy with requests in flight is never removed, and never chosen as a victim (nor is
   a load in progress).
3. Victims are those of ``choose_victims``: least recently used first, no more than needed,
   ties on last use broken by model id.

Time is always passed in (``now_ms``); this module never reads a clock.

Import it as ``bench.copy_lru`` with the repository root on ``sys.path`` (the bench
scripts put it there; pytest does for the tests).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

from mesh.domain.lru import CopyLike, choose_victims, lru_last_used_ms

__all__ = ["CopyLru", "CopyState", "DoesNotFit"]


class DoesNotFit(ValueError):
    """A reservation asked for more bytes than are free on the instance right now.

    Permanent for the current state: the caller must unload victims (see
    :meth:`CopyLru.plan_room`) or choose another instance before trying again.
    """


@dataclass
class CopyState:
    """Mutable state of one copy inside :class:`CopyLru` (satisfies ``mesh.domain.lru.CopyLike``)."""

    size_bytes: int
    last_used_ms: int
    in_flight: int = 0
    loading: bool = True
    device_bytes: int = 0  # GPU bytes (mesh.domain.lru.CopyLike); the simulated instances have none


class CopyLru:
    """Capacity and LRU order of the copies on one instance.

    Not thread-safe: one simulated instance drives it. Every mutating method keeps
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
        """A read-only view keyed by model id, suitable for ``choose_victims``."""
        return self._copies

    def lru_age_ms(self, now_ms: int) -> int | None:
        """Milliseconds since the least recently used loaded copy was used, or None."""
        oldest = lru_last_used_ms(self._copies)
        return None if oldest is None else max(0, now_ms - oldest)

    # -- capacity ----------------------------------------------------------------------

    def choose_victims(self, needed_bytes: int, protect: Collection[str] = ()) -> list[str] | None:
        """Victims freeing ``needed_bytes`` (see ``mesh.domain.lru.choose_victims``)."""
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
