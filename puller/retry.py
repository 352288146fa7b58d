"""Retry policy for transient storage failures (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries in all; before try ``n+1`` wait ``base_delay_s * 2**(n-1)``
    (capped at ``max_delay_s``), scaled by a random factor in [0.5, 1] so that many
    instances hitting the same failing store do not retry in step."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        raw = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, failed_attempts - 1)))
        return raw * (0.5 + 0.5 * (rng or random).random())
