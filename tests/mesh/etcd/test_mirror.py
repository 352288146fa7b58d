"""Mirror against a real etcd: sync, listeners, wait_for, re-sync after breaks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mesh.etcd.store import Change, EtcdClient, Entry, Keys, Mirror, StoreClosed
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_initial_sync_then_live_updates(etcd: EtcdClient, keys: Keys) -> None:
    first = await etcd.put(keys.model("a"), {"v": 1})
    await etcd.put(keys.vmodel("a"), {"not": "mirrored"})
    async with Mirror(etcd, keys.models) as mirror:
        await mirror.wait_ready(5)
        assert dict(mirror) == {"a": Entry({"v": 1}, first)}
        await mirror.wait_for(lambda m: m.in_sync, 5)
        assert mirror.syncs == 1

        rev_b = await etcd.put(keys.model("b"), {"v": 2})
        await mirror.wait_for_revision(rev_b, 5)
        assert mirror["b"] == Entry({"v": 2}, rev_b)
        assert mirror.value("b") == {"v": 2} and mirror.value("zz", "dflt") == "dflt"

        rev_del = (await etcd.delete_if_mod_revision(keys.model("a"), first)).revision
        await mirror.wait_for_revision(rev_del, 5)
        assert "a" not in mirror and len(mirror) == 1 and list(mirror) == ["b"]
        assert mirror.revision == rev_del
        assert mirror.breaks == 0 and mirror.syncs == 1  # nothing was re-read


async def test_wait_for_wakes_on_change_and_returns_predicate_value(etcd: EtcdClient, keys: Keys) -> None:
    async with Mirror(etcd, keys.models) as mirror:
        await mirror.wait_ready(5)
        waiter = asyncio.ensure_future(
            mirror.wait_for(lambda m: (e := m.get("m")) is not None and e.value.get("state") == "loaded" and e, 5)
        )
        await etcd.put(keys.model("m"), {"state": "loading"})
        await mirror.wait_for(lambda m: "m" in m, 5)
        assert not waiter.done()  # woken by the change, and the predicate is still false
        rev = await etcd.put(keys.model("m"), {"state": "loaded"})
        entry = await asyncio.wait_for(waiter, 5)
        assert entry == Entry({"state": "loaded"}, rev)


async def test_wait_for_times_out_and_close_wakes_waiters(etcd: EtcdClient, keys: Keys) -> None:
    mirror = Mirror(etcd, keys.models)
    await mirror.start()
    await mirror.wait_ready(5)
    with pytest.raises(TimeoutError):
        await mirror.wait_for(lambda m: "never" in m, timeout=0.2)
    waiter = asyncio.ensure_future(mirror.wait_for(lambda m: "never" in m, timeout=10))
    await asyncio.sleep(0)  # let it start waiting
    await mirror.close()
    with pytest.raises(StoreClosed):
        await waiter


async def test_listeners_get_changes_and_bad_listener_is_isolated(etcd: EtcdClient, keys: Keys) -> None:
    seen: list[Change] = []

    def broken(_: Sequence[Change]) -> None:
        raise RuntimeError("listener bug")

    async with Mirror(etcd, keys.models) as mirror:
        mirror.subscribe(broken)
        unsubscribe = mirror.subscribe(seen.extend)
        await mirror.wait_ready(5)
        r1 = await etcd.put(keys.model("m"), {"v": 1})
        r2 = await etcd.put(keys.model("m"), {"v": 2})
        r3 = (await etcd.delete_if_mod_revision(keys.model("m"), r2)).revision
        await mirror.wait_for_revision(r3, 5)
        assert seen == [
            Change("put", "m", Entry({"v": 1}, r1), None),
            Change("put", "m", Entry({"v": 2}, r2), Entry({"v": 1}, r1)),
            Change("delete", "m", None, Entry({"v": 2}, r2)),
        ]
        unsubscribe()
        r4 = await etcd.put(keys.model("n"), {})
        await mirror.wait_for_revision(r4, 5)
        assert len(seen) == 3


async def test_corrupt_value_is_left_out(etcd: EtcdClient, keys: Keys) -> None:
    await etcd._client.put(keys.model("bad").encode(), b"\xff not json")
    await etcd.put(keys.model("good"), {"ok": 1})
    async with Mirror(etcd, keys.models) as mirror:
        await mirror.wait_ready(5)
        assert set(mirror) == {"good"}
        await etcd._client.put(keys.model("good").encode(), b"oops")  # corrupted later
        await mirror.wait_for(lambda m: "good" not in m, 5)


class _CompactingMirror(Mirror):
    """Between the first range read and the watch, others write and etcd is compacted:
    the watch from `revision + 1` then asks for history that no longer exists."""

    def __init__(self, *args, writer: EtcdClient, keys: Keys, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._writer, self._keys = writer, keys
        self.compacted_at = 0

    async def _after_sync(self, revision: int) -> None:
        if self.syncs == 1:
            await self._writer.delete(self._keys.model("gone"))
            for i in range(3):
                self.compacted_at = await self._writer.put(self._keys.model("new"), {"i": i})
            await self._writer.compact(self.compacted_at)


async def test_resyncs_after_compaction(etcd: EtcdClient, keys: Keys) -> None:
    gone_rev = await etcd.put(keys.model("gone"), {"old": True})
    await etcd.put(keys.model("kept"), {"old": True})
    seen: list[Change] = []
    async with _CompactingMirror(etcd, keys.models, writer=etcd, keys=keys) as mirror:
        mirror.subscribe(seen.extend)
        await mirror.wait_for(lambda m: m.syncs >= 2 and m.in_sync, 10)
        assert mirror.breaks >= 1
        assert set(mirror) == {"kept", "new"}
        assert mirror["new"] == Entry({"i": 2}, mirror.compacted_at)
        # The re-sync told listeners what changed while the watch was away.
        assert Change("delete", "gone", None, Entry({"old": True}, gone_rev)) in seen
        assert any(c.kind == "put" and c.name == "new" for c in seen)
        # And it follows live changes again.
        rev = await etcd.put(keys.model("after"), {})
        await mirror.wait_for_revision(rev, 5)
        assert "after" in mirror


async def test_resyncs_after_etcd_stop_and_restart(
    private_etcd: EtcdServer, private_client: EtcdClient, client_factory
) -> None:
    keys = Keys(fabric="p")
    await private_client.put(keys.model("a"), {"v": 1})
    await private_client.put(keys.model("b"), {"v": 1})
    async with Mirror(private_client, keys.models) as mirror:
        await mirror.wait_for(lambda m: m.in_sync, 5)
        await private_etcd.astop()
        await mirror.wait_for(lambda m: not m.in_sync, 5)
        # The data path keeps reading the last view while etcd is down.
        assert mirror.value("a") == {"v": 1} and mirror.value("b") == {"v": 1}
        await private_etcd.astart()
        writer = client_factory(private_etcd)
        await writer.delete(keys.model("a"))
        rev = await writer.put(keys.model("c"), {"v": 2})
        await mirror.wait_for(lambda m: m.in_sync and m.revision >= rev, 10)
        assert set(mirror) == {"b", "c"}
        assert mirror.breaks >= 1 and mirror.syncs >= 2
