"""One fabric per served namespace, as modelmesh-serving gives each namespace its own
model-mesh: its own etcd prefix, runtime Deployments and `modelmesh-serving` Service.

In namespace scope the one namespace uses the configured fabric name; in cluster scope each
namespace's fabric is named after the namespace. A namespace's `FabricView` is started the
first time a resource there needs it and lives until the operator stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mesh.aio.tasks import AsyncClosing
from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.control.runtime_client import RuntimeClients
from protos.tls import ClientTls
from mesh.domain.timings import FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.state.fabric_view import FabricView
from mesh.state.registry import Registry
from mesh.state.vmodels import VModels

__all__ = ["NamespaceFabric", "NamespaceFabrics"]


@dataclass
class NamespaceFabric:
    """The fabric of one namespace: its keys, watched view, registry, vmodels and loader."""

    namespace: str
    keys: Keys
    view: FabricView
    registry: Registry
    vmodels: VModels
    cache_miss: CacheMiss


class NamespaceFabrics(AsyncClosing):
    """Namespace -> its fabric, opened on first use over one shared etcd client."""

    def __init__(self, client: EtcdClient, *, etcd_root: str, fabric_of: Callable[[str], str],
                 timings: FabricTimings, on_change: Callable[[], None], tls: ClientTls | None = None) -> None:
        self._client = client
        self._timings = timings
        self._runtimes = RuntimeClients(tls=tls)  # cache-miss loads, over TLS in a TLS fabric
        self._root = etcd_root
        self._fabric_of = fabric_of
        self._on_change = on_change
        self._fabrics: dict[str, NamespaceFabric] = {}

    def fabric_name(self, namespace: str) -> str:
        return self._fabric_of(namespace)

    async def get(self, namespace: str) -> NamespaceFabric:
        fabric = self._fabrics.get(namespace)
        if fabric is None:
            keys = Keys(self._fabric_of(namespace), self._root)
            view = FabricView(self._client, keys)
            registry = Registry(self._client, keys)
            cache_miss = CacheMiss(self._client, keys, view, self._runtimes, MissConfig(timings=self._timings))
            fabric = NamespaceFabric(namespace, keys, view, registry, VModels(self._client, keys, registry), cache_miss)
            self._fabrics[namespace] = fabric
            view.subscribe(self._on_change)
            await view.start()
        return fabric

    def opened(self) -> list[NamespaceFabric]:
        return list(self._fabrics.values())

    async def close(self) -> None:
        for fabric in self._fabrics.values():
            await fabric.cache_miss.close()
            await fabric.view.close()
        self._fabrics.clear()
        await self._runtimes.close()
