"""The sequential test: false alarms bounded over every look (checked by seeded simulation), evidence found
when the rate is clearly above the limit, and the same answer for one row as for thousands."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_operator.api import BacktestServiceSpec
from backtest_operator.budget import check_budget
from backtest_operator.sequential import (
    ANCHOR_SHARE,
    anchor_threshold,
    change_alternative,
    change_increment,
    change_threshold,
    exceeds_limit,
    log_mixture_ratio,
    margins,
)


def _first_alarm(trials: np.ndarray, events: np.ndarray, limit: float, alpha: float) -> np.ndarray:
    """For each simulated run, the first look at which the test reports the limit exceeded (or -1)."""
    runs, looks = trials.shape
    first = np.full(runs, -1)
    for look in range(1, looks + 1):
        found = margins(trials[:, :look], events[:, :look], limit, alpha).exceeded
        first[(first < 0) & found] = look
    return first


@pytest.mark.parametrize(
    ("limit", "per_look", "looks"),
    [(0.02, 12, 20), (0.02, 600, 120), (0.10, 60, 60), (0.05, 1.5, 200), (0.25, 30, 40)],
    ids=["canary-phase", "validation", "trigger", "trickle", "fallbacks"],
)
def test_false_alarms_stay_under_alpha_over_every_look_when_the_rate_sits_exactly_at_the_limit(limit, per_look, looks):
    # The worst case the guarantee covers: the true rate equals the limit, looked at after every interval.
    rng = np.random.default_rng(20261123)
    runs, alpha = 4000, 0.05
    trials = rng.poisson(per_look, size=(runs, looks)).astype(float)
    events = rng.binomial(trials.astype(int), limit).astype(float)

    alarms = _first_alarm(trials, events, limit, alpha)

    rate = np.mean(alarms > 0)
    # alpha plus three standard errors of a 4000-run estimate: fails if the bound does not hold.
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


def test_false_alarms_stay_under_alpha_when_the_rate_is_below_the_limit_and_traffic_varies():
    rng = np.random.default_rng(7)
    runs, looks, alpha, limit = 3000, 150, 0.02, 0.03
    trials = rng.poisson(rng.uniform(5, 400, size=(runs, 1)), size=(runs, looks)).astype(float)
    events = rng.binomial(trials.astype(int), 0.025).astype(float)

    assert np.mean(_first_alarm(trials, events, limit, alpha) > 0) <= alpha


def test_a_rate_well_above_the_limit_is_found_within_a_few_looks_when_traffic_is_low():
    # 15% errors against a 2% limit with a dozen requests per look: found by the sixth look in most runs.
    rng = np.random.default_rng(3)
    trials = rng.poisson(12, size=(2000, 20)).astype(float)
    events = rng.binomial(trials.astype(int), 0.15).astype(float)

    alarms = _first_alarm(trials, events, 0.02, 0.005)

    assert np.all(alarms > 0)
    assert np.mean(alarms <= 6) >= 0.85


def test_a_fault_starting_late_is_found_by_the_change_test_when_a_long_healthy_start_hides_it():
    healthy, faulty = [600.0] * 60, [600.0] * 2
    trials = healthy + faulty
    events = [3.0] * 60 + [72.0, 72.0]  # 0.5% for half an hour, then 12%, against a 2% limit

    evidence = exceeds_limit(trials, events, 0.02, 0.001)

    assert evidence.exceeded
    assert evidence.log_ratio < evidence.threshold  # the phase as a whole does not show it
    assert evidence.change_since == 60
    assert (evidence.change_trials, evidence.change_events) == (1200.0, 144.0)
    assert "since interval 60 of the phase" in evidence.describe()


def test_no_evidence_is_reported_when_the_observed_rate_is_at_or_below_the_limit():
    evidence = exceeds_limit([1000.0] * 10, [20.0] * 10, 0.02, 0.5)
    assert not evidence.exceeded
    assert evidence.p_value == 1.0


def test_evidence_names_counts_ratio_and_threshold_when_exceeded():
    evidence = exceeds_limit([12.0] * 6, [2.0] * 6, 0.02, 0.003)
    assert evidence.exceeded
    assert (evidence.trials, evidence.events, evidence.rate) == (72.0, 12.0, 12.0 / 72.0)
    assert evidence.threshold == pytest.approx(math.log(1 / (ANCHOR_SHARE * 0.003)))
    assert evidence.p_value == pytest.approx(math.exp(-evidence.log_ratio))
    assert evidence.describe().startswith("likelihood ratio ")
    assert "against 370 needed" in evidence.describe()


@pytest.mark.parametrize(("limit", "events", "exceeded"), [(0.0, 1.0, True), (0.0, 0.0, False), (1.0, 5.0, False)])
def test_degenerate_limits_have_certain_answers_when_zero_or_one(limit, events, exceeded):
    assert exceeds_limit([5.0], [events], limit, 0.05).exceeded is exceeded


def test_the_mixture_ratio_is_one_without_data_and_falls_with_clean_requests():
    assert log_mixture_ratio(0.0, 0.0, 0.02) == pytest.approx(0.0, abs=1e-9)
    assert log_mixture_ratio(100.0, 0.0, 0.02) < log_mixture_ratio(10.0, 0.0, 0.02) < 0


def test_change_thresholds_grow_with_the_boundary_so_their_alphas_sum_to_the_share_when_summed():
    alpha = 0.01
    spent = sum(math.exp(-float(change_threshold(alpha, k))) for k in range(1, 100_000))
    assert spent == pytest.approx((1 - ANCHOR_SHARE) * alpha, rel=1e-4)
    assert anchor_threshold(alpha) < float(change_threshold(alpha, 1)) < float(change_threshold(alpha, 50))


def test_change_alternative_is_clearly_above_the_limit_for_every_limit():
    for limit in (0.001, 0.01, 0.02, 0.05, 0.1, 0.25, 0.9):
        bad = float(change_alternative(limit))
        assert limit < bad < 1
        assert float(change_increment(1.0, 1.0, limit)) > 0 > float(change_increment(1.0, 0.0, limit))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 500), st.floats(0, 1)), min_size=1, max_size=30),
    st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.25]),
    st.sampled_from([0.001, 0.01, 0.1]),
)
def test_one_row_and_many_rows_give_the_same_answer_when_stretches_are_padded(stretches, limit, alpha):
    trials = [float(n) for n, _ in stretches]
    events = [math.floor(n * share) for n, share in stretches]
    single = exceeds_limit(trials, events, limit, alpha)
    padded_n = np.array([trials + [0.0] * 5, [1.0] * (len(trials) + 5)])
    padded_x = np.array([events + [0.0] * 5, [0.0] * (len(trials) + 5)])
    batch = margins(padded_n, padded_x, limit, alpha)
    assert bool(batch.exceeded[0]) is single.exceeded
    assert not batch.exceeded[1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=2, max_size=20), st.integers(0, 19))
def test_more_bad_events_never_weaken_the_evidence_when_added_to_a_stretch(trials, where):
    where %= len(trials)
    base = [n // 10 for n in trials]
    worse = list(base)
    worse[where] = trials[where]
    a = exceeds_limit([float(n) for n in trials], [float(x) for x in base], 0.05, 0.01)
    b = exceeds_limit([float(n) for n in trials], [float(x) for x in worse], 0.05, 0.01)
    assert b.log_ratio >= a.log_ratio - 1e-9
    assert b.exceeded or not a.exceeded


def test_the_worked_example_of_the_rollout_policy_doc_holds_when_recomputed():
    # docs/rollout-policy.md, "A worked example": default policy, phase canary, error_rate check.
    spec = BacktestServiceSpec.model_validate({"image": "registry.example/backtest-engine:2.0.0"})
    alpha = check_budget(spec, "error_rate", spec.phases[0])
    assert alpha == pytest.approx(0.005)
    assert math.exp(anchor_threshold(alpha)) == pytest.approx(222.2, abs=0.1)
    trials, errors = [12, 13, 11, 12], [1, 2, 2, 3]
    ratios, verdicts = [], []
    for look in range(1, 5):
        evidence = exceeds_limit(trials[:look], errors[:look], 0.02, alpha)
        ratios.append(math.exp(evidence.log_ratio))
        verdicts.append(evidence.exceeded)
    assert [round(r, 1) for r in ratios[:3]] == [1.6, 11.3, 123.0]
    assert round(ratios[3]) == 10362
    assert verdicts == [False, False, False, True]
    healthy = exceeds_limit([12, 13], [0, 1], 0.02, alpha)
    assert math.exp(healthy.log_ratio) == pytest.approx(0.76, abs=0.01)
