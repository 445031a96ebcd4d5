"""Sequential evidence that a rate of bad events is above a limit, valid however often one looks.

The rollout looks at its canary every analysis interval. A test that is right 95% of the time per look is
wrong almost surely over two hundred looks, so every check that can roll back asks this module instead:
"given these bad events out of these trials, stretch by stretch since the check began, is it clear that
the rate is above ``limit``?" The answer comes with a guarantee that holds over *all* looks together: a
canary whose true rate is at or below the limit is declared over it with probability at most ``alpha``,
however long it runs and however often it is examined (docs/rollout-policy.md, "Statistics").

Two likelihood-ratio tests share the budget ``alpha``:

* the **anchored test** (``ANCHOR_SHARE`` of alpha) weighs everything since the check began: a mixture
  likelihood ratio (a Beta prior over the rates above the limit, so it needs no guess of how bad a fault
  is). Under the limit it is a non-negative supermartingale, so by Ville's inequality it ever reaches
  ``1/alpha`` with probability at most alpha;
* the **change test** (the rest) catches a fault that starts late, after a long healthy stretch that the
  anchored test would average away. For every stretch boundary ``k`` it weighs the data since ``k`` with a
  fixed alternative (``change_alternative``), against a threshold that grows with ``k`` so that the false
  alarms of all boundaries add up to at most its share (``alpha_k = share / (k (k + 1))``). The largest of
  these scores obeys a CUSUM-style recursion, so it costs one pass over the stretches.

Counts may be fractional (Prometheus extrapolates ``increase``); the formulas are continuous in them.
Everything works on numpy arrays as well as on single stretches, so the benchmark (bench/) runs this very
code over thousands of simulated rollouts at once. scipy is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
ArrayLike = float | Array

ANCHOR_SHARE = 0.9
"""Share of a check's alpha spent on the anchored test; the rest covers faults that start late."""


def warm_up() -> None:
    """Import scipy and run the tests once, so that the operator's first evaluation is not slowed by it.

    The command line imports scipy lazily (the kubectl plugin must start fast); the operator calls this
    at start, because a rollback decided a second late is a second of errors.
    """
    exceeds_limit([10.0, 10.0], [1.0, 1.0], 0.05, 0.01)
    log_mixture_ratio(1.0, 0.0, 0.5)


def prior(limit: ArrayLike) -> tuple[Array, Array]:
    """Beta(a, b) over the rates above ``limit``, mean about four times the limit (capped).

    The prior only decides how the evidence is averaged over possible fault sizes, never the guarantee:
    any prior supported above the limit keeps the false-alarm bound.
    """
    p0 = np.asarray(limit, dtype=np.float64)
    return np.ones_like(p0), np.maximum(1.0, 1.0 / (4.0 * p0) - 1.0)


def change_alternative(limit: ArrayLike) -> Array:
    """The "clearly bad" rate the change test listens for: twice the limit or 5 points more, if larger."""
    p0 = np.asarray(limit, dtype=np.float64)
    return np.asarray(np.minimum(p0 + np.maximum(p0, 0.05), (1.0 + p0) / 2.0), dtype=np.float64)


def log_mixture_ratio(trials: ArrayLike, events: ArrayLike, limit: ArrayLike) -> Array:
    """log of the anchored test's likelihood ratio: rates above ``limit`` (Beta prior) against ``limit``.

    Limits must lie strictly between 0 and 1.
    """
    from scipy.special import betainc, betaln  # noqa: PLC0415 - keeps scipy out of CLI start-up

    n = np.asarray(trials, dtype=np.float64)
    x = np.clip(np.asarray(events, dtype=np.float64), 0.0, n)
    p0 = np.asarray(limit, dtype=np.float64)
    a, b = prior(p0)
    with np.errstate(divide="ignore", invalid="ignore"):
        posterior_tail = np.log(betainc(b + n - x, a + x, 1.0 - p0))
        prior_tail = np.log(betainc(b, a, 1.0 - p0))
        null = x * np.log(p0) + (n - x) * np.log1p(-p0)
        result = betaln(a + x, b + n - x) + posterior_tail - betaln(a, b) - prior_tail - null
    return np.asarray(np.where(np.isnan(result), -np.inf, result), dtype=np.float64)


def change_increment(trials: ArrayLike, events: ArrayLike, limit: ArrayLike) -> Array:
    """log likelihood ratio of each stretch, ``change_alternative(limit)`` against ``limit``.

    Counts must satisfy 0 <= events <= trials (``exceeds_limit`` makes sure of it).
    """
    p0 = np.asarray(limit, dtype=np.float64)
    bad = change_alternative(p0)
    per_good = np.log((1.0 - bad) / (1.0 - p0))
    per_bad = np.log(bad / p0) - per_good
    return np.asarray(np.asarray(events) * per_bad + np.asarray(trials) * per_good, dtype=np.float64)


def anchor_threshold(alpha: float) -> float:
    """log of the likelihood ratio the anchored test must reach."""
    return math.log(1.0 / (ANCHOR_SHARE * alpha))


def change_threshold(alpha: float, start: ArrayLike) -> Array:
    """log threshold for the data since stretch boundary ``start`` (>= 1, counted in analysis intervals)."""
    k = np.asarray(start, dtype=np.float64)
    return np.asarray(np.log(k * (k + 1.0) / ((1.0 - ANCHOR_SHARE) * alpha)), dtype=np.float64)


@dataclass(frozen=True)
class Margins:
    """Per row: how far each test is past its threshold (>= 0: evidence), and where a change begins."""

    anchor: Array
    change: Array
    change_start: Array
    """Index of the stretch the best change score counts from (0 when there is none)."""

    @property
    def exceeded(self) -> Array:
        return np.asarray((self.anchor >= 0) | (self.change >= 0))


def margins(trials: Array, events: Array, limit: ArrayLike, alpha: float, stride: int = 1) -> Margins:
    """Both tests at once for many rows: ``trials`` and ``events`` are (rows, stretches), oldest first.

    Trailing stretches of zeros are harmless (they add no evidence), so rows of different lengths can be
    padded. Counts must satisfy 0 <= events <= trials; ``limit`` is one value or one per row, strictly
    between 0 and 1. This is the very computation ``exceeds_limit`` makes for one row; the benchmark calls
    it for thousands.
    """
    n, x = np.asarray(trials, dtype=np.float64), np.asarray(events, dtype=np.float64)
    rows, stretches = n.shape
    p0 = np.broadcast_to(np.asarray(limit, dtype=np.float64), (rows,))
    total_n, total_x = n.sum(axis=1), x.sum(axis=1)
    anchor = np.full(rows, -np.inf)
    # At or below the limit every likelihood ratio of the mixture is <= 1: no need to compute it.
    above = total_x > p0 * total_n
    if above.any():
        anchor[above] = log_mixture_ratio(total_n[above], total_x[above], p0[above]) - anchor_threshold(alpha)
    change, start = np.full(rows, -np.inf), np.zeros(rows, dtype=np.float64)
    if stretches < 2:
        return Margins(anchor, change, start)
    increments = change_increment(n[:, 1:], x[:, 1:], p0[:, None])
    # A row whose positive increments cannot reach the lowest threshold has no change to find.
    lowest = float(change_threshold(alpha, stride))
    candidates = np.flatnonzero(np.clip(increments, 0.0, None).sum(axis=1) >= lowest)
    if candidates.size:
        # The log ratio of the data since each boundary k >= 1 (suffix sums), against its own threshold.
        since = np.cumsum(increments[candidates, ::-1], axis=1)[:, ::-1]
        scores = since - change_threshold(alpha, np.arange(1, stretches, dtype=np.float64) * stride)
        best = np.argmax(scores, axis=1)
        change[candidates] = scores[np.arange(candidates.size), best]
        start[candidates] = best + 1
    return Margins(anchor, change, start)


@dataclass(frozen=True)
class Evidence:
    """The outcome of one look: is the rate clearly above the limit, and on what numbers."""

    exceeded: bool
    """True when either test crossed its threshold: a false alarm has probability at most ``alpha``."""
    trials: float
    """Trials since the check began (all stretches)."""
    events: float
    limit: float
    alpha: float
    log_ratio: float
    """log likelihood ratio of the anchored test (everything since the check began)."""
    threshold: float
    """log threshold of the anchored test."""
    change_since: int | None = None
    """When only the change test found evidence: the stretch it counts from."""
    change_trials: float = 0.0
    change_events: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.events / self.trials if self.trials > 0 else None

    @property
    def p_value(self) -> float:
        """Always-valid p-value of the anchored test: 1 / likelihood ratio, capped at 1."""
        return 1.0 if self.log_ratio <= 0 else math.exp(-self.log_ratio)

    def describe(self) -> str:
        """The statistic in words: likelihood ratio against the threshold (and where a change began)."""
        ratio = f"likelihood ratio {_big(self.log_ratio)} against {_big(self.threshold)} needed"
        if self.change_since is not None:
            rate = self.change_events / self.change_trials if self.change_trials else 0.0
            return (
                f"{self.change_events:.0f} of {self.change_trials:.0f} ({rate * 100:.1f}%) since interval "
                f"{self.change_since} of the phase, above the change threshold; {ratio} overall"
            )
        return ratio


def _big(log_value: float) -> str:
    if log_value == -math.inf or log_value < -700:
        return "0"
    value = math.exp(min(log_value, 700.0))
    return f"{value:.3g}" if value < 1e6 else f"{value:.2e}"


def exceeds_limit(
    trials: Sequence[float] | Array,
    events: Sequence[float] | Array,
    limit: float,
    alpha: float,
    *,
    stride: int = 1,
) -> Evidence:
    """Is the rate of ``events`` per ``trials`` clearly above ``limit``? Stretch by stretch, oldest first.

    ``trials[i]`` and ``events[i]`` are what happened in stretch ``i`` since the check began; every
    stretch but the last spans ``stride`` analysis intervals (the last may be partial). ``alpha`` bounds
    the probability, over every look the caller ever makes, that a rate at or below ``limit`` is reported
    as exceeded. Call it again with more stretches at each look; it keeps no state.
    """
    n = np.asarray(trials, dtype=np.float64).clip(min=0.0).reshape(1, -1)
    x = np.minimum(np.asarray(events, dtype=np.float64).clip(min=0.0).reshape(1, -1), n)
    total_n, total_x = float(n.sum()), float(x.sum())
    threshold = anchor_threshold(alpha)
    if limit <= 0.0 or limit >= 1.0 or n.shape[1] == 0:
        exceeded = limit <= 0.0 and total_x > 0
        log_ratio = math.inf if exceeded else -math.inf
        return Evidence(exceeded, total_n, total_x, limit, alpha, log_ratio, threshold)
    found = margins(n, x, limit, alpha, stride)
    log_ratio = float(found.anchor[0]) + threshold
    if found.anchor[0] >= 0 or found.change[0] < 0:
        return Evidence(bool(found.anchor[0] >= 0), total_n, total_x, limit, alpha, log_ratio, threshold)
    since = int(found.change_start[0])
    return Evidence(
        True, total_n, total_x, limit, alpha, log_ratio, threshold,
        change_since=since * stride, change_trials=float(n[0, since:].sum()), change_events=float(x[0, since:].sum()),
    )  # fmt: skip
