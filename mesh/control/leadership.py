"""The leader's seat: campaign for the fabric's `leader` key, run the `Controller` while
elected, and campaign again when the term ends (resigned, lease lost, key taken over).

Every controller replica runs one `Leadership`; etcd's election makes at most one of them
lead at a time. When the leader dies another replica leads within the lease TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.aio.backoff import Backoff
from mesh.aio.tasks import cancel_and_wait
from mesh.control.controller import Controller
from mesh.etcd.client import EtcdClient
from mesh.etcd.election import Election
from mesh.etcd.errors import LeaseLost, StoreClosed, StoreError, StoreUnavailable
from mesh.etcd.keys import Keys
from mesh.etcd.session import LeaseSession

__all__ = ["Leadership"]

log = logging.getLogger(__name__)

#: Pacing of new campaigns after a lost session (a fresh lease each time).
CAMPAIGN_BACKOFF = Backoff(initial_s=0.2, max_s=2.0)
#: Pacing after etcd refused the election itself: a configuration problem, do not spin.
REFUSED_BACKOFF = Backoff(initial_s=2.0, max_s=2.0, jitter=0.0)


class Leadership:
    """Campaigns for `keys.leader` and runs a controller from `make_controller` each term.

    `run(stop)` returns when `stop` is set (resigning on the way out, so the next replica
    takes over at once) or the client is closed. `is_leader` is True during a term.
    """

    def __init__(self, client: EtcdClient, keys: Keys, *, replica_id: str, address: str, lease_ttl_s: int,
                 make_controller: Callable[[], Controller]) -> None:
        self.replica_id = replica_id
        self.is_leader = False
        self._client = client
        self._keys = keys
        self._value = {"id": replica_id, "address": address}
        self._lease_ttl_s = lease_ttl_s
        self._make_controller = make_controller

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead while elected, campaign again; until `stop`."""
        failures = 0
        while not stop.is_set():
            try:
                async with LeaseSession(self._client, self._lease_ttl_s, name="controller") as session:
                    async with Election(session, self._keys.leader, self._value, name="controller") as election:
                        await election.campaign()
                        failures = 0
                        await self._term(election, stop)
            except (LeaseLost, StoreUnavailable, StoreClosed) as error:
                if stop.is_set() or self._client.closed:
                    return
                failures += 1
                log.warning("controller: leadership session ended (%s); campaigning again", error)
                await CAMPAIGN_BACKOFF.pause(failures, until=stop)
            except StoreError:
                log.exception("controller: etcd refused the election; retrying")
                await REFUSED_BACKOFF.pause(1, until=stop)

    async def _term(self, election: Election, stop: asyncio.Event) -> None:
        log.info("controller %s: leading fabric %s", self.replica_id, self._keys.fabric)
        self.is_leader = True
        try:
            async with self._make_controller() as controller:
                run = asyncio.ensure_future(controller.run())
                waits = [asyncio.ensure_future(election.lost.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait([run, *waits], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait([run, *waits])
        finally:
            self.is_leader = False
        if not stop.is_set():
            log.warning("controller %s: leadership lost (%s)", self.replica_id, election.lost_reason)
