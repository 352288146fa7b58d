"""Key layout (pure) and the task supervisor (no etcd)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh.etcd.keys import Keys
from mesh.aio.tasks import TaskSupervisor


def test_default_layout() -> None:
    keys = Keys(fabric="prod")
    assert keys.prefix == "/meshserve/prod/"
    assert keys.model("resnet") == "/meshserve/prod/models/resnet"
    assert keys.vmodel("alias") == "/meshserve/prod/vmodels/alias"
    assert keys.instance("pod-1") == "/meshserve/prod/instances/pod-1"
    assert keys.config_item("scaling") == "/meshserve/prod/config/scaling"
    assert keys.leader == "/meshserve/prod/leader"
    assert keys.join("claims", "m1") == "/meshserve/prod/claims/m1"
    assert Keys().prefix == "/meshserve/default/"
    assert Keys(fabric="f", root="/x/y").models == "/x/y/f/models/"


def test_collections_match_whole_segments_only() -> None:
    keys = Keys(fabric="f")
    # "models/" must not be a prefix of a sibling such as "models-archive/...".
    assert keys.models.endswith("/") and keys.instances.endswith("/")
    assert not keys.join("models-archive", "x").startswith(keys.models)
    # Fabrics are disjoint too: "f" is not a prefix of "f2".
    assert not Keys(fabric="f2").model("m").startswith(keys.prefix)
    assert Keys.name_in(keys.models, keys.model("m.v1")) == "m.v1"
    with pytest.raises(ValueError):
        Keys.name_in(keys.models, keys.vmodel("m"))


@pytest.mark.parametrize("bad", ["", "a/b", "tab\there", "nul\x00"])
def test_bad_ids_are_rejected(bad: str) -> None:
    keys = Keys()
    with pytest.raises(ValueError):
        keys.model(bad)
    with pytest.raises(ValueError):
        Keys(fabric=bad)


def test_bad_root_is_rejected() -> None:
    with pytest.raises(ValueError):
        Keys(root="meshserve")
    with pytest.raises(ValueError):
        Keys(root="/meshserve/")


async def test_supervisor_names_logs_and_cancels(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def boom() -> None:
        raise RuntimeError("boom")

    supervisor = TaskSupervisor("owner")
    long_task = supervisor.spawn(forever(), name="forever")
    failing = supervisor.spawn(boom(), name="boom")
    assert long_task.get_name() == "owner/forever"
    await asyncio.wait_for(started.wait(), 1)
    with caplog.at_level(logging.ERROR, logger="mesh.aio.tasks"):
        await asyncio.gather(failing, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert any("owner/boom" in r.getMessage() for r in caplog.records)
    assert supervisor.tasks == {long_task}
    await supervisor.close()
    assert long_task.cancelled() and not supervisor.tasks
    with pytest.raises(RuntimeError):
        supervisor.spawn(forever(), name="late")
