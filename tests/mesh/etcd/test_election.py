"""Election against a real etcd: one leader, take-over on close, crash and resign."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from mesh.etcd.store import Election, EtcdClient, Keys, LeaseLost, LeaseSession
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_one_leader_and_takeover_when_leader_session_closes(etcd: EtcdClient, keys: Keys) -> None:
    async with AsyncExitStack() as stack:
        session_b = await stack.enter_async_context(LeaseSession(etcd, ttl=5, name="b"))
        b = await stack.enter_async_context(Election(session_b, keys.leader, {"id": "b"}, name="b"))
        # a is closed by hand in the middle; the stack still cleans it up if we fail early.
        session_a = await stack.enter_async_context(LeaseSession(etcd, ttl=5, name="a"))
        a = await stack.enter_async_context(Election(session_a, keys.leader, {"id": "a"}, name="a"))
        await a.campaign(timeout=5)
        assert a.is_leader and not a.lost.is_set()

        b_campaign = asyncio.ensure_future(b.campaign(timeout=10))
        stack.push_async_callback(_cancel_and_wait, b_campaign)
        # b is now campaigning; it must not win while a holds the key.
        leader = await b.leader()
        assert leader is not None and leader.value == {"id": "a"} and leader.lease == session_a.lease_id
        assert not b_campaign.done() and not b.is_leader

        a_term = a.lost
        await a.close()
        await session_a.close()
        await asyncio.wait_for(b_campaign, 5)
        assert b.is_leader and not a.is_leader and a_term.is_set()
        leader = await b.leader()
        assert leader is not None and leader.value == {"id": "b"} and leader.lease == session_b.lease_id
        await b.close()
        # Closing b's election resigned: the key is gone at once.
        assert b.lost.is_set() and b.lost_reason == "resigned"
        assert await etcd.get(keys.leader) is None


async def _cancel_and_wait(task: asyncio.Future[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_crashed_leader_is_replaced_within_ttl(
    etcd: EtcdClient, client_factory, etcd_server: EtcdServer, keys: Keys
) -> None:
    crashing_client = client_factory(etcd_server)
    async with LeaseSession(crashing_client, ttl=1, name="a") as session_a, Election(
        session_a, keys.leader, {"id": "a"}, name="a"
    ) as a, LeaseSession(etcd, ttl=1, name="b") as session_b, Election(
        session_b, keys.leader, {"id": "b"}, name="b"
    ) as b:
        await a.campaign(timeout=5)
        b_campaign = asyncio.ensure_future(b.campaign(timeout=10))
        crashed_at = time.monotonic()
        await crashing_client.close()  # a's process dies: no resign, no revoke
        # a learns at once that it can no longer be sure it leads...
        await asyncio.wait_for(a.lost.wait(), 2)
        assert not a.is_leader and a.lost_reason
        # ...and b takes over once etcd expires a's lease.
        await asyncio.wait_for(b_campaign, 5)
        assert b.is_leader
        assert time.monotonic() - crashed_at < 1 + 0.5 + 2.5  # TTL + etcd sweep + slack


async def test_resign_hands_over_and_key_deleted_by_others_ends_term(etcd: EtcdClient, keys: Keys) -> None:
    async with LeaseSession(etcd, ttl=5) as sa, LeaseSession(etcd, ttl=5) as sb:
        async with Election(sa, keys.leader, {"id": "a"}, name="a") as a, Election(
            sb, keys.leader, {"id": "b"}, name="b"
        ) as b:
            await a.campaign(timeout=5)
            term = a.lost
            b_campaign = asyncio.ensure_future(b.campaign(timeout=10))
            await a.resign()
            assert term.is_set() and a.lost_reason == "resigned"
            await asyncio.wait_for(b_campaign, 5)
            assert b.is_leader

            # An operator deletes the key: b's term ends without its session ending.
            await etcd.delete(keys.leader)
            await asyncio.wait_for(b.lost.wait(), 5)
            assert b.lost_reason == "leader key deleted" and not sb.is_lost
            # The same session can campaign again, for a new term.
            await b.campaign(timeout=5)
            assert b.is_leader and b.lost is not term


async def test_campaign_on_lost_session_raises(etcd: EtcdClient, keys: Keys) -> None:
    session = LeaseSession(etcd, ttl=5)
    await session.__aenter__()
    await session.close()
    election = Election(session, keys.leader, {"id": "x"})
    with pytest.raises(LeaseLost):
        await election.campaign(timeout=5)
    assert not election.is_leader
    await election.close()


async def test_campaign_timeout(etcd: EtcdClient, keys: Keys) -> None:
    async with LeaseSession(etcd, ttl=5) as sa, LeaseSession(etcd, ttl=5) as sb:
        async with Election(sa, keys.leader, {"id": "a"}) as a, Election(sb, keys.leader, {"id": "b"}) as b:
            await a.campaign(timeout=5)
            with pytest.raises(TimeoutError):
                await b.campaign(timeout=0.3)
            assert a.is_leader and not b.is_leader
