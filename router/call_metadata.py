"""A gRPC caller's metadata and deadline as the fronts pass them on (pure).

`split_metadata` takes off what belongs to this hop (transport headers) and the routing
headers; `budget` is the time the router gives a call out of the caller's deadline.
"""

from __future__ import annotations

from router.dataplane import MODEL_HEADER, TRIED_HEADER, VMODEL_HEADER

__all__ = ["budget", "split_metadata"]

# Headers that belong to this hop (HTTP/2 and gRPC transport), not to the caller; the
# caller's credential is the router's to check (`mesh.api.auth`), never the instances' to see.
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "host", "connection", "accept-encoding",
                          "content-length", "authorization", MODEL_HEADER, VMODEL_HEADER, TRIED_HEADER})


#: The router gives up this much before the caller's deadline (at most 10 % of it), so its
#: DEADLINE_EXCEEDED, which says what it was waiting for, reaches the caller before the
#: caller's own bare "Deadline Exceeded".
_ANSWER_MARGIN_S = 0.05


def budget(remaining: float | None) -> float | None:
    if remaining is None:
        return None
    return max(remaining - min(_ANSWER_MARGIN_S, remaining * 0.1), 0.0)


def split_metadata(metadata) -> tuple[object, str | None, str | None, str | None]:
    """(metadata to pass on, mm-model-id, mm-vmodel-id, meshserve-tried). Passes the caller's
    tuple on as it is when there is nothing to drop (the common case: no copy)."""
    if not metadata:
        return None, None, None, None
    for key, _ in metadata:
        if key in _HOP_HEADERS or key[0] == ":" or key.startswith("grpc-"):
            break
    else:
        return metadata, None, None, None
    model = vmodel = tried = None
    kept = []
    for key, value in metadata:
        if key == MODEL_HEADER:
            model = value
        elif key == VMODEL_HEADER:
            vmodel = value
        elif key == TRIED_HEADER:
            tried = value
        elif not (key in _HOP_HEADERS or key[0] == ":" or key.startswith("grpc-")):
            kept.append((key, value))
    return tuple(kept), model, vmodel, tried

