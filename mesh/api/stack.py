"""The management stack, built the same way wherever it is served (router and controller).

One function wires registry, vmodels, cache miss and the two servicers over a started
`FabricView`, with the fabric's timings, so two endpoints of one fabric never disagree on a
model's state (a router with default timings beside a controller with configured ones did).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from mesh.aio.tasks import AsyncClosing
from mesh.api.mesh_admin import MeshAdminServicer
from mesh.api.model_mesh import ModelMeshServicer
from mesh.control.cache_miss import CacheMiss, MissConfig
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.timings import FabricTimings
from mesh.etcd.client import EtcdClient
from mesh.etcd.keys import Keys
from mesh.state.fabric_view import FabricView
from mesh.state.registry import Registry
from mesh.state.vmodels import VModels
from protos import mesh_admin_pb2_grpc, model_mesh_pb2_grpc

__all__ = ["ManagementStack", "build_management"]


@dataclass
class ManagementStack(AsyncClosing):
    """What serves `mmesh.ModelMesh` and `meshserve.admin.MeshAdmin` for one process.

    `close()` stops the servicer's background loads, then the cache miss's; the caller owns
    (and closes afterwards) the client, the view and the runtime clients it passed in.
    """

    registry: Registry
    vmodels: VModels
    cache_miss: CacheMiss
    model_mesh: ModelMeshServicer
    mesh_admin: MeshAdminServicer

    def add_to_server(self, server: grpc.aio.Server) -> None:
        model_mesh_pb2_grpc.add_ModelMeshServicer_to_server(self.model_mesh, server)
        mesh_admin_pb2_grpc.add_MeshAdminServicer_to_server(self.mesh_admin, server)

    async def close(self) -> None:
        try:
            await self.model_mesh.close()
        finally:
            await self.cache_miss.close()


def build_management(client: EtcdClient, keys: Keys, view: FabricView, runtimes: RuntimeClients,
                     timings: FabricTimings) -> ManagementStack:
    """The management stack of one process over `view` (which the caller starts and closes)."""
    registry = Registry(client, keys)
    vmodels = VModels(client, keys, registry)
    cache_miss = CacheMiss(client, keys, view, runtimes, MissConfig(timings=timings))
    return ManagementStack(
        registry=registry,
        vmodels=vmodels,
        cache_miss=cache_miss,
        model_mesh=ModelMeshServicer(registry, view, cache_miss, vmodels, runtimes, timings=timings),
        mesh_admin=MeshAdminServicer(view, timings=timings),
    )
