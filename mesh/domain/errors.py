"""What can go wrong in the placement layer, independent of any transport (pure).

Every mesh error derives from `MeshError`; `mesh.api.status` maps each class to a gRPC
status once, in one table, and the router maps the ones its request path can meet.
`retryable` says whether trying the same thing again later may succeed. The etcd
adapter's errors (`mesh.etcd.errors.StoreError` and kin) derive from `MeshError` too.

The second bases (LookupError, ValueError, RuntimeError) are kept so that callers that
caught the builtin kinds keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "InvalidRequest",
    "LoadingFailed",
    "MeshError",
    "ModelAlreadyRegistered",
    "ModelInUse",
    "ModelNotRegistered",
    "NoCapacity",
    "NoLiveInstance",
    "NoSupportingRuntime",
    "PreconditionFailed",
    "RecordError",
    "RegistryConflict",
    "VModelNotFound",
]


class MeshError(Exception):
    """Base of the placement layer's errors. `str(error)` is the message a caller sees."""

    retryable: bool = False


class InvalidRequest(MeshError, ValueError):
    """The request is malformed; the message says which field and why."""


class RecordError(MeshError, ValueError):
    """A stored document is not a valid record."""


class ModelNotRegistered(MeshError, LookupError):
    """No record for this model id."""


class ModelAlreadyRegistered(MeshError, ValueError):
    """A different model (type, path or key) is registered under this id."""


class ModelInUse(MeshError, ValueError):
    """The model is still the target or active model of a vmodel."""


class RegistryConflict(MeshError, RuntimeError):
    """A change lost too many compare-and-set races in a row; the caller may retry later."""

    retryable = True


class VModelNotFound(MeshError, LookupError):
    """No vmodel with this id (and the request may not create one)."""


class PreconditionFailed(MeshError, ValueError):
    """The vmodel belongs to another owner, or its target is not the one the caller expected."""


class LoadingFailed(MeshError):
    """Every instance tried failed to load the model (or has a live failure record)."""

    def __init__(self, model_id: str, reasons: dict[str, str]) -> None:
        self.model_id = model_id
        self.reasons = dict(reasons)
        detail = "; ".join(f"on {instance}: {reason}" for instance, reason in sorted(reasons.items()))
        super().__init__(f"model '{model_id}' failed to load ({detail or 'no reason recorded'})")


class NoCapacity(MeshError):
    """No live instance can take the model (type not supported, or no room even after eviction)."""

    retryable = True


class NoSupportingRuntime(NoCapacity):
    """No live instance advertises every runtime label the model's type needs.

    Not a wait for room: no instance in the fleet can take the model until one with those
    labels joins (a runtime of that kind is started), so it is raised at once rather than
    retried, and the message names the labels so the operator can see what is missing.
    """

    retryable = False

    def __init__(self, model_id: str, labels: Iterable[str]) -> None:
        self.model_id = model_id
        self.labels = tuple(sorted(labels))
        wanted = "|".join(self.labels) or "(none)"
        super().__init__(f"cannot load '{model_id}': no live instance has the runtime labels {wanted} "
                         f"its model type needs (is a runtime serving that type running?)")


class NoLiveInstance(NoCapacity):
    """The fabric has no live instance at all (none registered, or every one shutting down).

    Not the model's type and not room: nothing can serve until a runtime (re)joins, which
    is an availability problem (UNAVAILABLE, retryable), not a capacity one.
    """

    retryable = True

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"cannot serve '{model_id}': the fabric has no live runtime instance (none is "
                         f"registered, or every one is shutting down); start a runtime or wait for one to join")
