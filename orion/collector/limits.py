"""Per-key request rate limit: a token bucket for each API key.

Each key may make `rate` requests a second on average and `burst` at once; a request
that finds the bucket empty is answered 429 with the seconds until a token is back.

    python -c "from orion.collector.limits import RateLimiter; r = RateLimiter(1, 2); print([r.take('k') for _ in range(3)])"
"""
from __future__ import annotations

import math
import time
from typing import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        """rate: requests per second per key (0 or less: no limit); burst: bucket size
        (default: one second's worth, at least 1)."""
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    def take(self, key_id: str) -> float:
        """0.0 when the request may go on, else the seconds to wait (for Retry-After)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, when = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))
