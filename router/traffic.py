"""The router's own traffic as running totals, for readers inside the process (the dashboard).

`TrafficCounters` is a call and routing observer (the same hooks `RouterMetrics` has), so
the dashboard reads plain numbers instead of scraping Prometheus text; `Observers` hands
every hook to several observers. Each hook is a few integer additions (the request path
stays cheap); nothing here blocks, allocates per call or imports a metrics library.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Observers", "TrafficCounters", "TrafficTotals"]


class TrafficTotals(NamedTuple):
    """Totals since the router started; readers take differences between two readings."""

    requests: int  # V2 calls answered, any status
    errors: int  # of those, answered with a status other than OK
    cache_misses: int  # calls that waited for a load
    miss_seconds: float  # time those calls waited, summed
    retries: int  # forwards retried on another copy


class TrafficCounters:
    """Running totals of the calls this router answered and the misses it waited for."""

    __slots__ = ("_requests", "_errors", "_misses", "_miss_seconds", "_retries")

    per_model = False  # the fronts need not resolve model ids for these totals

    def __init__(self) -> None:
        self._requests = self._errors = self._misses = self._retries = 0
        self._miss_seconds = 0.0

    def observe_call(self, method: str, code: str, seconds: float, request_bytes: int | None = None,
                     response_bytes: int | None = None, model_id: str = "", vmodel_id: str = "") -> None:
        self._requests += 1
        if code != "OK":
            self._errors += 1

    def cache_miss(self, seconds: float, model_id: str = "") -> None:
        self._misses += 1
        self._miss_seconds += seconds

    def retried(self, reason: str) -> None:
        self._retries += 1

    def totals(self) -> TrafficTotals:
        return TrafficTotals(self._requests, self._errors, self._misses, self._miss_seconds, self._retries)


class Observers:
    """Fans each observer hook out to `targets`, in order, with the arguments it was given
    (each target must be quick). `per_model`: some target wants the call's model ids."""

    def __init__(self, *targets) -> None:
        self._targets = targets
        self.per_model = any(getattr(t, "per_model", False) for t in targets)

    def observe_call(self, *args, **kwargs) -> None:
        for target in self._targets:
            target.observe_call(*args, **kwargs)

    def cache_miss(self, *args, **kwargs) -> None:
        for target in self._targets:
            target.cache_miss(*args, **kwargs)

    def retried(self, reason: str) -> None:
        for target in self._targets:
            target.retried(reason)
