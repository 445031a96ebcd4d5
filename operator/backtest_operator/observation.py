"""What one evaluation measured: the policy's only view of the world (``Observation``).

Filled by ``prometheus.measure`` in the operator and by ``simulate`` from recordings; the checks of
``analysis`` read it. Counting rules: docs/metrics-contract.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backtest_operator.api import ShadowNumbers, TrackNumbers
from backtest_operator.histograms import Histogram


@dataclass(frozen=True)
class Stretch:
    """What the judged revision did over one stretch of the current phase (or of the bake window).

    Stretches are consecutive, one analysis interval long each (``Observation.stretch_intervals`` when a
    very long phase is read more coarsely), from the phase start; the last one ends now and may be shorter.
    """

    requests: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    slow: float = 0.0
    """Requests over the latency objective (exact: the objective is a histogram bucket bound)."""
    latency: Histogram | None = None
    """The judged revision's latency histogram over the stretch, when known."""
    stable_p95_seconds: float | None = None
    """Stable's p95 over the same stretch, when stable had enough requests for one."""
    comparisons: float = 0.0
    """Shadow comparisons judged over the stretch (match plus mismatch; errors and skipped left out)."""
    mismatches: float = 0.0
    """Shadow comparisons whose canary result differed from stable's."""

    @property
    def failures(self) -> float:
        """Requests that count against the success rate: errors and slow ones (docs/metrics-contract.md)."""
        return min(self.requests, self.errors + self.slow)


@dataclass(frozen=True)
class Observation:
    """What the operator (or the simulator) measured at ``time``; the policy's only view of the world.

    ``*_recent`` cover the last analysis interval and ``*_phase`` the current phase so far (for display and
    the end-of-phase thresholds); ``stretches`` hold the same phase interval by interval, for the
    sequential tests. During the bake window the stretches describe the promoted revision.
    ``error`` is set when measuring failed.
    """

    time: datetime
    canary_recent: TrackNumbers = field(default_factory=TrackNumbers)
    stable_recent: TrackNumbers = field(default_factory=TrackNumbers)
    canary_phase: TrackNumbers = field(default_factory=TrackNumbers)
    stable_phase: TrackNumbers = field(default_factory=TrackNumbers)
    recent_window: timedelta = timedelta(0)
    phase_window: timedelta = timedelta(0)
    stretches: tuple[Stretch, ...] = ()
    stretch_intervals: int = 1
    canary_ready: bool = True
    stable_ready: bool = True
    canary_unhealthy_pods: int = 0
    stable_unhealthy_pods: int = 0
    shadow: ShadowNumbers | None = None
    """The router's shadow comparisons over the phase so far; None while shadowing is off."""
    error: str | None = None


def judged_stretches(obs: Observation, phase_numbers: TrackNumbers) -> tuple[Stretch, ...]:
    """The stretches to test; without any, the phase totals as one stretch (e.g. a one-row recording)."""
    if obs.stretches:
        return obs.stretches
    if phase_numbers.requests <= 0:
        return ()
    numbers, shadow = phase_numbers, obs.shadow
    return (
        Stretch(
            numbers.requests, numbers.errors, numbers.fallbacks, numbers.slow,
            comparisons=shadow.comparisons if shadow else 0.0, mismatches=shadow.mismatches if shadow else 0.0,
        ),
    )  # fmt: skip


def error_rate(track: TrackNumbers) -> float | None:
    return track.errors / track.requests if track.requests > 0 else None


def fallback_rate(track: TrackNumbers) -> float | None:
    return track.fallbacks / track.requests if track.requests > 0 else None


def success_rate(track: TrackNumbers) -> float | None:
    """Share answered without error within the latency objective (docs/metrics-contract.md)."""
    if track.requests <= 0:
        return None
    return max(0.0, track.requests - track.errors - track.slow) / track.requests
