"""Making room for a load: evicting least recently used idle copies, just enough to fit.

Guarantees (the victim rule is `mesh.domain.lru.choose_victims`):
- a copy with a request in flight or a load in progress is never evicted; victims go least
  recently used first and no more than needed, of the kind that is short: host memory, or
  the GPU's where the holder has one (`device_capacity_bytes`) and the load needs some;
- a copy loaded less than `fresh_copy_grace_s` ago that has not served yet is spared (the
  call that asked for it is on its way);
- when nothing can go now, the load waits up to `room_wait_s` for a request to finish or a
  fresh copy's grace to end; if there is still no room nothing is evicted and the manager
  refuses the load; making room never raises (but cancellation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mesh.domain.lru import choose_victims
from mesh.instance.metrics import AgentMetrics
from mesh.instance.holder import ModelHolder, State

__all__ = ["LruRoomMaker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Candidate:
    """A manager entry as `mesh.domain.lru.choose_victims` sees it."""

    size_bytes: int
    last_used_ms: int
    in_flight: int
    loading: bool
    device_bytes: int


async def _first_of(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of `events` is set, or `timeout` seconds pass (a fresh copy's grace ending,
    or the room wait running out: the caller re-checks either way)."""
    if not events:
        await asyncio.sleep(timeout)  # a deadline of the policy, not a synchronization
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class LruRoomMaker:
    """The manager's room maker (`make_room`); `on_change` is told a copy is about to be added."""

    def __init__(self, manager: ModelHolder, metrics: AgentMetrics, clock: Callable[[], int],
                 on_change: Callable[[], None], *, room_wait_s: float, fresh_copy_grace_s: float) -> None:
        self._manager = manager
        self._metrics = metrics
        self._clock = clock
        self._on_change = on_change
        self._room_wait_s = room_wait_s
        self._fresh_grace_ms = int(fresh_copy_grace_s * 1000)

    async def make_room(self, model_id: str, predicted_bytes: int, predicted_device_bytes: int = 0) -> None:
        """Evict LRU idle copies so `predicted_bytes` (and `predicted_device_bytes` on the GPU) fit.

        Runs under the manager's room lock, right before it reserves the bytes. When no
        copy can go now (all busy, or fresh), waits for a request to finish or a fresh
        copy's grace to end, up to `room_wait_s`. Never raises (but cancellation): if there
        is still no room it evicts nothing and lets the manager refuse the load.
        """
        self._on_change()  # a copy is about to be added (loading)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._room_wait_s
        try:
            while True:
                victims, wake, grace_ends_s = self._victims(model_id, predicted_bytes, predicted_device_bytes)
                if victims is None:
                    return  # fits already
                if victims:
                    await self._evict(model_id, victims)
                    return
                remaining = give_up_at - loop.time()
                if remaining <= 0:
                    log.info("no room for %s (%d bytes): every copy that could go is busy or fresh", model_id,
                             predicted_bytes)
                    return
                await _first_of(wake, min(remaining, grace_ends_s))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed eviction must not fail the load by itself
            log.exception("making room for %s failed", model_id)

    def _victims(self, model_id: str, predicted_bytes: int,
                 predicted_device_bytes: int) -> tuple[list[str] | None, list[asyncio.Event], float]:
        """(None if it fits, else the LRU victims, [] when none can go now; events that
        signal a busy copy going idle; seconds until the first fresh copy's grace ends)."""
        manager = self._manager
        needed = predicted_bytes - (manager.capacity_bytes - manager.used_bytes)
        device_capacity = manager.device_capacity_bytes
        if device_capacity is None:  # no GPU: the manager checks host memory only
            device_needed, too_large = 0, False
        else:
            device_needed = predicted_device_bytes - (device_capacity - manager.device_used_bytes)
            too_large = predicted_device_bytes > device_capacity
        if (needed <= 0 and device_needed <= 0) or predicted_bytes > manager.capacity_bytes or too_large:
            return None, [], 0.0  # fits, or never will (the manager refuses it: ModelTooLarge)
        now_ms = self._clock()
        entries = manager.entries()
        candidates = {
            m: _Candidate(e.reserved_bytes, e.last_used_ms, e.in_flight, e.state is not State.LOADED, e.device_bytes)
            for m, e in entries.items()
        }
        fresh = [m for m, e in entries.items() if e.state is State.LOADED and e.stats.inference_count == 0
                 and e.stats.fail.count == 0 and now_ms - e.since_ms < self._fresh_grace_ms]
        victims = choose_victims(candidates, needed, protect=(model_id, *fresh), needed_device_bytes=device_needed)
        if victims:
            return victims, [], 0.0
        busy = [e.idle for e in entries.values() if e.state is State.LOADED and e.in_flight > 0]
        grace_ends_ms = min((entries[m].since_ms + self._fresh_grace_ms - now_ms for m in fresh), default=None)
        return [], busy, max(grace_ends_ms, 1) / 1000 if grace_ends_ms is not None else self._room_wait_s

    async def _evict(self, model_id: str, victims: list[str]) -> None:
        now_ms = self._clock()
        entries = self._manager.entries()
        for victim in victims:
            entry = entries.get(victim)
            last_used = entry.last_used_ms if entry is not None else now_ms
            age_ms = max(0, now_ms - last_used)
            self._metrics.age_at_eviction.observe(age_ms)
            log.info("evicting %s (%d bytes, last used %.1fs ago) to load %s", victim,
                     entry.reserved_bytes if entry is not None else 0, age_ms / 1000, model_id)
        # A request that started on a victim since we chose it is waited for by unload.
        await asyncio.gather(*(self._manager.unload(v) for v in victims))
