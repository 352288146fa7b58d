"""`Registration`: the instance record kept in etcd under a lease, for as long as the agent runs.

Guarantees:
- `run()` grants a lease, writes the record under it and sets `registered`; when the lease
  is lost (etcd down for longer than its TTL, or restarted without it) it clears
  `registered` and registers again under a new lease, with backoff, until `stop()`;
- every write of the record, the first under each lease and every later one through
  `put()`, goes one at a time with a document built at that moment, so writes land in
  order and the newest document is the one that stays;
- on `stop()` the session is left, not cancelled: leaving revokes the lease, so the record
  goes at once rather than at the TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.aio.backoff import Backoff
from mesh.etcd.client import EtcdClient
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError
from mesh.etcd.session import LeaseSession

__all__ = ["Registration"]

log = logging.getLogger(__name__)


class Registration:
    """Keeps `document()` at `key` under a live lease; `on_registered` runs after each registration.

    Failure: etcd errors are retried (forever, until `stop()`) and logged, loudly at first
    and then every tenth try; a closed client ends `run()`.
    """

    def __init__(self, client: EtcdClient, key: str, document: Callable[[], dict[str, Any]], *,
                 instance_id: str, lease_ttl_s: int, backoff: Backoff, on_registered: Callable[[], None]) -> None:
        self.registered = asyncio.Event()
        self._client = client
        self._key = key
        self._document = document
        self._instance_id = instance_id
        self._lease_ttl_s = lease_ttl_s
        self._backoff = backoff
        self._on_registered = on_registered
        self._session: LeaseSession | None = None
        self._put_lock = asyncio.Lock()  # one document-and-put at a time, so puts land in order
        self._stop = asyncio.Event()

    async def put(self) -> bool:
        """Write a fresh document under the current lease; False if no live lease holds the record.

        Raises what the write raises: `LeaseLost`, `StoreUnavailable`, `StoreClosed`.
        """
        session = self._session
        if session is None or session.is_lost:
            return False
        async with self._put_lock:
            if session is not self._session:  # the lease changed while this put waited its turn
                return False
            await session.put(self._key, self._document())
        return True

    def stop(self) -> None:
        """Leave the session (revoking the lease) and end `run()`."""
        self._stop.set()

    async def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                async with LeaseSession(self._client, self._lease_ttl_s, name=f"instance-{self._instance_id}") as session:
                    async with self._put_lock:
                        await session.put(self._key, self._document())
                    self._session = session
                    self.registered.set()
                    log.info("instance %s registered at %s (lease %x, ttl %ds)%s", self._instance_id,
                             self._key, session.lease_id, session.ttl,
                             f" after {failures} failed attempts" if failures else "")
                    failures = 0
                    self._on_registered()
                    await session.run(self._stop.wait())  # LeaseLost when the lease goes
            except StoreClosed:
                log.info("instance %s: etcd client closed; no longer registered", self._instance_id)
                return
            except StoreError as error:
                failures += 1
                if isinstance(error, LeaseLost):
                    log.warning("instance %s: lease lost (%s); serving on, registering again", self._instance_id, error)
                else:
                    # Loud at first and then every tenth try: an outage must not flood the log.
                    level = logging.WARNING if failures <= 3 or failures % 10 == 0 else logging.DEBUG
                    log.log(level, "instance %s: cannot register with etcd at %s (attempt %d): %s; serving on, "
                            "retrying in %.1fs", self._instance_id, ",".join(self._client.endpoints),
                            failures, error, self._backoff.ceiling(failures))
            finally:
                self._session = None
                self.registered.clear()
            if self._stop.is_set():
                return
            await self._backoff.pause(failures, until=self._stop)
