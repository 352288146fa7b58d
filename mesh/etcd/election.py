"""`Election`: leader election on one etcd key, bound to a `LeaseSession`."""

from __future__ import annotations

import asyncio
import logging

from mesh.aio.backoff import Backoff
from mesh.etcd.client import JSON, KV
from mesh.etcd.errors import LeaseLost, RevisionCompacted, StoreClosed, StoreUnavailable
from mesh.etcd.session import LeaseSession
from mesh.aio.tasks import AsyncClosing, TaskSupervisor

__all__ = ["Election"]

log = logging.getLogger(__name__)

# Transient trouble while campaigning or monitoring: back off and look again. A longer
# outage ends the session (TTL), which ends the campaign/term with LeaseLost.
_TRANSIENT = (StoreUnavailable, RevisionCompacted)


# Pause after failure number `n`: 0.1 s doubling up to 1 s, jittered down to half.
_BACKOFF = Backoff(initial_s=0.1, max_s=1.0)


class Election(AsyncClosing):
    """Leadership of `key`, held by creating it bound to the session's lease.

    Guarantees:
    - at most one session holds the key at a time (etcd create-if-absent), so at most one
      `Election` per key is leader at any moment *as etcd sees it*; a leader learns it lost
      the key within the session's TTL at worst (sooner on a watch event);
    - `campaign()` returns only as leader, and waits without polling (a watch on the key)
      while someone else leads;
    - each term has its own `lost` event, set when that term ends: resigned, session lost
      or closed, or the key deleted or taken over. `is_leader` is False from then on.

    Failure: `campaign()` raises `LeaseLost` if the session is lost (open a new session
    and a new `Election`), `TimeoutError` after `timeout`. Transient etcd errors are
    retried inside until the session's TTL decides. `resign()` may raise
    `StoreUnavailable`; leadership is given up locally anyway and the key goes with the
    session's lease.

    What the caller must do: run leader-only work only while `is_leader`, stopping it when
    `lost` is set (e.g. `session.run(...)` plus a wait on `lost`), and close the election
    (`async with`) so its monitor task is cancelled and the key released.
    """

    def __init__(self, session: LeaseSession, key: str, value: JSON, *, name: str = "election") -> None:
        self.session = session
        self.client = session.client
        self.key = key
        self.value = value
        self.name = name
        self.lost = asyncio.Event()
        self.lost.set()  # no term yet: "not leader" reads the same as "term over"
        self.lost_reason: str | None = "never elected"
        self._revision = 0
        self._tasks = TaskSupervisor(f"election-{name}")
        self._campaigning = False

    @property
    def is_leader(self) -> bool:
        return not self.lost.is_set()

    @property
    def revision(self) -> int:
        """mod_revision of our leader key in the current term (0 if not leader)."""
        return self._revision if self.is_leader else 0

    async def leader(self) -> KV | None:
        """Who leads now, read from etcd (None: nobody)."""
        return await self.client.get(self.key)

    # -- campaign -------------------------------------------------------------------------------
    async def campaign(self, timeout: float | None = None) -> None:
        """Become leader, waiting as long as someone else is (see class docstring)."""
        if self.is_leader:
            return
        if self._campaigning:
            raise RuntimeError("campaign already in progress")
        self._campaigning = True
        try:
            async with asyncio.timeout(timeout):
                await self.session.run(self._campaign())
        finally:
            self._campaigning = False

    async def _campaign(self) -> None:
        lease_id = self.session.lease_id
        failures = 0
        while True:
            try:
                result = await self.session.create_if_absent(self.key, self.value)
                current = result.current
                if result.won or (current is not None and current.lease == lease_id):
                    # The second case: we already hold it (an earlier term of this session).
                    self._begin_term(current.mod_revision if current else result.revision)
                    return
                if current is None:
                    continue  # deleted between compare and read-back: try again at once
                await self._wait_until_deleted(result.revision + 1)
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                log.info("election %s: campaign retry after %s", self.name, exc)
                await _BACKOFF.pause(failures)

    async def _wait_until_deleted(self, start_revision: int) -> None:
        # Watching from the revision of our failed compare means a deletion right after it
        # is still delivered: no lost wake-up between "someone leads" and "watch".
        async with await self.client.watch(self.key, start_revision=start_revision) as stream:
            async for event in stream:
                if event.kind == "delete":
                    return
        # The stream ended without a delete (failover, client closing): look again.

    # -- the term ---------------------------------------------------------------------------------
    def _begin_term(self, revision: int) -> None:
        self._revision = revision
        self.lost = asyncio.Event()
        self.lost_reason = None
        log.info("election %s: became leader (lease %x, revision %d)", self.name, self.session.lease_id, revision)
        self._tasks.spawn(self._monitor(self.lost, revision), name=f"term-{revision}")

    def _end_term(self, lost: asyncio.Event, reason: str) -> None:
        if lost is self.lost and not lost.is_set():
            self.lost_reason = reason
            log.warning("election %s: leadership ended: %s", self.name, reason)
        lost.set()

    async def _monitor(self, lost: asyncio.Event, revision: int) -> None:
        reason = "monitor stopped"
        try:
            reason = await self.session.run(self._watch_ownership(revision))
        except LeaseLost as exc:
            reason = f"session lost: {exc}"
        except StoreClosed:
            reason = "etcd client closed"
        except asyncio.CancelledError:
            reason = "resigned or closed"
            raise
        finally:
            self._end_term(lost, reason)

    async def _watch_ownership(self, revision: int) -> str:
        """Return (with a reason) once the key is no longer ours."""
        lease_id = self.session.lease_id
        failures = 0
        while True:
            try:
                async with await self.client.watch(self.key, start_revision=revision + 1) as stream:
                    async for event in stream:
                        if event.kind == "delete":
                            return "leader key deleted"
                        if event.kv.lease != lease_id:
                            return f"leader key taken over by lease {event.kv.lease:x}"
                        revision = event.kv.mod_revision
                # Ended without news (failover): re-check below.
                current = await self.client.get(self.key)
                if current is None or current.lease != lease_id:
                    return "leader key gone while the watch was down"
                revision = current.mod_revision
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                log.info("election %s: monitor retry after %s", self.name, exc)
                await _BACKOFF.pause(failures)

    async def resign(self) -> None:
        """Give up leadership (no-op if not leader): the term ends now, then the key is
        deleted if it is still ours so a waiting candidate takes over at once."""
        if not self.is_leader:
            return
        lost, revision = self.lost, self._revision
        self.lost_reason = "resigned"
        lost.set()
        await self._tasks.close()
        self._tasks = TaskSupervisor(f"election-{self.name}")
        if not self.session.is_lost:
            await self.client.delete_if_mod_revision(self.key, revision)

    async def close(self) -> None:
        """Resign if leader (best effort) and stop the monitor. Idempotent."""
        try:
            await self.resign()
        except (StoreUnavailable, StoreClosed) as exc:
            log.info("election %s: resign on close failed (%s); the lease will drop the key", self.name, exc)
        finally:
            await self._tasks.close()

