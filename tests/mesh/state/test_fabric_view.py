"""FabricView: typed records, the holders index, and waiting on the sync state."""

from __future__ import annotations

import pytest

from mesh.state.fabric_view import FabricView
from mesh.domain.records import HeldCopy, InstanceRecord, ModelRecord, to_document

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_holders_index_follows_instance_records(etcd, keys):
    async with FabricView(etcd, keys) as view:
        await view.wait_ready(10)
        await etcd.put(keys.model("m"), to_document(ModelRecord("m", "onnx", "/x")))
        record = InstanceRecord("i1", "127.0.0.1:1", 100, copies={"m": HeldCopy(10, 1), "n": HeldCopy(10, 1, loading=True)})
        await etcd.put(keys.instance("i1"), to_document(record))
        await view.wait_for(lambda: view.loaded_on("m") == ["i1"], 10)
        assert view.loaded_on("n") == [] and list(view.copies_of("n")) == ["i1"]
        await etcd.put(keys.instance("i1"), to_document(InstanceRecord("i1", "127.0.0.1:1", 100)))
        await view.wait_for(lambda: not view.copies_of("m"), 10)
        await etcd.put(keys.instance("bad"), {"instance_id": 5})  # malformed: left out, not fatal
        await etcd.delete(keys.instance("i1"))
        await view.wait_for(lambda: not view.all_instances(), 10)
        # The models mirror has its own watch: wait for it rather than assume it kept pace.
        record = await view.wait_for(lambda: view.model("m"), 10)
        assert record.model_type == "onnx" and view.model_revision("m") > 0


async def test_waiters_wake_when_the_sync_state_changes(private_etcd, private_client, keys):
    async with FabricView(private_client, keys) as view:
        await view.wait_in_sync(10)
        await private_etcd.astop()
        await view.wait_for(lambda: not view.in_sync, 15)
        assert view.is_ready(), "a view that read etcd once stays ready while etcd is away"
        await private_etcd.astart()
        await view.wait_for(lambda: view.in_sync, 30)
