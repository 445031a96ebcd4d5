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


def prior(limit: float) -> tuple[float, float]:
    """Beta(a, b) over the rates above ``limit``, mean about four times the limit (capped).

    The prior only decides how the evidence is averaged over possible fault sizes, never the guarantee:
    any prior supported above the limit keeps the false-alarm bound.
    """
    return 1.0, max(1.0, 1.0 / (4.0 * limit) - 1.0)


def change_alternative(limit: float) -> float:
    """The "clearly bad" rate the change test listens for: twice the limit or 5 points more, if larger."""
    return min(limit + max(limit, 0.05), (1.0 + limit) / 2.0)


def log_mixture_ratio(trials: ArrayLike, events: ArrayLike, limit: float) -> Array:
    """log of the anchored test's likelihood ratio: rates above ``limit`` (Beta prior) against ``limit``."""
    from scipy.special import betainc, betaln  # noqa: PLC0415 - keeps scipy out of CLI start-up

    n = np.asarray(trials, dtype=np.float64)
    x = np.clip(np.asarray(events, dtype=np.float64), 0.0, n)
    a, b = prior(limit)
    with np.errstate(divide="ignore", invalid="ignore"):
        posterior_tail = np.log(betainc(b + n - x, a + x, 1.0 - limit))
        prior_tail = math.log(float(betainc(b, a, 1.0 - limit)))
        null = x * math.log(limit) + (n - x) * math.log1p(-limit)
        result = betaln(a + x, b + n - x) + posterior_tail - betaln(a, b) - prior_tail - null
    return np.asarray(np.where(np.isnan(result), -np.inf, result), dtype=np.float64)


def change_increment(trials: ArrayLike, events: ArrayLike, limit: float) -> Array:
    """log likelihood ratio of one stretch, ``change_alternative(limit)`` against ``limit``."""
    n = np.asarray(trials, dtype=np.float64)
    x = np.clip(np.asarray(events, dtype=np.float64), 0.0, n)
    bad = change_alternative(limit)
    return np.asarray(x * math.log(bad / limit) + (n - x) * math.log((1.0 - bad) / (1.0 - limit)), dtype=np.float64)


def anchor_threshold(alpha: float) -> float:
    """log of the likelihood ratio the anchored test must reach."""
    return math.log(1.0 / (ANCHOR_SHARE * alpha))


def change_threshold(alpha: float, start: int) -> float:
    """log threshold for data since stretch boundary ``start`` (>= 1, in analysis intervals)."""
    return math.log(start * (start + 1) / ((1.0 - ANCHOR_SHARE) * alpha))


def change_step(score: ArrayLike, increment: ArrayLike, alpha: float, start: int) -> Array:
    """One CUSUM step: the best (log ratio - threshold) over every boundary, with boundary ``start`` new.

    ``score`` is the previous result (``-inf`` before the first boundary); evidence exists when the result
    is >= 0. Equivalent to recomputing every boundary's ratio from scratch, in one pass.
    """
    opened = np.maximum(np.asarray(score, dtype=np.float64), -change_threshold(alpha, start))
    return np.asarray(opened + np.asarray(increment, dtype=np.float64), dtype=np.float64)


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
    n = np.asarray(trials, dtype=np.float64).clip(min=0.0)
    x = np.minimum(np.asarray(events, dtype=np.float64).clip(min=0.0), n)
    total_n, total_x = float(n.sum()), float(x.sum())
    if limit <= 0.0 or limit >= 1.0:
        exceeded = limit <= 0.0 and total_x > 0
        log_ratio = math.inf if exceeded else -math.inf
        return Evidence(exceeded, total_n, total_x, limit, alpha, log_ratio, anchor_threshold(alpha))
    log_ratio = float(log_mixture_ratio(total_n, total_x, limit))
    threshold = anchor_threshold(alpha)
    if log_ratio >= threshold:
        return Evidence(True, total_n, total_x, limit, alpha, log_ratio, threshold)
    since = _change_start(n, x, limit, alpha, stride)
    if since is None:
        return Evidence(False, total_n, total_x, limit, alpha, log_ratio, threshold)
    return Evidence(
        True, total_n, total_x, limit, alpha, log_ratio, threshold,
        change_since=since * stride, change_trials=float(n[since:].sum()), change_events=float(x[since:].sum()),
    )  # fmt: skip


def _change_start(n: Array, x: Array, limit: float, alpha: float, stride: int) -> int | None:
    """The boundary whose data since then crosses its change threshold by the most, if any does."""
    if len(n) < 2:
        return None
    increments = change_increment(n, x, limit)
    # Suffix sums: the log ratio of the data since each boundary k >= 1, against its own threshold.
    since = np.cumsum(increments[::-1])[::-1][1:]
    starts = np.arange(1, len(n)) * stride
    margins = since - np.log(starts * (starts + 1.0) / ((1.0 - ANCHOR_SHARE) * alpha))
    best = int(np.argmax(margins))
    return best + 1 if margins[best] >= 0 else None
