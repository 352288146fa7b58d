"""Which permission each served method needs (pure table, no gRPC).

Every method of every service a router or controller serves is listed here, as
`/<package.Service>/<Method>`. A method that is not listed is refused whenever auth is on
(fail closed): a new method gets no access until someone decides what it needs.
`tests/mesh/api/auth/test_permissions.py` walks the services' descriptors to prove the
table is complete.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

__all__ = ["METHOD_PERMISSIONS", "Permission", "permission_of"]


class Permission(enum.Enum):
    HEALTH = "health"  # always open: probes and reflection
    INFERENCE = "inference"  # V2 inference; open unless an inference token file is set
    MANAGEMENT = "management"  # the management API and the admin listings; implies inference


def _methods(service: str, names: Iterable[str], permission: Permission) -> dict[str, Permission]:
    return {f"/{service}/{name}": permission for name in names}


_INFERENCE_SERVICE = "inference.GRPCInferenceService"

METHOD_PERMISSIONS: Mapping[str, Permission] = {
    **_methods(_INFERENCE_SERVICE, ("ServerLive", "ServerReady"), Permission.HEALTH),
    **_methods(_INFERENCE_SERVICE, ("ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer",
                                    "ModelStreamInfer", "ModelConfig", "ModelStatistics"), Permission.INFERENCE),
    # Model control through the inference service (the router answers UNIMPLEMENTED; a
    # management caller should still be the only one who learns that).
    **_methods(_INFERENCE_SERVICE, ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
               Permission.MANAGEMENT),
    **_methods("mmesh.ModelMesh", ("registerModel", "unregisterModel", "getModelStatus", "ensureLoaded",
                                   "setVModel", "deleteVModel", "getVModelStatus"), Permission.MANAGEMENT),
    **_methods("meshserve.admin.MeshAdmin", ("listModels", "fabricStatus"), Permission.MANAGEMENT),
    **_methods("grpc.health.v1.Health", ("Check", "List", "Watch"), Permission.HEALTH),
    **_methods("grpc.reflection.v1alpha.ServerReflection", ("ServerReflectionInfo",), Permission.HEALTH),
    **_methods("grpc.reflection.v1.ServerReflection", ("ServerReflectionInfo",), Permission.HEALTH),
}


def permission_of(method: str) -> Permission | None:
    """The permission `method` (`/<service>/<Method>`) needs; None: not classified (refused)."""
    return METHOD_PERMISSIONS.get(method)
