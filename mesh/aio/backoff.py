"""Retry pacing: exponential backoff with jitter, written once for every retry loop in mesh.

Jitter spreads the retries of many processes that failed together (an etcd restart seen by
every instance at once), so they do not come back in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays of `initial_s * factor**(attempt-1)`, capped at `max_s`, each scaled by a random
    factor in `[1 - jitter, 1]`.

    `attempt` counts failures so far, from 1. Immutable: one policy is shared by any number
    of loops, each keeping its own attempt count.
    """

    initial_s: float = 0.05
    max_s: float = 1.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff {self}")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter: what `delay(attempt)` is at most."""
        attempt = max(1, attempt)
        if self.factor == 1:
            return self.initial_s
        # Past the cap the exponent no longer matters; bounding it avoids float overflow.
        steps = min(attempt - 1, 64)
        return min(self.max_s, self.initial_s * self.factor ** steps)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failure number `attempt` (1 = the first failure)."""
        return self.ceiling(attempt) * random.uniform(1.0 - self.jitter, 1.0)

    async def pause(self, attempt: int, until: asyncio.Event | None = None) -> bool:
        """Wait `delay(attempt)`, cut short when `until` is set. True if `until` ended it."""
        delay = self.delay(attempt)
        if until is None:
            await asyncio.sleep(delay)  # retry pacing, not synchronisation
            return False
        try:
            async with asyncio.timeout(delay):
                await until.wait()
        except TimeoutError:
            return False
        return True
