"""Decision quality of the default rollout policy, beside Flagger- and Argo-style baselines, same recordings.

    python bench/decision_quality.py [--runs 2000] [--seed 20261123] [--markdown bench/results/decision-quality.md]

For every scenario (healthy canaries at several traffic rates and error/slow baselines; each fault class),
``--runs`` seeded recordings are drawn from the noise model (``backtest_devtools.rollout_noise``) and judged
by the operator's policy and by both baselines (``backtest_devtools.rollout_sim``). Reported: how often a
healthy canary is rolled back (false rollbacks), how often a faulty one is missed, and the distribution of
the time from the fault's start to the rollback; then whether the goals of the decision-quality issue hold.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backtest_devtools.rollout_noise import Behaviour, Fault, NoiseModel
from backtest_devtools.rollout_sim import (
    ARGO_FAILURE_LIMIT,
    ARGO_WINDOW_SECONDS,
    FLAGGER_THRESHOLD,
    ROLLED_BACK,
    Verdicts,
    judge_argo,
    judge_flagger,
    judge_policy,
    record,
)
from backtest_operator.api import BacktestServiceSpec
from backtest_operator.budget import check_budget, stage_checks

RATES = (40.0, 200.0)
HEALTHY = Behaviour(error_rate=0.005, slow_rate=0.01)
JUDGES = {"policy": judge_policy, "flagger": judge_flagger, "argo": judge_argo}
LABELS = {
    "policy": "backtest-operator (default policy)",
    "flagger": f"Flagger-style (per-interval checks, rollback after {FLAGGER_THRESHOLD} failed)",
    "argo": f"Argo-style ({ARGO_WINDOW_SECONDS // 60}-min measurements, failureLimit {ARGO_FAILURE_LIMIT})",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    canary: Behaviour = HEALTHY
    stable: Behaviour = HEALTHY
    fault: Fault | None = None
    bound_seconds: float | None = None
    """Goal: rolled back within this long after the fault starts."""
    healthy: bool = False
    never_promoted: bool = False
    shadow_fraction: float = 0.0
    """Share of stable's requests the router copies to the canary and compares (the spec's
    traffic.shadow.fraction); 0: shadowing off, as in the scenarios before the shadow ones."""


MID_VALIDATION = (10 + 30 + 30) * 60.0  # canary 10m, testing 30m, half of validation's hour
SHADOW_FRACTION = 0.1
"""The router benchmark's shadow sample (bench/results/shadow.md)."""

SCENARIOS = [
    Scenario("healthy: 0.5% errors, 1% slow (as stable)", healthy=True),
    Scenario(
        "healthy: 0.1% errors, 0.5% slow (as stable)",
        canary=Behaviour(error_rate=0.001, slow_rate=0.005),
        stable=Behaviour(error_rate=0.001, slow_rate=0.005),
        healthy=True,
    ),
    Scenario(
        "healthy: 0.8% errors, 1% slow (as stable; near the 100% phase's 1% and 98%)",
        canary=Behaviour(error_rate=0.008, slow_rate=0.01),
        stable=Behaviour(error_rate=0.008, slow_rate=0.01),
        healthy=True,
    ),
    Scenario("15% errors", fault=Fault(Behaviour(error_rate=0.15)), bound_seconds=180),
    Scenario("30% errors", fault=Fault(Behaviour(error_rate=0.30)), bound_seconds=90),
    Scenario("+2.5 s on every request", fault=Fault(Behaviour(added_seconds=2.5)), bound_seconds=120),
    Scenario("35% fallbacks (canary timeouts)", fault=Fault(Behaviour(timeout_rate=0.35)), bound_seconds=120),
    Scenario("slow tail: 10% of requests over the objective", fault=Fault(Behaviour(slow_rate=0.10))),
    Scenario(
        "12% errors from the middle of validation",
        fault=Fault(Behaviour(error_rate=0.12), start_seconds=MID_VALIDATION),
        bound_seconds=90,
    ),
    Scenario("marginal: 2.5% errors (phase limit 2%)", fault=Fault(Behaviour(error_rate=0.025)), never_promoted=True),
    # Shadow comparison (10% of stable's requests copied to the canary): wrong results answered 200, fast.
    Scenario("shadow: correct results, every comparison matches", healthy=True, shadow_fraction=SHADOW_FRACTION),
    Scenario(
        "shadow: correct results, 0.05% flaky comparisons (half the 0.1% allowance)",
        canary=Behaviour(error_rate=0.005, slow_rate=0.01, mismatch_rate=0.0005),
        healthy=True,
        shadow_fraction=SHADOW_FRACTION,
    ),
    Scenario(
        "shadow: results differ on 5% of backtests",
        fault=Fault(Behaviour(mismatch_rate=0.05)),
        bound_seconds=2 * 30.0,
        shadow_fraction=SHADOW_FRACTION,
    ),
    Scenario(
        "shadow: results differ on 1% of backtests",
        fault=Fault(Behaviour(mismatch_rate=0.01)),
        shadow_fraction=SHADOW_FRACTION,
    ),
]


@dataclass
class Row:
    scenario: Scenario
    rate: float
    runs: int
    results: dict[str, Verdicts] = field(default_factory=dict)


def percentile(values: np.ndarray, share: float) -> float | None:
    return float(np.percentile(values, share * 100, method="inverted_cdf")) if values.size else None


def false_rollbacks(row: Row, judge: str) -> np.ndarray:
    """Rollbacks of a healthy canary, or before a late fault started."""
    verdicts = row.results[judge]
    rolled = verdicts.outcome == ROLLED_BACK
    start = row.scenario.fault.start_seconds if row.scenario.fault else np.inf
    return rolled & (verdicts.seconds <= start) if not row.scenario.healthy else rolled


def detections(row: Row, judge: str) -> np.ndarray:
    """Seconds from the fault's start to the rollback, for runs rolled back after it started."""
    verdicts = row.results[judge]
    start = row.scenario.fault.start_seconds if row.scenario.fault else 0.0
    caught = (verdicts.outcome == ROLLED_BACK) & (verdicts.seconds > start)
    return verdicts.seconds[caught] - start


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 60:.1f} min" if value >= 600 else f"{value:.0f} s"


def fmt_rate(count: int, runs: int) -> str:
    """A share with the counts; never rounded to 0% or 100% when it is not."""
    share = count / runs * 100
    shown = f"{share:.1f}"
    if (shown == "100.0" and count < runs) or (shown == "0.0" and count > 0):
        shown = f"{share:.2f}"
    return f"{shown}% ({count}/{runs})"


def run(runs: int, seed: int, spec: BacktestServiceSpec) -> list[Row]:
    rows = []
    for index, scenario in enumerate(SCENARIOS):
        for rate in RATES:
            model = NoiseModel(
                rate,
                runs,
                stable=scenario.stable,
                canary=scenario.canary,
                fault=scenario.fault,
                seed=seed + index * 10 + int(rate),
                shadow_fraction=scenario.shadow_fraction,
            )
            judged = with_shadow(spec, scenario.shadow_fraction)
            recording = record(judged, model)
            row = Row(scenario, rate, runs)
            for name, judge in JUDGES.items():
                row.results[name] = judge(judged, recording)
            rows.append(row)
            print(f"  {scenario.name} at {rate:g} req/s: done", file=sys.stderr, flush=True)
    return rows


def with_shadow(spec: BacktestServiceSpec, fraction: float) -> BacktestServiceSpec:
    """The spec with ``traffic.shadow.fraction`` set (the policy's mismatch checks exist only then)."""
    if fraction <= 0:
        return spec
    data = spec.model_dump(mode="json", by_alias=True)
    data["traffic"]["shadow"]["fraction"] = fraction
    return BacktestServiceSpec.model_validate(data)


def mismatch_budget(spec: BacktestServiceSpec) -> float:
    """The false-rollback probability the mismatch checks may spend over a rollout, for a mismatch rate at
    the allowance (the bound; flakes below it are rolled back far less often)."""
    return sum(
        check_budget(spec, name, phase)
        for phase in spec.phases
        for name in stage_checks(spec, phase)
        if name.startswith("result_mismatch")
    )


def comparison_rollbacks(row: Row) -> int:
    """Runs the policy rolled back by a result-mismatch check."""
    checks = row.results["policy"].check
    return int(sum(1 for check in checks if check is not None and str(check).startswith("result_mismatch")))


def goal_checks(row: Row, total_seconds: float, interval: float) -> list[tuple[str, bool]]:
    """The issue's goals for this scenario, met or not."""
    policy = row.results["policy"]
    goals: list[tuple[str, bool]] = []
    if row.scenario.healthy and row.scenario.canary == HEALTHY:
        rolled = int(false_rollbacks(row, "policy").sum())
        goals.append((f"at most 1% rolled back: {fmt_rate(rolled, row.runs)}", rolled <= 0.01 * row.runs))
        promoted = int((~np.isnan(policy.promoted_seconds)).sum())
        on_time = int((policy.promoted_seconds <= total_seconds + interval).sum())
        goals.append(
            (
                f"promoted within one interval after {total_seconds / 60:.0f} min: {fmt_rate(on_time, row.runs)}"
                f" (promoted at all: {promoted})",
                on_time >= 0.99 * row.runs,
            )
        )
    if row.scenario.healthy and row.scenario.shadow_fraction > 0:
        wrong = comparison_rollbacks(row)
        if row.scenario.canary.mismatch_rate == 0:
            goals.append((f"never rolled back by the comparison: {fmt_rate(wrong, row.runs)}", wrong == 0))
        else:  # flaky comparisons under the allowance: the sequential test's guarantee, not "never"
            bound = mismatch_budget(with_shadow(BacktestServiceSpec.model_validate({"image": "x"}), 0.1))
            goals.append(
                (
                    f"rolled back by the comparison at most as often as the mismatch checks' share of the noise "
                    f"budget ({bound:.1%}) allows: {fmt_rate(wrong, row.runs)}",
                    wrong <= bound * row.runs,
                )
            )
    if row.scenario.bound_seconds is not None:
        seconds = detections(row, "policy")
        within = int((seconds <= row.scenario.bound_seconds).sum())
        p95 = percentile(seconds, 0.95) if seconds.size == row.runs else None
        goals.append(
            (
                f"rolled back within {fmt_seconds(row.scenario.bound_seconds)}: {fmt_rate(within, row.runs)} "
                f"(p95 {fmt_seconds(p95)})",
                within >= 0.95 * row.runs,
            )
        )
    if row.scenario.never_promoted:
        promoted = int((~np.isnan(policy.promoted_seconds)).sum())
        goals.append((f"never promoted: {promoted} of {row.runs} promoted", promoted == 0))
    return goals


def pair(rows: list[Row], rate: float, judge: str) -> tuple[int, int, dict[str, float | None]]:
    """The pair the goal compares, at one traffic rate: false rollbacks over every scenario (healthy
    canaries, and rollbacks before a late fault starts), and the median detection time per fault class."""
    at_rate = [row for row in rows if row.rate == rate]
    wrong = sum(int(false_rollbacks(row, judge).sum()) for row in at_rate)
    runs = sum(row.runs for row in at_rate)
    medians = {
        row.scenario.name: percentile(detections(row, judge), 0.5) for row in at_rate if not row.scenario.healthy
    }
    return wrong, runs, medians


def pair_goal(rows: list[Row], rate: float) -> tuple[str, bool]:
    """Better than both baselines: fewer false rollbacks, and no slower (median) on every fault class that
    has a detection goal; classes without one are shown, not judged."""
    ours_wrong, runs, ours = pair(rows, rate, "policy")
    verdicts = []
    for baseline in ("flagger", "argo"):
        theirs_wrong, _, theirs = pair(rows, rate, baseline)
        timed = [row.scenario.name for row in rows if row.rate == rate and row.scenario.bound_seconds is not None]
        faster = all((ours[n] or np.inf) <= (theirs[n] or np.inf) for n in timed)
        verdicts.append(ours_wrong < theirs_wrong and faster)
    text = (
        f"better than both baselines on (false rollbacks, detection time) at {rate:g} req/s: false rollbacks "
        f"{fmt_rate(ours_wrong, runs)} against {fmt_rate(pair(rows, rate, 'flagger')[0], runs)} (Flagger-style) "
        f"and {fmt_rate(pair(rows, rate, 'argo')[0], runs)} (Argo-style); median detection no slower on every "
        "fault class with a detection goal (table below)"
    )
    return text, all(verdicts)


def markdown(rows: list[Row], runs: int, seed: int, elapsed: float, cpu: float, spec: BacktestServiceSpec) -> str:
    interval = spec.analysis.interval.total_seconds()
    total = sum(p.duration.total_seconds() for p in spec.phases)
    lines = [
        "# Decision quality: the default rollout policy under noise",
        "",
        "Generated by `make bench-decisions` "
        f"(`python bench/decision_quality.py --runs {runs} --seed {seed}`): {elapsed:.0f} s ({cpu:.0f} s of CPU) "
        f"on {platform.machine()} with Python {platform.python_version()}. Every scenario: {runs} seeded "
        "recordings per traffic rate, judged by the operator's policy and by both baselines **on the same "
        "recordings in the same run**.",
        "",
        "## Noise model",
        "",
        "Per request (`devtools/backtest_devtools/rollout_noise.py`): requests reach the router as a Poisson",
        "process (40 or 200 per second in total); each goes to the canary with probability weight/100, the",
        "weight following the default phases (1% for 10 min, 10% for 30 min, 50% for 1 h, 100% for 15 min, then",
        "the 10 min bake window). Each request is an error (5xx), a canary timeout (re-served by stable: a",
        "fallback and slow, not an error) or answered, with binomial probabilities; half of the errors are on",
        "idempotent requests, which fall back too. Latencies are lognormal (median 120 ms, sigma 0.6) plus any",
        "added delay, with a slow tail beyond the 2 s objective (objective + exponential, mean 0.5 s); they land",
        "in the router's histogram buckets, so slow counts are exact and p95s are what `histogram_quantile`",
        "says. The policy is evaluated every 30 s. Time is counted from the canary's first traffic (or from",
        "the start of a late fault).",
        "",
        "Shadow scenarios: the router copies 10% of the requests stable serves to the canary (the spec's",
        "`traffic.shadow.fraction: 0.1`); each copy the canary answers (not an error or timeout) is compared,",
        "and differs from stable's result with the canary's mismatch probability (wrong results, or flaky",
        "comparisons). Only the policy reads the comparisons (`result_mismatch_rate` against the phase's",
        "`maxResultMismatchRate`, 0 tested against a 0.1% allowance, and `result_mismatch_trigger`); the",
        "baselines judge errors and latency only, as Flagger and Argo Rollouts do: a release that answers 200,",
        "fast and wrong is promoted by them; what their rows show as detections of a shadow fault are their",
        "rollbacks on noise in errors and latency, which they make as often with correct results.",
        "",
        "Baselines, on the same recordings: **Flagger-style**: every interval checks that interval's canary",
        f"numbers against the phase's thresholds and the rollback limits; the {FLAGGER_THRESHOLD}th failed",
        "check rolls back; otherwise promotion when the schedule ends. **Argo-style**: every interval measures",
        f"the last {ARGO_WINDOW_SECONDS // 60} minutes (as `rate(...[5m])` queries do) against the same",
        f"thresholds; more than {ARGO_FAILURE_LIMIT} failed measurements (failureLimit) roll back. Neither",
        "has a bake window; the policy's numbers include rollbacks during its bake window.",
        "",
        "## Goals",
        "",
    ]
    for row in rows:
        for goal, met in goal_checks(row, total, interval):
            lines.append(f"- {'met' if met else '**NOT met**'}: {row.scenario.name}, {row.rate:g} req/s: {goal}")
    for rate in RATES:
        goal, met = pair_goal(rows, rate)
        lines.append(f"- {'met' if met else '**NOT met**'}: {goal}")
    lines += ["", "## The pair, fault by fault (median detection time)", ""]
    lines += ["| fault | req/s | policy | Flagger-style | Argo-style |", "|---|---|---|---|---|"]
    for row in rows:
        if row.scenario.healthy:
            continue
        cells = [fmt_seconds(percentile(detections(row, judge), 0.5)) for judge in JUDGES]
        lines.append(f"| {row.scenario.name} | {row.rate:g} | {' | '.join(cells)} |")
    lines += [
        "",
        "Where a baseline is faster it pays for it in false rollbacks: it acts on single intervals (Flagger-style)",
        "or 5-minute windows (Argo-style) without asking whether the counts could be noise.",
    ]
    lines += [
        "",
        "## Results",
        "",
        "False rollbacks: a healthy canary rolled back (or, for a late fault, rolled back before the fault",
        "started). Missed: a faulty canary promoted or still running when its recording ends. Detection: time",
        "from the fault's start to the rollback (p50 / p90 / p95 / max over the runs that were rolled back).",
        "",
        "| scenario | req/s | judge | false rollbacks | missed | promoted | detection p50 / p90 / p95 / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name in JUDGES:
            verdicts = row.results[name]
            seconds = detections(row, name)
            promoted = int((~np.isnan(verdicts.promoted_seconds)).sum())
            missed = "-" if row.scenario.healthy else fmt_rate(row.runs - seconds.size, row.runs)
            timing = " / ".join(fmt_seconds(percentile(seconds, q)) for q in (0.5, 0.9, 0.95)) if seconds.size else "-"
            timing += f" / {fmt_seconds(float(seconds.max()))}" if seconds.size else ""
            wrong = fmt_rate(int(false_rollbacks(row, name).sum()), row.runs)
            lines.append(
                f"| {row.scenario.name} | {row.rate:g} | {name} | {wrong} | {missed} | {fmt_rate(promoted, row.runs)}"
                f" | {timing} |"
            )
    lines += ["", "## Checks that rolled back (policy)", ""]
    for row in rows:
        verdicts = row.results["policy"]
        rolled = verdicts.outcome == ROLLED_BACK
        names, counts = np.unique(verdicts.check[rolled].astype(str), return_counts=True) if rolled.any() else ([], [])
        shown = ", ".join(f"{n} {c}" for n, c in zip(names, counts, strict=True)) or "none"
        lines.append(f"- {row.scenario.name}, {row.rate:g} req/s: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="recordings per scenario and traffic rate")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--markdown", type=Path, help="write the report here (default: print it)")
    args = parser.parse_args(argv)
    spec = BacktestServiceSpec.model_validate({"image": "registry.example/backtest-engine:2.0.0"})
    started, cpu = time.perf_counter(), time.process_time()
    rows = run(args.runs, args.seed, spec)
    report = markdown(rows, args.runs, args.seed, time.perf_counter() - started, time.process_time() - cpu, spec)
    if args.markdown:
        args.markdown.write_text(report)
        print(f"wrote {args.markdown}", file=sys.stderr)
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
