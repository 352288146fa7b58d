"""etcd key paths of one fabric, built in one place.

Pure module (no etcd client): every component that reads or writes etcd gets its keys
from a `Keys` instance, so the layout lives here and nowhere else.

Layout below the fabric prefix (default `/meshserve/<fabric>/`):

    models/<model-id>        registry record of a model (JSON)
    vmodels/<vmodel-id>      vmodel (alias) record (JSON)
    instances/<instance-id>  an instance's published state, bound to its lease (JSON)
    config/<name>            fabric-wide settings (JSON)
    leader                   the controller leader's record, bound to its lease (JSON)
    operator-leader          the Kubernetes operator leader's record (in the operator's home fabric)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "DEFAULT_ROOT", "DEFAULT_FABRIC"]

DEFAULT_ROOT = "/meshserve"
DEFAULT_FABRIC = "default"


def _check_segment(what: str, value: str) -> str:
    # A "/" in an id would make `models/a` a prefix of `models/a/b` and break the one
    # key-per-record rule that prefix watches depend on; NUL and control characters make
    # keys that etcdctl and logs can't show.
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if "/" in value or any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        raise ValueError(f"{what} must not contain '/' or control characters: {value!r}")
    return value


@dataclass(frozen=True)
class Keys:
    """Key paths for one fabric. Raises `ValueError` for an empty id, or one that holds
    '/' or a control character; the caller must validate ids at its own API edge first
    if it wants a friendlier message."""

    fabric: str = DEFAULT_FABRIC
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        _check_segment("fabric name", self.fabric)
        if not self.root.startswith("/") or self.root.endswith("/"):
            raise ValueError(f"root must start and not end with '/': {self.root!r}")

    @property
    def prefix(self) -> str:
        """`/meshserve/<fabric>/`; every key of the fabric starts with it."""
        return f"{self.root}/{self.fabric}/"

    def join(self, *segments: str) -> str:
        """A key below the prefix from validated segments (for layouts not named here)."""
        return self.prefix + "/".join(_check_segment("key segment", s) for s in segments)

    # -- collections: the prefix ends with "/" so it matches only whole segments --------
    @property
    def models(self) -> str:
        return self.prefix + "models/"

    @property
    def vmodels(self) -> str:
        return self.prefix + "vmodels/"

    @property
    def instances(self) -> str:
        return self.prefix + "instances/"

    @property
    def config(self) -> str:
        return self.prefix + "config/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def operator_leader(self) -> str:
        return self.prefix + "operator-leader"

    # -- records --------------------------------------------------------------------------
    def model(self, model_id: str) -> str:
        return self.models + _check_segment("model id", model_id)

    def vmodel(self, vmodel_id: str) -> str:
        return self.vmodels + _check_segment("vmodel id", vmodel_id)

    def instance(self, instance_id: str) -> str:
        return self.instances + _check_segment("instance id", instance_id)

    def config_item(self, name: str) -> str:
        return self.config + _check_segment("config name", name)

    @staticmethod
    def name_in(collection: str, key: str) -> str:
        """The id part of `key` below `collection` (e.g. the model id of a model key).
        Raises `ValueError` if `key` is not directly below `collection`."""
        if not key.startswith(collection) or "/" in key[len(collection):] or key == collection:
            raise ValueError(f"{key!r} is not a record directly below {collection!r}")
        return key[len(collection):]
