"""A per-request noise model of a rollout's traffic, for the decision-quality benchmark (bench/).

Each analysis interval, for many independent runs at once (numpy, one row per run):

* requests reach the router as a Poisson process of ``rate`` per second; each goes to the canary with
  probability ``weight / 100`` (so canary and stable counts are independent Poisson draws);
* every request of a track is an error (5xx), a timeout (abandoned at the router's canary timeout: a
  fallback and slow, not an error) or answered, with the track's ``Behaviour`` probabilities; half of the
  errors are on idempotent requests, which stable re-serves (fallbacks), as docs/metrics-contract.md counts;
* answered requests and errors take a latency from a lognormal body (``median_seconds``, ``sigma``) plus
  ``added_seconds``; a share ``slow_rate`` falls in a slow tail beyond the latency objective (objective +
  an exponential of mean 0.5 s). Latencies land in the router's histogram buckets, so slow counts are
  exact at the objective bound and p95s are what ``histogram_quantile`` would say.

With ``shadow_fraction`` above 0 the router also copies that share of stable's requests to the canary and
compares the answers: copies the canary answers (neither an error nor a timeout) are judged, and each
differs from stable's with the canary's ``mismatch_rate`` (wrong results, or a flaky comparison).

A ``Fault`` switches the canary to another behaviour from a given time. Everything is seeded.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

ROUTER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""The router's bucket bounds with the default 2 s objective (engine/backtest_engine/router/metrics.py)."""
OBJECTIVE_SECONDS = 2.0
CANARY_TIMEOUT_SECONDS = 5.0
IDEMPOTENT_SHARE = 0.5
SLOW_TAIL_MEAN_SECONDS = 0.5


@dataclass(frozen=True)
class Behaviour:
    """How one track answers, request by request."""

    error_rate: float = 0.005
    slow_rate: float = 0.01
    """Share of requests in the slow tail, beyond the latency objective."""
    timeout_rate: float = 0.0
    median_seconds: float = 0.12
    sigma: float = 0.6
    added_seconds: float = 0.0
    mismatch_rate: float = 0.0
    """Share of shadow comparisons whose result differs from stable's (as the canary)."""


@dataclass(frozen=True)
class Fault:
    """The canary behaves as ``behaviour`` from ``start_seconds`` after it first takes traffic."""

    behaviour: Behaviour
    start_seconds: float = 0.0


@dataclass(frozen=True)
class Traffic:
    """What one track did in one interval, for every run: counts, and cumulative bucket counts."""

    requests: Array
    errors: Array
    fallbacks: Array
    slow: Array
    buckets: Array
    """(runs, len(ROUTER_BUCKETS) + 1): cumulative counts per bound, the last column the total."""
    comparisons: Array | None = None
    """Shadow comparisons judged (the stable track's copies the canary answered), when shadowing is on."""
    mismatches: Array | None = None


@dataclass
class NoiseModel:
    """Draws intervals for ``runs`` rollouts at ``rate`` requests per second; stable stays ``stable``."""

    rate: float
    runs: int
    stable: Behaviour = field(default_factory=Behaviour)
    canary: Behaviour = field(default_factory=Behaviour)
    fault: Fault | None = None
    interval_seconds: float = 30.0
    seed: int = 0
    shadow_fraction: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def behaviour(self, seconds_since_start: float) -> Behaviour:
        """The canary's behaviour during the interval that ends ``seconds_since_start`` after it began."""
        fault = self.fault
        if fault is not None and seconds_since_start > fault.start_seconds:
            return fault.behaviour
        return self.canary

    def interval(self, canary_weight: Array, seconds_since_start: float) -> tuple[Traffic, Traffic]:
        """One interval for every run: (canary, stable). ``canary_weight`` is per run, 0-100."""
        expected = self.rate * self.interval_seconds
        weight = np.asarray(canary_weight, dtype=np.float64) / 100.0
        behaviour = self.behaviour(seconds_since_start)
        canary = self._track(self.rng.poisson(expected * weight), behaviour)
        stable = self._track(self.rng.poisson(expected * (1.0 - weight)), self.stable)
        if self.shadow_fraction > 0:
            answered = self.shadow_fraction * (1.0 - behaviour.error_rate - behaviour.timeout_rate)
            judged = self.rng.binomial(stable.requests.astype(np.int64), answered)
            stable = replace(
                stable,
                comparisons=judged.astype(np.float64),
                mismatches=self.rng.binomial(judged, behaviour.mismatch_rate).astype(np.float64),
            )
        return canary, stable

    def _track(self, requests: npt.NDArray[np.int64], behaviour: Behaviour) -> Traffic:
        kinds = self.rng.multinomial(
            requests, [behaviour.error_rate, behaviour.timeout_rate, 1 - behaviour.error_rate - behaviour.timeout_rate]
        )
        errors, timeouts = kinds[:, 0], kinds[:, 1]
        answered = requests - timeouts
        masses = _bucket_masses(behaviour)
        counts = self.rng.multinomial(answered, masses)  # per bucket, plus the last: above the highest bound
        timeout_bucket = next(i for i, bound in enumerate(ROUTER_BUCKETS) if bound >= CANARY_TIMEOUT_SECONDS)
        counts[:, timeout_bucket] += timeouts
        cumulative = np.cumsum(counts, axis=1).astype(np.float64)
        objective = ROUTER_BUCKETS.index(OBJECTIVE_SECONDS)
        fallbacks = self.rng.binomial(errors, IDEMPOTENT_SHARE) + timeouts
        return Traffic(
            requests=requests.astype(np.float64),
            errors=errors.astype(np.float64),
            fallbacks=fallbacks.astype(np.float64),
            slow=(cumulative[:, -1] - cumulative[:, objective]),
            buckets=cumulative,
        )


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _bucket_masses(behaviour: Behaviour) -> list[float]:
    """Probability of each bucket (between consecutive bounds), and of the space above the last bound."""
    shift, slow = behaviour.added_seconds, behaviour.slow_rate

    def body(seconds: float) -> float:
        if seconds <= shift:
            return 0.0
        return _normal_cdf((math.log(seconds - shift) - math.log(behaviour.median_seconds)) / behaviour.sigma)

    def tail(seconds: float) -> float:
        beyond = seconds - shift - OBJECTIVE_SECONDS
        return 0.0 if beyond <= 0 else 1.0 - math.exp(-beyond / SLOW_TAIL_MEAN_SECONDS)

    cdf = [(1 - slow) * body(bound) + slow * tail(bound) for bound in ROUTER_BUCKETS]
    masses = [cdf[0]] + [b - a for a, b in itertools.pairwise(cdf)] + [1.0 - cdf[-1]]
    clipped = [max(0.0, m) for m in masses]
    total = sum(clipped)
    return [m / total for m in clipped]
