"""The leader's seat: campaign for a leader key, run the leader's work while elected, and
campaign again when the term ends (resigned, lease lost, key taken over).

Every controller replica runs one `Leadership` over the fabric's `leader` key, with the
`Controller` as its term; operator replicas do the same over `operator-leader`. etcd's
election makes at most one replica lead at a time; when the leader dies another leads
within the lease TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from mesh.aio.backoff import Backoff
from mesh.aio.tasks import cancel_and_wait
from mesh.etcd.client import EtcdClient
from mesh.etcd.election import Election
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError, StoreUnavailable
from mesh.etcd.session import LeaseSession

__all__ = ["Leadership", "Term"]

log = logging.getLogger(__name__)

#: Pacing of new campaigns after a lost session (a fresh lease each time).
CAMPAIGN_BACKOFF = Backoff(initial_s=0.2, max_s=2.0)
#: Pacing after etcd refused the election itself: a configuration problem, do not spin.
REFUSED_BACKOFF = Backoff(initial_s=2.0, max_s=2.0, jitter=0.0)


class Term(AbstractAsyncContextManager, Protocol):
    """The leader's work for one term: entered when elected, `run()` until the term ends
    (then cancelled), exited after."""

    async def run(self) -> None: ...


class Leadership:
    """Campaigns for `key` and runs a term from `make_term` each time it is elected.

    `run(stop)` returns when `stop` is set (resigning on the way out, so the next replica
    takes over at once) or the client is closed. `is_leader` is True during a term.
    """

    def __init__(self, client: EtcdClient, key: str, *, replica_id: str, address: str, lease_ttl_s: int,
                 make_term: Callable[[], Term], name: str = "controller") -> None:
        self.replica_id = replica_id
        self.is_leader = False
        self._client = client
        self._key = key
        self._value = {"id": replica_id, "address": address}
        self._lease_ttl_s = lease_ttl_s
        self._make_term = make_term
        self._name = name

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead while elected, campaign again; until `stop`."""
        failures = 0
        while not stop.is_set():
            try:
                async with LeaseSession(self._client, self._lease_ttl_s, name=self._name) as session:
                    async with Election(session, self._key, self._value, name=self._name) as election:
                        await election.campaign()
                        failures = 0
                        await self._term(election, stop)
            except (LeaseLost, StoreUnavailable, StoreClosed) as error:
                if stop.is_set() or self._client.closed:
                    return
                failures += 1
                log.warning("%s: leadership session ended (%s); campaigning again", self._name, error)
                await CAMPAIGN_BACKOFF.pause(failures, until=stop)
            except StoreError:
                log.exception("%s: etcd refused the election; retrying", self._name)
                await REFUSED_BACKOFF.pause(1, until=stop)

    async def _term(self, election: Election, stop: asyncio.Event) -> None:
        log.info("%s %s: leading (%s)", self._name, self.replica_id, self._key)
        self.is_leader = True
        try:
            async with self._make_term() as term:
                run = asyncio.ensure_future(term.run())
                waits = [asyncio.ensure_future(election.lost.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait([run, *waits], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait([run, *waits])
        finally:
            self.is_leader = False
        if not stop.is_set():
            log.warning("%s %s: leadership lost (%s)", self._name, self.replica_id, election.lost_reason)
