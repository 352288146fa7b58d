"""The fabric's timings: one definition that every process reads, so that no two endpoints
(a router and a controller, say) disagree about whether a load is still in progress.

Pure data; `mesh.settings.FabricSettings` fills it from flags and `MESHSERVE_*` variables.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TIMINGS", "FabricTimings"]


@dataclass(frozen=True)
class FabricTimings:
    """How long the fabric waits for things, in milliseconds.

    - `loading_timeout_ms`: a load claim older than this no longer counts as "loading"
      (status shows it failed or gone; another instance may be tried). ModelMesh's 90 s.
    - `failure_expiry_ms`: a load failure keeps the model off that instance this long,
      so a broken model is not retried in a loop (ModelMesh keeps failures 10 min).
    """

    loading_timeout_ms: int = 90_000
    failure_expiry_ms: int = 600_000

    def __post_init__(self) -> None:
        if self.loading_timeout_ms <= 0 or self.failure_expiry_ms <= 0:
            raise ValueError(f"fabric timings must be positive: {self}")


DEFAULT_TIMINGS = FabricTimings()
