"""Per-key token buckets: `rate` requests per minute on average, bursts up to `rate`.

A bucket refills continuously, so a client that exceeds the limit learns exactly how long to wait
(`Retry-After`) instead of guessing. The clock is injected so tests never sleep. `RateLimiter` keeps the
buckets of one process; `SharedRateLimiter` keeps them in the database every replica uses, so a limit of N
per minute holds for the service as a whole, not N per replica.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from backtest_engine.service.schema import RATE_LIMITS

log = logging.getLogger("backtest_engine.service.ratelimit")


class Limiter(Protocol):
    def take(self, key: str) -> int:
        """0 when allowed, else the whole seconds to wait (>= 1)."""


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


class SharedRateLimiter:
    """The same limit shared by every replica, kept in the results database (GCRA, one upsert per request).

    GCRA (the generic cell rate algorithm) is a token bucket stored as one number per key: the
    theoretical arrival time (TAT) of the next request. A request at `now` is allowed when
    max(TAT, now) - now <= burst tolerance, and then moves TAT one emission interval (60 s / rate) on. The
    check and the move are a single conditional `INSERT ... ON CONFLICT DO UPDATE ... WHERE`, so replicas
    racing on one key cannot both take the last token. If the database cannot be reached, each replica
    falls back to its own bucket (the limit then holds per replica) rather than refusing every request.
    `now` is each replica's wall clock: NTP-level skew (milliseconds) is nothing against a minute.
    Measured in bench/results/ratelimit_shared.json: 3 replicas let through 0.993 of one bucket's allowance.
    """

    PRUNE_EVERY_SECONDS = 60.0

    def __init__(self, engine: Any, dialect: str, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.dialect = dialect
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * (per_minute - 1)  # a full bucket: bursts up to `per_minute`
        self._clock = clock
        self._fallback = RateLimiter(per_minute, clock=clock)
        self._pruned = clock()
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._insert = insert
        self._greatest = sa.func.greatest if dialect == "postgresql" else sa.func.max

    def take(self, key: str) -> int:
        now = self._clock()
        try:
            return self._take(key, now)
        except sa.exc.SQLAlchemyError:
            log.warning("event=shared_rate_limit_unavailable fallback=local", exc_info=True)
            return self._fallback.take(key)

    def _take(self, key: str, now: float) -> int:
        table = RATE_LIMITS
        start = self._greatest(table.c.tat, now)
        statement = (
            self._insert(table)
            .values(bucket=key, tat=now + self.interval)
            .on_conflict_do_update(
                index_elements=[table.c.bucket],
                set_={"tat": start + self.interval},
                where=start - now <= self.tolerance,
            )
            .returning(table.c.tat)
        )
        with self.engine.begin() as connection:
            allowed = connection.execute(statement).first() is not None
            if allowed:
                if now - self._pruned > self.PRUNE_EVERY_SECONDS:
                    self._pruned = now
                    connection.execute(table.delete().where(table.c.tat < now))  # full buckets: same as none
                return 0
            tat = connection.execute(sa.select(table.c.tat).where(table.c.bucket == key)).scalar()
        wait = float(tat or now) - now - self.tolerance
        return max(1, math.ceil(wait))
