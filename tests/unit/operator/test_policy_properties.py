"""Invariants of the rollout policy over arbitrary sequences of measurements, requests and clock jumps."""

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtest_operator.analysis import Observation, Stretch
from backtest_operator.api import RolloutPhase, TrackNumbers, Verdict
from backtest_operator.controls import Controls
from backtest_operator.policy import Action, decide

from .rollouts import INTERVAL, healthy, stretch

counts = st.integers(min_value=0, max_value=5000)


@st.composite
def tracks(draw: st.DrawFn) -> TrackNumbers:
    requests = draw(counts)
    errors = draw(st.integers(0, requests))
    fallbacks = draw(st.integers(0, requests))
    slow = draw(st.integers(0, requests))
    p95 = draw(st.none() | st.floats(0.001, 5.0))
    return TrackNumbers(requests=requests, errors=errors, fallbacks=fallbacks, slow=slow, latency_p95_seconds=p95)


@st.composite
def stretches(draw: st.DrawFn) -> tuple[Stretch, ...]:
    drawn = draw(st.lists(tracks(), min_size=0, max_size=4))
    return tuple(stretch(t, draw(st.none() | st.floats(0.01, 3.0))) for t in drawn)


@st.composite
def steps(draw: st.DrawFn) -> tuple[timedelta, dict, Controls]:
    advance = timedelta(seconds=draw(st.sampled_from([0, 30, 600, 1800, 3600, 5400])))
    canary = draw(stretches())
    obs = {
        "canary_recent": draw(tracks()),
        "stable_recent": draw(tracks()),
        "canary_phase": TrackNumbers(
            requests=sum(s.requests for s in canary),
            errors=sum(s.errors for s in canary),
            fallbacks=sum(s.fallbacks for s in canary),
            slow=sum(s.slow for s in canary),
        ),
        "stable_phase": draw(tracks()),
        "stretches": canary,
        "canary_ready": draw(st.booleans()),
        "canary_unhealthy_pods": draw(st.sampled_from([0, 0, 0, 1])),
        "error": draw(st.sampled_from([None, None, None, "prometheus unreachable"])),
    }
    token = st.none() | st.sampled_from(["a", "b", "c"])
    controls = Controls(promote=draw(token), promote_full=draw(token), abort=draw(token), retry=draw(token))
    return advance, obs, controls


def _replay(plan, *, with_controls: bool):
    driver = healthy()
    driver.change_spec(image="registry.example/backtest-engine:9.9.9")
    for advance, fields, controls in plan:
        driver.advance_clock(advance)
        obs = Observation(time=driver.now, recent_window=INTERVAL, phase_window=advance, **fields)
        before = driver.status
        decision = driver.step(obs, controls if with_controls else Controls())
        yield before, obs, controls if with_controls else Controls(), decision, driver


PLANS = st.lists(steps(), min_size=1, max_size=25)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(PLANS)
def test_weight_only_moves_along_phases_or_drops_to_zero_when_replayed(plan):
    for before, _obs, _controls, decision, driver in _replay(plan, with_controls=True):
        weights = [p.weight for p in driver.spec.phases]
        after = decision.status.canary_weight
        assert after == 0 or after in weights
        if before.canary_weight and after and after != before.canary_weight:
            assert weights.index(after) == weights.index(before.canary_weight) + 1
        if not before.canary_weight and after:
            assert after == weights[0] and decision.action == Action.BEGIN


@SETTINGS
@given(PLANS)
def test_nothing_advances_or_promotes_without_enough_data_when_no_request_is_made(plan):
    for _before, obs, _controls, decision, driver in _replay(plan, with_controls=False):
        if decision.action in (Action.ADVANCE, Action.PROMOTE):
            assert obs.error is None
            assert sum(s.requests for s in obs.stretches) >= driver.spec.analysis.min_requests


@SETTINGS
@given(PLANS)
def test_a_failing_trigger_always_wins_over_pause_and_requests_when_it_trips_mid_phase(plan):
    for before, _obs, _controls, decision, _driver in _replay(plan, with_controls=True):
        in_phase = before.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED) and before.phase_started_at
        tripped = [c for c in decision.checks if c.verdict == Verdict.FAIL]
        if in_phase and tripped:
            assert decision.action == Action.ROLLBACK


@SETTINGS
@given(PLANS)
def test_no_metric_check_rolls_back_a_canary_without_a_single_bad_request(plan):
    for _before, obs, _controls, decision, _driver in _replay(plan, with_controls=False):
        clean = all(s.errors == 0 and s.fallbacks == 0 and s.slow == 0 for s in obs.stretches)
        fast = all(
            s.stable_p95_seconds is None or s.latency is None or (s.latency.quantile() or 0.0) <= s.stable_p95_seconds
            for s in obs.stretches
        )
        if decision.action == Action.ROLLBACK and clean and fast:
            assert decision.failing_check in ("unhealthy", "analysis", "progress_deadline"), decision.reason


@SETTINGS
@given(PLANS)
def test_decisions_are_deterministic_when_inputs_repeat(plan):
    for before, obs, controls, decision, driver in _replay(plan, with_controls=True):
        again = decide(driver.spec, before, obs, driver.now, generation=driver.generation, controls=controls)
        assert again == decision
