"""`LeaseSession`: an etcd lease as a scoped object (after etcd's concurrency.Session)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Self, TypeVar

from mesh.etcd.client import JSON, CasResult, EtcdClient
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError, StoreUnavailable
from mesh.aio.tasks import AsyncClosing, TaskSupervisor, cancel_and_wait

__all__ = ["LeaseSession"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LeaseSession(AsyncClosing):
    """A lease granted on entry, kept alive in the background, revoked on exit.

    Guarantees:
    - while `lost` is not set, the lease existed at etcd no longer ago than its TTL
      (we count from when the last successful keepalive was *sent*, so our view errs on
      the side of "lost" and never believes in a lease etcd has already expired);
    - `lost` is set, once, when the lease expired or was revoked, when etcd could not be
      reached for a whole TTL, or when the session is closed; `lost_reason` says which.
      After that the session never recovers: keys put under it are (or will be) deleted;
    - on exit the keepalive task is cancelled and awaited and the lease is revoked (best
      effort, bounded by the client's call timeout) so its keys go at once, not at TTL.

    Failure: entering raises `StoreUnavailable`/`StoreError` if the lease can't be
    granted. Writes through the session raise `LeaseLost` once it is lost.

    What the caller must do: run lease-bound work under `run()` (or watch `lost`) so it
    stops when the lease goes, and open a *new* session to continue, e.g.

        while True:
            async with LeaseSession(client, ttl=10) as session:
                await session.put(keys.instance(me), record)
                await session.run(serve_forever())   # raises LeaseLost when lost
    """

    def __init__(
        self,
        client: EtcdClient,
        ttl: int = 10,
        *,
        keepalive_interval: float | None = None,
        name: str = "lease",
    ) -> None:
        if ttl < 1:
            raise ValueError("lease TTL must be at least 1 second")
        self.client = client
        self.requested_ttl = ttl
        self.name = name
        self._keepalive_interval = keepalive_interval
        self._lease_id: int | None = None
        self.ttl: int = ttl
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._tasks = TaskSupervisor(f"session-{name}")
        self._closed = False

    # -- state ----------------------------------------------------------------------------
    @property
    def lease_id(self) -> int:
        """The lease id; raises `RuntimeError` before the session is entered."""
        if self._lease_id is None:
            raise RuntimeError("LeaseSession not started (use `async with`)")
        return self._lease_id

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set()

    def check(self) -> None:
        """Raise `LeaseLost` if the session is lost."""
        if self.lost.is_set():
            raise LeaseLost(f"lease {self._lease_id or 0:x} lost: {self.lost_reason}")

    def _mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            level = logging.INFO if reason == "closed" else logging.WARNING  # a clean close is not news
            log.log(level, "etcd lease %x (%s) lost: %s", self._lease_id or 0, self.name, reason)

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self._lease_id, self.ttl = await self.client.grant_lease(self.requested_ttl)
        self._tasks.spawn(self._keepalive(sent + self.ttl), name=f"keepalive-{self._lease_id:x}")
        return self


    async def close(self) -> None:
        """Stop the keepalive, revoke the lease (best effort) and set `lost`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        if self._lease_id is not None:
            try:
                # Revoke even if we think it is lost: after an etcd restart the lease may
                # still exist (etcd renews leases on restart), with our keys under it.
                await self.client.revoke_lease(self._lease_id, retry=False)
            except StoreError as exc:
                log.info("etcd lease %x: revoke on close failed (%s); it expires by TTL",
                         self._lease_id, exc)
        self._mark_lost("closed")

    async def _keepalive(self, expires_at: float) -> None:
        """Refresh every TTL/3; on failure retry quickly until the lease would have
        expired, then declare it lost."""
        loop = asyncio.get_running_loop()
        interval = self._keepalive_interval or max(self.ttl / 3.0, 0.1)
        retry_delay = min(0.2, interval)
        lease_id = self.lease_id
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, min(next_at, expires_at) - loop.time()))
            now = loop.time()
            if now >= expires_at:
                self._mark_lost(f"etcd unreachable for the lease TTL ({self.ttl}s)")
                return
            try:
                # One try, cut off when the lease would expire: a hung call must not hide
                # the expiry from us.
                ttl = await self.client.refresh_lease(
                    lease_id, retry=False, timeout=max(0.05, min(self.client.call_timeout, expires_at - now))
                )
            except StoreUnavailable as exc:
                log.debug("etcd lease %x: keepalive failed: %s", lease_id, exc)
                next_at = loop.time() + retry_delay
                continue
            except StoreClosed:
                self._mark_lost("etcd client closed")
                return
            except StoreError as exc:
                self._mark_lost(f"keepalive failed: {exc}")
                return
            if ttl <= 0:
                self._mark_lost("lease expired or revoked at etcd")
                return
            expires_at = now + ttl
            next_at = now + interval

    # -- work under the lease -------------------------------------------------------------------
    async def put(self, key: str, value: JSON) -> int:
        """Put `key` bound to this lease; returns its mod_revision. Raises `LeaseLost`."""
        self.check()
        try:
            return await self.client.put(key, value, lease=self.lease_id)
        except LeaseLost as exc:
            self._mark_lost(str(exc))
            raise

    async def create_if_absent(self, key: str, value: JSON) -> CasResult:
        """`EtcdClient.create_if_absent` with the key bound to this lease."""
        self.check()
        try:
            return await self.client.create_if_absent(key, value, lease=self.lease_id)
        except LeaseLost as exc:
            self._mark_lost(str(exc))
            raise

    async def put_if_mod_revision(self, key: str, value: JSON, mod_revision: int) -> CasResult:
        """`EtcdClient.put_if_mod_revision` with the key bound to this lease."""
        self.check()
        try:
            return await self.client.put_if_mod_revision(key, value, mod_revision, lease=self.lease_id)
        except LeaseLost as exc:
            self._mark_lost(str(exc))
            raise

    async def run(self, work: Awaitable[T]) -> T:
        """Await `work`, cancelling it and raising `LeaseLost` if the session is lost
        first. For leader-only work and placement claims."""
        if self.lost.is_set():
            if inspect.iscoroutine(work):
                work.close()  # never started; avoid "was never awaited"
            self.check()
        work_task = asyncio.ensure_future(work)
        lost_task = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({work_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Both are awaited here, whatever happens, so neither outlives this call.
            await cancel_and_wait((work_task, lost_task))
        if work_task in done:
            return work_task.result()
        raise LeaseLost(f"lease {self._lease_id or 0:x} lost: {self.lost_reason}")
