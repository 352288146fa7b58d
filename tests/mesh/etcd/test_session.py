"""LeaseSession against a real etcd: keepalive, expiry, loss, re-establishing."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.etcd.store import EtcdClient, Keys, LeaseLost, LeaseSession, Mirror
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_keys_under_session_are_bound_and_revoked_on_close(etcd: EtcdClient, keys: Keys) -> None:
    async with LeaseSession(etcd, ttl=5, name="agent") as session:
        await session.put(keys.instance("i1"), {"capacity": 10})
        kv = await etcd.get(keys.instance("i1"))
        assert kv is not None and kv.lease == session.lease_id
        assert 0 < await etcd.lease_ttl(session.lease_id) <= 5
        assert not session.is_lost
    assert session.is_lost and session.lost_reason == "closed"
    assert await etcd.get(keys.instance("i1")) is None  # revoked at once, not at TTL
    assert await etcd.lease_ttl(session.lease_id) == -1
    with pytest.raises(LeaseLost):
        await session.put(keys.instance("i1"), {})


async def test_keepalive_keeps_lease_past_its_ttl(etcd: EtcdClient, keys: Keys) -> None:
    async with LeaseSession(etcd, ttl=1) as session:
        await session.put(keys.instance("i1"), {"up": True})
        # Three TTLs without a loss: only the keepalive can make this hold.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                await session.lost.wait()
        kv = await etcd.get(keys.instance("i1"))
        assert kv is not None and kv.lease == session.lease_id


async def test_crashed_holder_lease_expires_and_bound_keys_go(
    etcd: EtcdClient, client_factory, etcd_server: EtcdServer, keys: Keys
) -> None:
    holder_client = client_factory(etcd_server)  # the "process" that will crash
    async with Mirror(etcd, keys.instances) as mirror:
        await mirror.wait_ready(5)
        async with LeaseSession(holder_client, ttl=1) as session:
            await session.put(keys.instance("i1"), {"up": True})
            await mirror.wait_for(lambda m: "i1" in m, timeout=5)
            # Crash: the holder stops talking to etcd without revoking anything.
            crashed_at = time.monotonic()
            await holder_client.close()
            await asyncio.wait_for(session.lost.wait(), 2)
            assert "closed" in (session.lost_reason or "")
            # etcd removes the key when the lease expires (TTL 1 s + its 0.5 s sweep).
            await mirror.wait_for(lambda m: "i1" not in m, timeout=5)
            assert time.monotonic() - crashed_at < 4
        assert await etcd.lease_ttl(session.lease_id) == -1


async def test_revoked_elsewhere_sets_lost_and_run_raises(etcd: EtcdClient, keys: Keys) -> None:
    async with LeaseSession(etcd, ttl=3, keepalive_interval=0.2) as session:
        never = asyncio.Event()
        work = asyncio.ensure_future(session.run(never.wait()))
        await etcd.revoke_lease(session.lease_id)  # e.g. an operator, or etcd itself
        await asyncio.wait_for(session.lost.wait(), 3)
        assert session.lost_reason == "lease expired or revoked at etcd"
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(work, 2)
        with pytest.raises(LeaseLost):
            await session.create_if_absent(keys.instance("i1"), {})


async def test_run_returns_result_while_lease_holds(etcd: EtcdClient) -> None:
    async with LeaseSession(etcd, ttl=5) as session:

        async def work() -> int:
            return 42

        assert await session.run(work()) == 42


async def test_lost_fires_when_etcd_down_longer_than_ttl_and_new_session_works(
    private_etcd: EtcdServer, private_client: EtcdClient
) -> None:
    keys = Keys(fabric="p")
    async with LeaseSession(private_client, ttl=1) as old:
        await old.put(keys.instance("i1"), {"gen": 1})
        stopped_at = time.monotonic()
        await private_etcd.astop()
        await asyncio.wait_for(old.lost.wait(), 4)
        lost_after = time.monotonic() - stopped_at
        assert "unreachable" in (old.lost_reason or "")
        # Not before the TTL could have run out (it was refreshed at most TTL/3 ago)...
        assert lost_after >= 1.0 / 3
        # ...and not much after it.
        assert lost_after < 1.0 + 1.0
        with pytest.raises(LeaseLost):
            await old.put(keys.instance("i1"), {"gen": 1})
        await private_etcd.astart()
        # Re-establish: a new session, a new lease, the agent republishes.
        async with LeaseSession(private_client, ttl=1) as new:
            assert new.lease_id != old.lease_id
            await new.put(keys.instance("i1"), {"gen": 2})
            kv = await private_client.get(keys.instance("i1"))
            assert kv is not None and kv.value == {"gen": 2} and kv.lease == new.lease_id
    # Closing the old session revoked its lease even though etcd had renewed it on restart.
    assert await private_client.lease_ttl(old.lease_id) == -1
