"""Per-key token buckets: `rate` requests per minute on average, bursts up to `rate`.

A bucket refills continuously, so a client that exceeds the limit learns exactly how long to wait
(`Retry-After`) instead of guessing. The clock is injected so tests never sleep.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key; `take(key)` returns 0 when allowed, else the seconds to wait (>= 1)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def take(self, key: str) -> int:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max_keys:  # bounded memory: full buckets are the same as none
                    self._buckets = {k: b for k, b in self._buckets.items() if self._level(b, now) < self.capacity}
                bucket = self._buckets[key] = _Bucket(self.capacity, now)
            bucket.tokens = self._level(bucket, now)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) / self.refill_per_second))

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_second)
