"""Counting and selection rules of docs/metrics-contract.md, as pure functions."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest_engine.router.routing import (
    Failure,
    FallbackReason,
    Outcome,
    Track,
    choose_track,
    is_replayable,
    plan_after_canary,
    status_without_answer,
)


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_weight_zero_never_reaches_canary_when_any_draw(draw):
    assert choose_track(0, draw) is Track.STABLE


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_weight_hundred_always_reaches_canary_when_any_draw(draw):
    assert choose_track(100, draw) is Track.CANARY


@settings(max_examples=60, deadline=None)
@given(weight=st.integers(min_value=0, max_value=100), seed=st.integers(min_value=0, max_value=2**32))
def test_observed_canary_share_converges_to_weight_when_many_requests(weight, seed):
    rng = random.Random(seed)
    n = 20_000
    canary = sum(choose_track(weight, rng.random()) is Track.CANARY for _ in range(n))
    p = weight / 100
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(canary / n - p) <= 5 * sigma + 1e-9


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "get"])
def test_request_is_replayable_when_method_is_idempotent(method):
    assert is_replayable(method, [])


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_request_is_not_replayable_when_method_is_not_idempotent_and_no_key(method):
    assert not is_replayable(method, [b"content-type", b"x-request-id"])


def test_post_is_replayable_when_client_sends_idempotency_key():
    assert is_replayable("POST", [b"Idempotency-Key"])


@pytest.mark.parametrize(
    ("outcome", "label", "error", "reason"),
    [
        (Outcome.answered(200), "200", False, None),
        (Outcome.answered(302), "302", False, None),
        (Outcome.answered(404), "404", False, None),
        (Outcome.answered(429), "429", False, None),
        (Outcome.answered(500), "500", True, FallbackReason.STATUS),
        (Outcome.answered(503), "503", True, FallbackReason.STATUS),
        (Outcome.failed(Failure.TRANSPORT), "transport", True, FallbackReason.TRANSPORT),
        (Outcome.failed(Failure.TIMEOUT), "timeout", False, FallbackReason.TIMEOUT),
    ],
)
def test_outcome_is_labelled_and_classified_when_canary_answers(outcome, label, error, reason):
    assert outcome.code_label == label
    assert outcome.is_error is error
    assert plan_after_canary(outcome, replayable=True).fallback is reason


@pytest.mark.parametrize(
    "outcome",
    [Outcome.answered(502), Outcome.failed(Failure.TRANSPORT), Outcome.failed(Failure.TIMEOUT)],
)
def test_canary_answer_stands_when_request_is_not_replayable(outcome):
    plan = plan_after_canary(outcome, replayable=False)
    assert plan.fallback is None
    assert not plan.re_serve


def test_router_answers_gateway_errors_when_no_upstream_answer():
    assert status_without_answer(Failure.TRANSPORT) == 502
    assert status_without_answer(Failure.TIMEOUT) == 504
