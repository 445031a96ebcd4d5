"""Builders for policy tests: specs, observations, and a driver that feeds decisions back as status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backtest_operator.analysis import Observation, Stretch
from backtest_operator.api import BacktestServiceSpec, BacktestServiceStatus, TrackNumbers
from backtest_operator.controls import NO_CONTROLS, Controls
from backtest_operator.histograms import Histogram
from backtest_operator.policy import Decision, decide

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=30)


def make_spec(image: str = "registry.example/backtest-engine:1.4.0", **overrides: Any) -> BacktestServiceSpec:
    return BacktestServiceSpec.model_validate({"image": image, **overrides})


def track(requests: float, errors: float = 0, fallbacks: float = 0, slow: float = 0, p95: float | None = 0.2):
    return TrackNumbers(requests=requests, errors=errors, fallbacks=fallbacks, slow=slow, latency_p95_seconds=p95)


ROUTER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def histogram(requests: float, seconds: float, slow: float = 0.0, slow_seconds: float = 3.0) -> Histogram:
    """A router histogram of ``requests``: the slow ones at ``slow_seconds``, the others at ``seconds``."""
    cumulative = tuple(
        (requests - slow if bound >= seconds else 0.0) + (slow if bound >= slow_seconds else 0.0)
        for bound in ROUTER_BUCKETS
    )
    return Histogram(ROUTER_BUCKETS, cumulative, requests)


def stretch(numbers: TrackNumbers, stable_p95: float | None = 0.2) -> Stretch:
    """One stretch of canary traffic, its latency at the recorded p95 (slow requests at 3 s)."""
    p95 = numbers.latency_p95_seconds if numbers.latency_p95_seconds is not None else 0.2
    return Stretch(
        requests=numbers.requests,
        errors=numbers.errors,
        fallbacks=numbers.fallbacks,
        slow=numbers.slow,
        latency=histogram(numbers.requests, p95, numbers.slow),
        stable_p95_seconds=stable_p95,
    )


def observe(
    now: datetime,
    canary: TrackNumbers | None = None,
    stable: TrackNumbers | None = None,
    *,
    phase_canary: TrackNumbers | None = None,
    phase_stable: TrackNumbers | None = None,
    phase_window: timedelta = timedelta(0),
    stretches: tuple[Stretch, ...] | None = None,
    **extra: Any,
) -> Observation:
    """An observation whose stretches are the phase before the last interval, then the last interval."""
    canary = canary or track(100)
    stable = stable or track(9900)
    phase = phase_canary or canary
    if stretches is None:
        stable_p95 = stable.latency_p95_seconds
        earlier = TrackNumbers(
            requests=phase.requests - canary.requests,
            errors=max(0.0, phase.errors - canary.errors),
            fallbacks=max(0.0, phase.fallbacks - canary.fallbacks),
            slow=max(0.0, phase.slow - canary.slow),
            latency_p95_seconds=phase.latency_p95_seconds,
        )
        stretches = tuple(stretch(t, stable_p95) for t in (earlier, canary) if t.requests > 0)
    return Observation(
        time=now,
        canary_recent=canary,
        stable_recent=stable,
        canary_phase=phase,
        stable_phase=phase_stable or stable,
        recent_window=INTERVAL,
        phase_window=phase_window,
        stretches=stretches,
        **extra,
    )


@dataclass
class Driver:
    """Feeds each decision's status into the next call, with an explicit clock."""

    spec: BacktestServiceSpec
    status: BacktestServiceStatus = field(default_factory=BacktestServiceStatus)
    now: datetime = T0
    generation: int = 1
    decisions: list[Decision] = field(default_factory=list)

    def step(self, obs: Observation | None = None, controls: Controls = NO_CONTROLS, **kwargs: Any) -> Decision:
        decision = decide(
            self.spec,
            self.status,
            obs or observe(self.now, **kwargs),
            self.now,
            generation=self.generation,
            controls=controls,
        )
        self.status = decision.status
        self.decisions.append(decision)
        return decision

    def advance_clock(self, delta: timedelta) -> None:
        self.now += delta

    def change_spec(self, **changes: Any) -> None:
        data = self.spec.model_dump(by_alias=True)
        data.update(changes)
        self.spec = BacktestServiceSpec.model_validate(data)
        self.generation += 1


def healthy(image: str = "registry.example/backtest-engine:1.3.0", **overrides: Any) -> Driver:
    """A driver whose object is Healthy on ``image``."""
    driver = Driver(make_spec(image, **overrides))
    driver.step()  # initialize
    driver.step()  # ready
    return driver


def started(new_image: str = "registry.example/backtest-engine:1.4.0", **overrides: Any) -> Driver:
    """A driver whose rollout of ``new_image`` is in its first phase, canary ready."""
    driver = healthy(**overrides)
    driver.change_spec(image=new_image)
    driver.step()  # start: waiting for canary
    driver.step()  # canary ready: phase 1 begins
    return driver


def pass_phase(driver: Driver) -> Decision:
    """Let the current phase run its full duration with healthy numbers."""
    assert driver.status.step is not None
    phase = driver.spec.phases[driver.status.step]
    driver.advance_clock(phase.duration)
    return driver.step(phase_window=phase.duration)
