"""Calls as the router's metrics and dashboard count them, whichever front took them.

`CallObserver` is what `router.metrics.RouterMetrics` (and the dashboard's counters) offer;
`observe_forward` records one forwarded call on it. The gRPC front observes its calls itself
(it knows the caller's metadata); the REST fronts (V2 and V1) forward through an
`ObservedDataPlane`, so a REST call counts as the V2 call it became (`ModelInfer`, ...), as
ModelMesh counts what its REST proxy sends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from router.dataplane import DataPlane
from router.errors import RouterError
from router.routing import Reply

__all__ = ["CallObserver", "ObservedDataPlane", "observe_forward"]


class CallObserver(Protocol):
    """Hooks for metrics; `per_model`: it wants the call's model and vmodel ids (resolved
    once more per call, so only when asked)."""

    per_model: bool

    def observe_call(self, method: str, code: str, seconds: float, request_bytes: int | None = None,
                     response_bytes: int | None = None, model_id: str = "", vmodel_id: str = "") -> None: ...


def observe_forward(observer: CallObserver, dataplane: DataPlane, method: str, code: str, started: float,
                    body: bytes, reply: bytes | None, model_header: str | None, vmodel_header: str | None) -> None:
    """Record one forwarded call (`started`: its `time.perf_counter()` at arrival)."""
    seconds = time.perf_counter() - started
    response_bytes = None if reply is None else len(reply)
    if observer.per_model:
        model_id, vmodel_id = dataplane.call_labels(body, model_header, vmodel_header)
        observer.observe_call(method, code, seconds, len(body), response_bytes, model_id, vmodel_id)
    else:
        observer.observe_call(method, code, seconds, len(body), response_bytes)


class ObservedDataPlane:
    """A `DataPlane` whose `forward` records each call on `observer`; the rest is the dataplane's."""

    def __init__(self, dataplane: DataPlane, observer: CallObserver) -> None:
        self._dataplane = dataplane
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataplane, name)

    async def forward(self, method: str, body: bytes, metadata: Sequence[tuple[str, str | bytes]] | None,
                      timeout: float | None, model_header: str | None = None,
                      vmodel_header: str | None = None) -> Reply:
        started = time.perf_counter()
        name = method.rpartition("/")[2]
        code, reply = "INTERNAL", None
        try:
            result = await self._dataplane.forward(method, body, metadata, timeout, model_header, vmodel_header)
            code, reply = "OK", result.body
            return result
        except RouterError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            observe_forward(self._observer, self._dataplane, name, code, started, body, reply, model_header,
                            vmodel_header)
