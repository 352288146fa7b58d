"""`ModelHolder`: what the instance agent needs of the models it seats in the fabric.

Two holders implement it, both on `runtimes.lifecycle.ModelLifecycle`:
`runtimes.model_manager.ModelManager`, the runtime in the agent's own process
(`meshserve runtime --etcd`), and `mesh.instance.remote.RemoteModels`, a runtime in another
process driven over the model-runtime SPI (`meshserve agent`). What the agent reads and does:

- `entries()`: per model, its `state` (LOADING, LOADED, UNLOADING), `reserved_bytes` (held
  or reserved), `last_used_ms`, `since_ms`, `in_flight` with its `idle` event, and its
  request counters (`stats`): what the record publishes (rates from the counters' growth)
  and what LRU eviction chooses from;
- `capacity_bytes` and `used_bytes` (loaded plus loads in progress, plus
  `backend_overhead_bytes`: what the process took for good to serve its formats); with a
  GPU, `device_capacity_bytes` (None: none) and `device_used_bytes`, and each entry's
  `device_bytes`, apart from host memory;
- `unload(model_id)`: eviction (it waits for requests in flight);
- `set_room_maker(hook)`: called with (model id, predicted bytes, predicted device bytes) before each load reserves
  its bytes, where the agent evicts LRU copies;
- `add_observer(observer)`: `model_loaded` / `model_load_failed` / `model_unloaded` after
  each, which the agent turns into model record writes.
"""

from __future__ import annotations

from typing import Protocol

from runtimes.lifecycle import LifecycleObserver, ModelEntry, RoomMaker, State

__all__ = ["LifecycleObserver", "ModelEntry", "ModelHolder", "RoomMaker", "State"]


class ModelHolder(Protocol):
    """The models of one instance, as the agent reads and drives them (see the module docstring)."""

    @property
    def capacity_bytes(self) -> int: ...

    @property
    def used_bytes(self) -> int: ...

    backend_overhead_bytes: int

    @property
    def device_capacity_bytes(self) -> int | None: ...

    @property
    def device_used_bytes(self) -> int: ...

    device_overhead_bytes: int

    def entries(self) -> dict[str, ModelEntry]: ...

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str | None = None) -> int: ...

    async def unload(self, model_id: str) -> None: ...

    def set_room_maker(self, make_room: RoomMaker | None) -> None: ...

    def add_observer(self, observer: LifecycleObserver) -> None: ...
