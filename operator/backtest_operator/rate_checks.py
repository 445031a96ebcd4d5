"""One rate check: bad events out of requests against a limit, decided by sequential evidence.

``rate_check`` turns ``sequential.exceeds_limit`` into a ``CheckResult`` with a message an SRE can read:
it **fails** only on evidence (counts and the likelihood ratio are named), **passes** when the observed
rate meets the limit with enough requests, and is **inconclusive** otherwise (the policy keeps measuring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backtest_operator.api import BacktestServiceSpec, CheckResult, Phase, Verdict
from backtest_operator.budget import check_budget
from backtest_operator.sequential import Evidence, exceeds_limit


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def too_few(name: str, requests: float, needed: int, where: str, who: str = "canary") -> CheckResult:
    return CheckResult(
        name=name,
        verdict=Verdict.INCONCLUSIVE,
        message=f"only {requests:.0f} {who} requests {where}, {needed} needed",
    )


@dataclass(frozen=True)
class RateRule:
    """One rate check: what is counted, the limit, and how it reads in messages."""

    name: str
    label: str
    """e.g. "canary error rate"."""
    limit: float
    limit_label: str
    """e.g. "the phase limit" or "rollback.maxErrorRate"."""
    strict: bool = False
    """Pass only below the limit (a phase's maxErrorRate fails when the rate reaches it)."""
    note: str = ""
    """Said after the limit's value, e.g. how it was derived."""


def rate_check(
    spec: BacktestServiceSpec,
    stage: Phase | str,
    rule: RateRule,
    trials: Sequence[float],
    events: Sequence[float],
    where: str,
    *,
    stride: int = 1,
    min_trials: float = 0.0,
    pass_needs: float = 0.0,
) -> CheckResult:
    """Fail on sequential evidence that the rate is above ``rule.limit``; pass when the observed rate is
    at or below it with at least ``pass_needs`` trials; otherwise inconclusive (keep measuring)."""
    evidence = exceeds_limit(trials, events, rule.limit, check_budget(spec, rule.name, stage), stride=stride)
    total, rate = evidence.trials, evidence.rate
    if total <= 0 or rate is None or total < min_trials:
        return too_few(rule.name, total, max(1, round(min_trials)), where)
    counts = f"{evidence.events:.0f} of {total:.0f}"
    if evidence.exceeded:
        return _result(
            rule,
            Verdict.FAIL,
            rate,
            evidence,
            f"{rule.label} {pct(rate)} ({counts}) {where} is above {rule.limit_label} "
            f"({pct(rule.limit)}{rule.note}): {evidence.describe()}",
        )
    meets = rate < rule.limit if rule.strict else rate <= rule.limit
    within, beyond = ("<", ">=") if rule.strict else ("<=", ">")
    if meets and total >= pass_needs:
        return _result(
            rule,
            Verdict.PASS,
            rate,
            evidence,
            f"{rule.label} {pct(rate)} {within} {pct(rule.limit)} {where} ({counts})",
        )
    if meets:
        return _result(
            rule,
            Verdict.INCONCLUSIVE,
            rate,
            evidence,
            f"{rule.label} {pct(rate)} {within} {pct(rule.limit)} {where}, but only {total:.0f} requests, "
            f"{pass_needs:.0f} needed",
        )
    return _result(
        rule,
        Verdict.INCONCLUSIVE,
        rate,
        evidence,
        f"{rule.label} {pct(rate)} {beyond} {pct(rule.limit)} {where} ({counts}), not yet clearly above it "
        f"({evidence.describe()}): measuring on",
    )


def _result(rule: RateRule, verdict: Verdict, rate: float, evidence: Evidence, message: str) -> CheckResult:
    return CheckResult(
        name=rule.name, verdict=verdict, value=rate, threshold=rule.limit, p_value=evidence.p_value, message=message
    )
