"""Backtest a rollout policy: replay recorded metrics through ``policy.decide`` and report every decision.

The replay treats the manifest's image as a new revision replacing a stable one, starts the rollout at the
first timestamp with the canary ready, and evaluates the policy at the end of every sampling interval of
the recording. The counts are taken as observed (they are not rescaled by the policy's weights). It ends
at promotion, at rollback, or when the data ends ("in_progress").

A corpus (several recordings, or a directory of them) is replayed one recording after the other; each
gives one outcome line, and a summary counts the outcomes and the detection times (``summarize``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from backtest_operator.analysis import Observation, Stretch, error_rate, fallback_rate, success_rate
from backtest_operator.api import (
    BacktestService,
    BacktestServiceSpec,
    BacktestServiceStatus,
    RolloutPhase,
    ShadowNumbers,
    TrackNumbers,
)
from backtest_operator.errors import InvalidSpec
from backtest_operator.histograms import MIN_REFERENCE_REQUESTS, P95, Histogram
from backtest_operator.policy import Action, Decision, decide
from backtest_operator.recordings import Interval

RECORDED_STABLE = "recorded-stable"


def load_manifest(path: Path) -> BacktestService:
    """Read a BacktestService manifest; errors name the field (``spec.phases.1.weight: ...``)."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidSpec(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidSpec(f"{path}: expected a BacktestService manifest (a YAML mapping)")
    try:
        return BacktestService.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'manifest'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidSpec(f"{path}: {problems}") from None


@dataclass(frozen=True)
class Evaluation:
    time: datetime
    decision: Decision
    canary: TrackNumbers
    stable: TrackNumbers


@dataclass(frozen=True)
class Outcome:
    outcome: str
    phase: str | None
    time: datetime
    reason: str
    check: str | None = None
    started: datetime | None = None
    """When the canary started taking traffic (the first timestamp of the recording)."""

    @property
    def seconds(self) -> float | None:
        """Seconds from the canary's first traffic to this outcome."""
        return (self.time - self.started).total_seconds() if self.started is not None else None


def _sum(tracks: Sequence[TrackNumbers], histograms: Sequence[Histogram | None] = ()) -> TrackNumbers:
    """Counts add up; the p95 of several intervals comes from their summed histograms when the recording has
    them, else it is approximated by the request-weighted mean of their p95s."""
    weighted = [(t.requests, t.latency_p95_seconds) for t in tracks if t.latency_p95_seconds is not None]
    total_weight = sum(w for w, _ in weighted)
    p95 = (sum(w * v for w, v in weighted) / total_weight) if total_weight else None
    known = [h for h in histograms if h is not None]
    if known and len(known) == len(histograms) and all(h.bounds == known[0].bounds for h in known):
        summed = Histogram(
            known[0].bounds,
            tuple(sum(values) for values in zip(*(h.cumulative for h in known), strict=True)),
            sum(h.total for h in known),
        )
        p95 = summed.quantile(P95)
    return TrackNumbers(
        requests=sum(t.requests for t in tracks),
        errors=sum(t.errors for t in tracks),
        fallbacks=sum(t.fallbacks for t in tracks),
        slow=sum(t.slow for t in tracks),
        latency_p95_seconds=p95,
    )


def _stretch(interval: Interval) -> Stretch:
    """One recorded interval as a stretch of the canary, with stable's p95 as its latency reference."""
    canary, stable = interval.track("canary"), interval.track("stable")
    reference = interval.latency.get("stable")
    stable_p95 = reference.quantile(P95) if reference is not None else stable.latency_p95_seconds
    return Stretch(
        requests=canary.requests,
        errors=canary.errors,
        fallbacks=canary.fallbacks,
        slow=canary.slow,
        latency=interval.latency.get("canary"),
        stable_p95_seconds=stable_p95 if stable.requests >= MIN_REFERENCE_REQUESTS else None,
        comparisons=interval.shadow.comparisons if interval.shadow else 0.0,
        mismatches=interval.shadow.mismatches if interval.shadow else 0.0,
    )


def _shadow(intervals: Sequence[Interval]) -> ShadowNumbers | None:
    """The shadow comparisons of the phase so far, when the recording has them."""
    found = [i.shadow for i in intervals if i.shadow is not None]
    if not found:
        return None
    return ShadowNumbers(
        comparisons=sum(s.comparisons for s in found),
        mismatches=sum(s.mismatches for s in found),
        errors=sum(s.errors for s in found),
        skipped=sum(s.skipped for s in found),
    )


def _observe(intervals: Sequence[Interval], index: int, now: datetime, status: BacktestServiceStatus) -> Observation:
    current = intervals[index]
    since = status.phase_started_at or current.time
    in_phase = [i for i in intervals[: index + 1] if i.time >= since]
    return Observation(
        time=now,
        canary_recent=current.track("canary"),
        stable_recent=current.track("stable"),
        canary_phase=_sum([i.track("canary") for i in in_phase], [i.latency.get("canary") for i in in_phase]),
        stable_phase=_sum([i.track("stable") for i in in_phase], [i.latency.get("stable") for i in in_phase]),
        recent_window=now - current.time,
        phase_window=now - since,
        stretches=tuple(_stretch(i) for i in in_phase),
        canary_unhealthy_pods=current.unhealthy_pods,
        shadow=_shadow(in_phase),
    )


def _ends(intervals: Sequence[Interval], fallback: timedelta) -> list[datetime]:
    """Each interval ends where the next one starts; the last lasts as long as the one before it."""
    starts = [i.time for i in intervals]
    last = (starts[-1] - starts[-2]) if len(starts) > 1 else fallback
    return [*starts[1:], starts[-1] + last]


def replay(spec: BacktestServiceSpec, intervals: Sequence[Interval]) -> Iterator[Evaluation | Outcome]:
    """Yield every evaluation, then the outcome."""
    status = BacktestServiceStatus(phase=RolloutPhase.HEALTHY, stable_revision=RECORDED_STABLE)
    start = intervals[0].time
    empty = TrackNumbers(latency_p95_seconds=None)
    for _ in range(2):  # the rollout starts, then the (ready) canary takes its first weight
        decision = decide(spec, status, Observation(time=start), start)
        status = decision.status
        yield Evaluation(start, decision, empty, empty)
    for index, end in enumerate(_ends(intervals, spec.analysis.interval)):
        obs = _observe(intervals, index, end, status)
        decision = decide(spec, status, obs, end)
        status = decision.status
        yield Evaluation(end, decision, obs.canary_phase, obs.stable_phase)
        if decision.action in (Action.PROMOTE, Action.ROLLBACK):
            kind = "promoted" if decision.action == Action.PROMOTE else "rolled_back"
            entry = status.history[0] if status.history else None
            yield Outcome(kind, entry.phase if entry else None, end, decision.reason, entry.check if entry else None,
                          start)  # fmt: skip
            return
    last = status.last_analysis.time if status.last_analysis else start
    yield Outcome("in_progress", status.step_name, last, status.message, None, start)


def _rates(track: TrackNumbers) -> dict[str, Any]:
    return {
        "requests": track.requests,
        "error_rate": error_rate(track),
        "fallback_rate": fallback_rate(track),
        "success_rate": success_rate(track),
        "latency_p95_seconds": track.latency_p95_seconds,
    }


def as_json(item: Evaluation | Outcome) -> dict[str, Any]:
    """The simulator's JSON line for one evaluation or for the outcome."""
    if isinstance(item, Outcome):
        return {
            "outcome": item.outcome, "phase": item.phase, "time": item.time.isoformat(), "reason": item.reason,
            "check": item.check,
        }  # fmt: skip
    status = item.decision.status
    analysis = status.last_analysis
    return {
        "time": item.time.isoformat(),
        "phase": status.step_name,
        "state": status.phase.value,
        "weight": status.canary_weight,
        "verdict": analysis.verdict.value if analysis and analysis.time == item.time else None,
        "action": item.decision.action.value,
        "reason": item.decision.reason,
        "canary": _rates(item.canary),
        "stable": _rates(item.stable),
        "checks": [
            {
                "name": c.name,
                "verdict": c.verdict.value,
                "value": c.value,
                "threshold": c.threshold,
                "p_value": c.p_value,
            }
            for c in item.decision.checks
        ],
    }


def as_table_row(item: Evaluation | Outcome) -> str:
    """One line for people: time, phase, weight, verdict, action, reason."""
    data = as_json(item)
    if isinstance(item, Outcome):
        return f"==> {data['outcome'].upper()} in phase {data['phase'] or '-'} at {data['time']}: {data['reason']}"
    return (
        f"{item.time:%Y-%m-%d %H:%M:%S}  {data['phase'] or '-':<11} {data['weight']:>3}%  "
        f"{data['verdict'] or '-':<12} {data['action']:<9} {data['reason']}"
    )


TABLE_HEADER = f"{'time':<19}  {'phase':<11} {'weight':>4}  {'verdict':<12} {'action':<9} reason"


def outcome_line(recording: str, outcome: Outcome) -> dict[str, Any]:
    """The corpus line of one recording: where it ended, when, why, and how long after the canary started."""
    return {
        "recording": recording,
        "outcome": outcome.outcome,
        "phase": outcome.phase,
        "time": outcome.time.isoformat(),
        "seconds": outcome.seconds,
        "check": outcome.check,
        "reason": outcome.reason,
    }


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts per outcome, and the distribution of seconds to a rollback and to a promotion."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
    summary: dict[str, Any] = {"recordings": len(outcomes), "outcomes": counts}
    for kind, key in (("rolled_back", "detection_seconds"), ("promoted", "promotion_seconds")):
        seconds = sorted(o.seconds for o in outcomes if o.outcome == kind and o.seconds is not None)
        if seconds:
            summary[key] = {
                "min": seconds[0],
                "median": _percentile(seconds, 0.5),
                "p90": _percentile(seconds, 0.9),
                "max": seconds[-1],
            }
    checks: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.check:
            checks[outcome.check] = checks.get(outcome.check, 0) + 1
    if checks:
        summary["checks"] = checks
    return summary


def _percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(values) * share // 1))
    return values[int(rank) - 1]


def corpus_row(line: dict[str, Any]) -> str:
    seconds = "-" if line["seconds"] is None else f"{line['seconds']:.0f}s"
    return (
        f"{line['outcome']:<12} {line['phase'] or '-':<11} {seconds:>7}  {line['check'] or '-':<22} {line['recording']}"
    )


CORPUS_HEADER = f"{'outcome':<12} {'phase':<11} {'after':>7}  {'check':<22} recording"
