"""The rollout state machine: ``decide(spec, status, observation, now) -> Decision``, without any I/O.

Everything the operator does to a rollout is a decision made here: start, wait for the canary, advance a
phase, hold, pause and resume, promote (by analysis or by request), bake, roll back (by trigger, by a
failed phase, by repeated analysis errors, or by request), retry, and restart when the spec changes again.
The returned status is complete, so the caller only has to persist it; the workloads follow from it.

Rules that hold for every decision (and are property-tested):
* the canary weight is 0 or the weight of a phase; it moves only along ``spec.phases``, and only once
  the canary has the ready pods for it (``capacity.py``); a phase's clock starts once the data plane
  confirms its weight, and promotion waits for every pod of the new revision;
* a failing check (a rollback trigger, or a phase check on clear evidence) rolls back at once and wins
  over everything else, pause and manual promotion included; pod health is judged even without Prometheus;
* missing data, too few requests, doubtful numbers and analysis errors never advance a phase or promote;
* the same inputs always give the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from backtest_operator.analysis import (
    Observation,
    analysis_error_check,
    bake_checks,
    first_failure,
    overall,
    phase_checks,
    pod_checks,
    trigger_checks,
)
from backtest_operator.api import (
    HISTORY_LIMIT,
    AnalysisRecord,
    BacktestServiceSpec,
    BacktestServiceStatus,
    CheckResult,
    HandledControls,
    HistoryEntry,
    Outcome,
    Phase,
    RolloutPhase,
    Verdict,
    brief_duration,
)
from backtest_operator.capacity import (
    IDEAL,
    DataPlane,
    canary_replicas,
    capacity_message,
    has_capacity,
    is_confirmed,
)
from backtest_operator.conditions import derive_conditions
from backtest_operator.controls import NO_CONTROLS, Controls
from backtest_operator.mismatches import shadow_condition


class Action(StrEnum):
    INITIALIZE = "initialize"
    READY = "ready"
    HOLD = "hold"
    START = "start"
    BEGIN = "begin"
    """The canary is ready; traffic starts flowing to it."""
    ADVANCE = "advance"
    SHIFT = "shift"
    """The canary has the ready pods for the next weight; the weight is applied."""
    CONFIRM = "confirm"
    """The data plane applies the phase's weight; the phase's clock starts."""
    PROMOTING = "promoting"
    """A promotion waits for every replica of the new revision to be ready."""
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    COMPLETE = "complete"
    """The bake window ended; the previous revision can go."""
    ROLLBACK = "rollback"
    REVERT = "revert"
    CLEAR = "clear"
    """The spec went back to stable while degraded."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post: Normal or Warning, a CamelCase reason, a sentence."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    action: Action
    status: BacktestServiceStatus
    reason: str
    events: tuple[Event, ...] = ()
    failing_check: str | None = None
    checks: tuple[CheckResult, ...] = field(default=())
    deferred: frozenset[str] = frozenset()
    """Requests this decision could not act on yet but a later one will: they stay pending."""


@dataclass(frozen=True)
class _Context:
    spec: BacktestServiceSpec
    obs: Observation
    now: datetime
    generation: int
    revision: str
    pending: frozenset[str]
    plane: DataPlane = IDEAL


def decide(
    spec: BacktestServiceSpec,
    status: BacktestServiceStatus,
    obs: Observation,
    now: datetime,
    *,
    generation: int = 0,
    controls: Controls = NO_CONTROLS,
    plane: DataPlane = IDEAL,
) -> Decision:
    """The next state of a BacktestService and why. ``plane`` is what the cluster's data plane holds."""
    pending = controls.pending(status.handled_controls)
    ctx = _Context(spec, obs, now, generation, spec.revision(), pending, plane)
    previous = status.handled_controls
    status = status.evolve(handled_controls=controls.as_handled(), observed_generation=generation)
    if plane.measured:
        status = status.evolve(effective_weight=plane.effective_weight)
    decision = _route(ctx, status)
    deferred = ctx.pending & decision.deferred
    ignored = [
        Event("Normal", "RequestIgnored", f"{name.replace('_', '-')} request not acted on: {decision.reason}")
        for name in sorted(ctx.pending - _CONSUMED.get(decision.action, frozenset()) - deferred)
    ]
    final = decision.status.evolve(
        message=decision.reason, handled_controls=_keep_pending(decision.status.handled_controls, previous, deferred)
    )
    final = final.evolve(conditions=derive_conditions(final, obs.stable_ready, generation, now, plane.note))
    final = final.evolve(conditions=shadow_condition(final.conditions, spec, generation, now))
    return Decision(
        decision.action,
        final,
        decision.reason,
        (*decision.events, *ignored),
        decision.failing_check,
        decision.checks,
    )


def _keep_pending(handled: HandledControls, previous: HandledControls, deferred: frozenset[str]) -> HandledControls:
    """Deferred requests keep their old handled token, so the next evaluation still sees them pending."""
    return handled.model_copy(update={name: getattr(previous, name) for name in deferred})


_CONSUMED = {
    Action.PROMOTE: frozenset({"promote", "promote_full"}),
    Action.ADVANCE: frozenset({"promote"}),
    Action.PROMOTING: frozenset({"promote", "promote_full"}),
    Action.ROLLBACK: frozenset({"abort"}),
    Action.START: frozenset({"retry"}),
}


def _route(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    if status.stable_revision is None or status.phase == RolloutPhase.INITIALIZING:
        return _initializing(ctx, status)
    if status.phase == RolloutPhase.HEALTHY:
        if ctx.revision != status.stable_revision:
            return _start(ctx, status, f"new revision {ctx.revision} (image {ctx.spec.image})")
        return _hold(status, _serving(status.stable_revision))
    if status.phase == RolloutPhase.DEGRADED:
        return _degraded(ctx, status)
    if status.phase == RolloutPhase.BAKING:
        return _baking(ctx, status)
    return _progressing(ctx, status)


def _serving(revision: str | None) -> str:
    return f"stable revision {revision} serves all traffic"


def _hold(status: BacktestServiceStatus, reason: str, checks: list[CheckResult] | None = None) -> Decision:
    return Decision(Action.HOLD, status, reason, checks=tuple(checks or ()))


def _with_history(status: BacktestServiceStatus, entry: HistoryEntry) -> list[HistoryEntry]:
    return [entry, *status.history][:HISTORY_LIMIT]


def _initializing(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    """The first revision goes straight to stable: with nothing to compare against there is no canary."""
    if status.stable_revision != ctx.revision:
        status = status.evolve(
            phase=RolloutPhase.INITIALIZING,
            stable_revision=ctx.revision,
            stable_pod=ctx.spec.pod(),
            canary_weight=0,
        )
        reason = f"deploying first revision {ctx.revision} (image {ctx.spec.image}) as stable"
        return Decision(Action.INITIALIZE, status, reason, (Event("Normal", "Initializing", reason),))
    if ctx.obs.stable_ready:
        reason = _serving(ctx.revision)
        status = status.evolve(phase=RolloutPhase.HEALTHY)
        return Decision(Action.READY, status, reason, (Event("Normal", "Ready", reason),))
    return _hold(status, f"waiting for the pods of first revision {ctx.revision} to become ready")


def _start(ctx: _Context, status: BacktestServiceStatus, why: str) -> Decision:
    first = ctx.spec.phases[0]
    status = status.evolve(
        phase=RolloutPhase.PROGRESSING,
        step=0,
        step_name=first.name,
        canary_weight=0,
        canary_revision=ctx.revision,
        rollout_started_at=ctx.now,
        phase_started_at=None,
        waiting_since=ctx.now,
        promotion_pending=False,
        paused_at=None,
        analysis_errors=0,
        last_analysis=None,
    )
    reason = f"rollout started: {why}; waiting for canary pods before sending {first.weight}% of traffic"
    event = Event("Normal", "RolloutStarted", reason)
    return Decision(Action.START, status, reason, (event,), deferred=_WAIT_FOR_TRAFFIC | {"abort"})


_WAIT_FOR_TRAFFIC = frozenset({"promote", "promote_full"})
"""Promotions requested before the canary takes traffic (e.g. committed together with the new image, as
in the GitOps example of docs/operations.md) are acted on once its first phase runs."""


def _finish_rollout(
    ctx: _Context, status: BacktestServiceStatus, outcome: Outcome, reason: str, check: str | None = None
) -> HistoryEntry:
    return HistoryEntry(
        revision=status.canary_revision or ctx.revision,
        image=ctx.spec.image if status.canary_revision == ctx.revision else "",
        outcome=outcome,
        phase=status.step_name,
        check=check,
        reason=reason,
        started_at=status.rollout_started_at or ctx.now,
        finished_at=ctx.now,
    )


def _rollback(
    ctx: _Context,
    status: BacktestServiceStatus,
    reason: str,
    check: str | None,
    outcome: Outcome = Outcome.ROLLED_BACK,
    checks: list[CheckResult] | None = None,
) -> Decision:
    entry = _finish_rollout(ctx, status, outcome, reason, check)
    status = status.evolve(
        phase=RolloutPhase.DEGRADED,
        canary_weight=0,
        step=None,
        paused_at=None,
        waiting_since=None,
        promotion_pending=False,
        history=_with_history(status, entry),
    )
    event = Event("Warning", "Aborted" if outcome == Outcome.ABORTED else "RolledBack", reason)
    return Decision(Action.ROLLBACK, status, reason, (event,), check, tuple(checks or ()))


def _promote(ctx: _Context, status: BacktestServiceStatus, why: str) -> Decision:
    bake = ctx.spec.rollback.bake_window
    reason = f"promoted revision {status.canary_revision}: {why}"
    entry = _finish_rollout(ctx, status, Outcome.PROMOTED, reason)
    status = status.evolve(
        phase=RolloutPhase.BAKING if bake.total_seconds() > 0 else RolloutPhase.HEALTHY,
        stable_revision=status.canary_revision,
        stable_pod=ctx.spec.pod(),
        previous_revision=status.stable_revision,
        previous_pod=status.stable_pod,
        canary_revision=None,
        canary_weight=0,
        step=None,
        step_name=None,
        phase_started_at=None,
        waiting_since=None,
        promotion_pending=False,
        paused_at=None,
        bake_until=ctx.now + bake,
        history=_with_history(status, entry),
    )
    if status.phase == RolloutPhase.HEALTHY:
        status = status.evolve(previous_revision=None, previous_pod=None, bake_until=None)
    return Decision(Action.PROMOTE, status, reason, (Event("Normal", "Promoted", reason),))


def _enter_step(ctx: _Context, status: BacktestServiceStatus, index: int, action: Action, why: str) -> Decision:
    """Head for phase ``index``: its weight is applied once the canary has capacity for it, and its clock
    starts once the data plane confirms the weight (all in this pass when both are already true)."""
    phase = ctx.spec.phases[index]
    status = status.evolve(
        step=index,
        step_name=phase.name,
        phase_started_at=None,
        waiting_since=ctx.now,
        phase=RolloutPhase.PROGRESSING,
        paused_at=None,
    )
    decision = _realise_step(ctx, status, index, why)
    return Decision(action, decision.status, decision.reason, decision.events)


def _realise_step(ctx: _Context, status: BacktestServiceStatus, index: int, why: str = "") -> Decision:
    """Apply the step's weight when the canary has the ready pods for it; start the phase's clock when the
    data plane confirms it. A wait longer than the progress deadline rolls back."""
    spec, plane, now = ctx.spec, ctx.plane, ctx.now
    phase = spec.phases[index]
    prefix = f"{why}; " if why else ""
    events: list[Event] = []
    if status.canary_weight != phase.weight:
        needed = canary_replicas(phase.weight, spec.replicas, spec.traffic.provider)
        if not has_capacity(plane, ctx.obs.canary_ready, needed):
            waiting = f"waiting for capacity before phase {phase.name}: " + capacity_message(
                plane, needed, phase.weight, spec.replicas
            )
            return _wait_or_give_up(ctx, status, f"{prefix}{waiting}", "canary pods not ready")
        shifted = (
            f"{prefix}canary weight {status.canary_weight}% -> {phase.weight}% for phase {phase.name}; "
            + (f"{plane.canary_ready} canary and {plane.stable_ready} stable pods ready" if plane.measured else "")
        ).rstrip("; ")
        status = status.evolve(canary_weight=phase.weight)
        events.append(Event("Normal", "TrafficShifted", shifted))
        if plane.measured:
            return Decision(Action.SHIFT, status, shifted, tuple(events))
    if not is_confirmed(plane, phase.weight):
        waiting = f"waiting for the data plane to apply {phase.weight}% for phase {phase.name}"
        return _wait_or_give_up(ctx, status, f"{prefix}{waiting}{': ' + plane.note if plane.note else ''}",
                                f"the data plane did not apply {phase.weight}%")  # fmt: skip
    status = status.evolve(phase_started_at=now, waiting_since=None)
    reason = f"{prefix}phase {phase.name}: {phase.weight}% of traffic for at least {brief_duration(phase.duration)}"
    events.append(Event("Normal", "PhaseStarted", reason))
    return Decision(Action.CONFIRM, status, reason, tuple(events))


def _wait_or_give_up(ctx: _Context, status: BacktestServiceStatus, reason: str, failure: str) -> Decision:
    started = status.waiting_since or status.rollout_started_at or ctx.now
    deadline = ctx.spec.rollback.progress_deadline
    if ctx.now - started >= deadline:
        why = f"rolled back in phase {status.step_name}: {failure} {brief_duration(deadline)} after asking"
        return _rollback(ctx, status, why, "progress_deadline")
    return _hold(status.evolve(waiting_since=started), reason)


def _promote_when_ready(ctx: _Context, status: BacktestServiceStatus, why: str) -> Decision:
    """Promotion switches stable to the new revision: only once every one of its replicas is ready."""
    total = ctx.spec.replicas
    plane = ctx.plane
    ready = plane.canary_ready >= total if plane.measured else ctx.obs.canary_ready
    if ready:
        return _promote(ctx, status, why)
    status = status.evolve(promotion_pending=True, waiting_since=status.waiting_since or ctx.now)
    have = f"{plane.canary_ready} of {total}" if plane.measured else f"not all {total}"
    reason = f"{why}; waiting for the new revision to be fully ready before promotion: {have} pods ready"
    waiting = _wait_or_give_up(ctx, status, reason, "the new revision was not fully ready")
    return waiting if waiting.action == Action.ROLLBACK else replace(waiting, action=Action.PROMOTING)


_ACT_WITHOUT_DATA = frozenset({"abort", "promote", "promote_full"})
"""Requests a person makes on their own judgement: they act even while measurements fail."""


def _progressing(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    spec, obs, now = ctx.spec, ctx.obs, ctx.now
    if ctx.revision == status.stable_revision:
        reason = (
            f"spec is back at stable revision {status.stable_revision}; rollout of {status.canary_revision} dropped"
        )
        entry = _finish_rollout(ctx, status, Outcome.REVERTED, reason)
        status = status.evolve(
            phase=RolloutPhase.HEALTHY,
            canary_weight=0,
            canary_revision=None,
            step=None,
            step_name=None,
            phase_started_at=None,
            paused_at=None,
            history=_with_history(status, entry),
        )
        return Decision(Action.REVERT, status, reason, (Event("Normal", "Reverted", reason),))
    if ctx.revision != status.canary_revision:
        reason = f"revision {status.canary_revision} superseded by {ctx.revision}"
        status = status.evolve(history=_with_history(status, _finish_rollout(ctx, status, Outcome.SUPERSEDED, reason)))
        return _start(ctx, status, f"{reason}, restarting from the first phase")
    if obs.error is not None:
        failures = status.analysis_errors + 1
        limit = spec.rollback.max_analysis_errors
        if failures >= limit:
            reason = f"rolled back in phase {status.step_name}: analysis failed {failures} times in a row ({obs.error})"
            return _rollback(ctx, status.evolve(analysis_errors=failures), reason, "analysis")
        status = status.evolve(analysis_errors=failures)
        pods = pod_checks(spec, obs.canary_unhealthy_pods) if status.phase_started_at else []
        if first_failure(pods) is None and not ctx.pending & _ACT_WITHOUT_DATA:
            reason = f"analysis failed ({failures}/{limit}), holding phase {status.step_name}: {obs.error}"
            return _hold(status, reason, [analysis_error_check(obs), *pods])
    else:
        status = status.evolve(analysis_errors=0)
    index = next((i for i, p in enumerate(spec.phases) if p.name == status.step_name), None)
    if index is None:
        return _start(ctx, status, f"phases were edited and phase {status.step_name} no longer exists")
    phase = spec.phases[index]
    if status.phase_started_at is None and status.canary_weight == 0:
        return _waiting_for_canary(ctx, status, index)
    if _lost_capacity(ctx, status):
        return _capacity_lost(ctx, status, index)
    # Pod health comes from Kubernetes: it is judged even when Prometheus fails (and before any request).
    triggers = trigger_checks(spec, phase, obs) if obs.error is None else pod_checks(spec, obs.canary_unhealthy_pods)
    tripped = first_failure(triggers)
    if tripped is not None:
        reason = f"rolled back in phase {phase.name}: {tripped.message}"
        record = AnalysisRecord(
            time=now, phase=phase.name, verdict=Verdict.FAIL, window_seconds=obs.recent_window.total_seconds(),
            canary=obs.canary_recent, stable=obs.stable_recent, checks=triggers, shadow=obs.shadow,
        )  # fmt: skip
        return _rollback(ctx, status.evolve(last_analysis=record), reason, tripped.name, checks=triggers)
    if "abort" in ctx.pending:
        return _rollback(ctx, status, f"aborted by request in phase {phase.name}", "abort", Outcome.ABORTED)
    if status.phase_started_at is None:
        return _entering(ctx, status, index)
    checks = phase_checks(spec, phase, obs) if obs.error is None else [analysis_error_check(obs)]
    failed = first_failure(checks)
    if failed is not None:
        # Sequential evidence that the phase cannot pass: no reason to wait for its end (paused or not).
        record = AnalysisRecord(
            time=now, phase=phase.name, verdict=Verdict.FAIL, window_seconds=obs.phase_window.total_seconds(),
            canary=obs.canary_phase, stable=obs.stable_phase, checks=[*triggers, *checks], shadow=obs.shadow,
        )  # fmt: skip
        reason = f"rolled back in phase {phase.name}: {failed.message}"
        status = status.evolve(last_analysis=record)
        return _rollback(ctx, status, reason, failed.name, checks=[*triggers, *checks])
    record = AnalysisRecord(
        time=now,
        phase=phase.name,
        verdict=overall(checks + triggers),
        window_seconds=obs.phase_window.total_seconds(),
        canary=obs.canary_phase,
        stable=obs.stable_phase,
        checks=[*triggers, *checks],
        shadow=obs.shadow,
    )
    status = status.evolve(step=index, canary_weight=phase.weight, last_analysis=record)
    # Every check is reported (metrics, simulator); only the phase checks decide whether the phase passes.
    return replace(_judge(ctx, status, index, phase, checks), checks=(*triggers, *checks))


def _lost_capacity(ctx: _Context, status: BacktestServiceStatus) -> bool:
    """Every ready canary pod went away (evicted, drained, preempted) while none is unhealthy: a router or a
    gateway would send the canary's share to a Service without endpoints. Fewer pods than the share asks
    for still serve it (the next weight waits for capacity); behind one Service (``replicas``) the share
    simply follows the ready pods."""
    spec, plane = ctx.spec, ctx.plane
    if not plane.measured or spec.traffic.provider == "replicas" or status.canary_weight == 0:
        return False
    unhealthy = first_failure(pod_checks(spec, ctx.obs.canary_unhealthy_pods)) is not None
    return plane.canary_ready == 0 and not unhealthy


def _capacity_lost(ctx: _Context, status: BacktestServiceStatus, index: int) -> Decision:
    """The canary's share goes back to stable at once, and the phase starts again (fresh clock and analysis
    window) when the pods are back: requests that failed for want of pods say nothing about the release,
    and judging them would roll back a healthy canary on every node drain."""
    phase = ctx.spec.phases[index]
    needed = canary_replicas(status.canary_weight, ctx.spec.replicas, ctx.spec.traffic.provider)
    reason = (
        f"canary capacity lost in phase {phase.name} ("
        + capacity_message(ctx.plane, needed, status.canary_weight, ctx.spec.replicas)
        + f"): canary weight {status.canary_weight}% -> 0% until its pods are ready again, then phase "
        + f"{phase.name} starts over"
    )
    status = status.evolve(canary_weight=0, phase_started_at=None, waiting_since=ctx.now)
    return Decision(Action.SHIFT, status, reason, (Event("Warning", "CapacityLost", reason),))


def _waiting_for_canary(ctx: _Context, status: BacktestServiceStatus, index: int) -> Decision:
    """No traffic reaches the canary yet: wait for its pods (capacity for the first weight), unless they
    are unhealthy (crash loops, readiness failing past the grace), which rolls back without waiting for
    the progress deadline."""
    if "abort" in ctx.pending:
        return _rollback(ctx, status, "aborted by request before the canary took traffic", "abort", Outcome.ABORTED)
    pods = pod_checks(ctx.spec, ctx.obs.canary_unhealthy_pods)
    unhealthy = first_failure(pods)
    if unhealthy is not None:
        reason = f"rolled back before phase {status.step_name} took traffic: {unhealthy.message}"
        return _rollback(ctx, status, reason, unhealthy.name, checks=pods)
    if ctx.spec.paused:
        return _paused_before_traffic(ctx, status)
    if status.phase == RolloutPhase.PAUSED:
        status = status.evolve(phase=RolloutPhase.PROGRESSING, paused_at=None)
    phase = ctx.spec.phases[index]
    needed = canary_replicas(phase.weight, ctx.spec.replicas, ctx.spec.traffic.provider)
    if has_capacity(ctx.plane, ctx.obs.canary_ready, needed):
        why = f"canary revision {status.canary_revision} is ready"
        return replace(_enter_step(ctx, status, index, Action.BEGIN, why), deferred=_WAIT_FOR_TRAFFIC)
    started = status.waiting_since or status.rollout_started_at or ctx.now
    deadline = ctx.spec.rollback.progress_deadline
    if ctx.now - started >= deadline:
        reason = f"rolled back: canary pods not ready {brief_duration(deadline)} after the rollout started"
        return _rollback(ctx, status, reason, "progress_deadline")
    reason = f"waiting for canary pods of revision {status.canary_revision} to become ready"
    if ctx.plane.measured:
        reason += f" ({capacity_message(ctx.plane, needed, phase.weight, ctx.spec.replicas)})"
    return replace(_hold(status, reason), deferred=_WAIT_FOR_TRAFFIC)


def _entering(ctx: _Context, status: BacktestServiceStatus, index: int) -> Decision:
    """Traffic flows at the previous weight while phase ``index`` waits for capacity or confirmation."""
    spec = ctx.spec
    phase = spec.phases[index]
    last = index == len(spec.phases) - 1
    if status.promotion_pending or "promote_full" in ctx.pending:
        return _promote_when_ready(ctx, status, "full promotion requested")
    if "promote" in ctx.pending:
        if last:
            return _promote_when_ready(ctx, status, f"promotion requested in the last phase {phase.name}")
        return _enter_step(ctx, status, index + 1, Action.ADVANCE, f"phase {phase.name} skipped by request")
    if spec.paused:
        status = status.evolve(phase=RolloutPhase.PAUSED, paused_at=status.paused_at or ctx.now)
        return _hold(status, f"paused before phase {phase.name} took its {phase.weight}%; rollback triggers still act")
    if status.phase == RolloutPhase.PAUSED:
        status = status.evolve(phase=RolloutPhase.PROGRESSING, paused_at=None)
    return _realise_step(ctx, status, index)


def _paused_before_traffic(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    """``spec.paused`` on a new revision: the canary is deployed but gets no traffic until resumed."""
    reason = f"paused before the first phase: revision {status.canary_revision} gets no traffic until resumed"
    if status.phase == RolloutPhase.PAUSED:
        return replace(_hold(status, reason), deferred=_WAIT_FOR_TRAFFIC)
    status = status.evolve(phase=RolloutPhase.PAUSED, paused_at=ctx.now, canary_weight=0)
    event = Event("Normal", "Paused", reason)
    return Decision(Action.PAUSE, status, reason, (event,), deferred=_WAIT_FOR_TRAFFIC)


def _judge(
    ctx: _Context, status: BacktestServiceStatus, index: int, phase: Phase, checks: list[CheckResult]
) -> Decision:
    spec, now = ctx.spec, ctx.now
    last = index == len(spec.phases) - 1
    if status.promotion_pending or "promote_full" in ctx.pending:
        return _promote_when_ready(ctx, status, "full promotion requested")
    if "promote" in ctx.pending:
        if last:
            return _promote_when_ready(ctx, status, f"promotion requested in the last phase {phase.name}")
        return _enter_step(ctx, status, index + 1, Action.ADVANCE, f"phase {phase.name} skipped by request")
    if spec.paused:
        if status.phase == RolloutPhase.PAUSED:
            return _hold(status, f"paused in phase {phase.name} at {phase.weight}%", checks)
        status = status.evolve(phase=RolloutPhase.PAUSED, paused_at=now)
        reason = f"paused in phase {phase.name} at {phase.weight}%; rollback triggers still act"
        return Decision(Action.PAUSE, status, reason, (Event("Normal", "Paused", reason),), checks=tuple(checks))
    if status.phase == RolloutPhase.PAUSED:
        held = now - (status.paused_at or now)
        started = (status.phase_started_at or now) + held
        status = status.evolve(phase=RolloutPhase.PROGRESSING, paused_at=None, phase_started_at=started)
        reason = f"resumed phase {phase.name} after {brief_duration(held)} paused (its clock was stopped)"
        return Decision(Action.RESUME, status, reason, (Event("Normal", "Resumed", reason),), checks=tuple(checks))
    elapsed = now - (status.phase_started_at or now)
    if elapsed < phase.duration:
        summary = "; ".join(c.message for c in checks if c.verdict != Verdict.SKIPPED)
        reason = (
            f"phase {phase.name} ({phase.weight}%): {brief_duration(elapsed)} of "
            f"{brief_duration(phase.duration)}; {summary}"
        )
        return _hold(status, reason, checks)
    verdict = overall(checks)
    if verdict == Verdict.FAIL:
        failed = first_failure(checks)
        assert failed is not None
        return _rollback(
            ctx, status, f"rolled back in phase {phase.name}: {failed.message}", failed.name, checks=checks
        )
    if verdict != Verdict.PASS:
        unknown = "; ".join(c.message for c in checks if c.verdict in (Verdict.INCONCLUSIVE, Verdict.ERROR))
        reason = f"phase {phase.name} has run {brief_duration(elapsed)} but is inconclusive: {unknown}; holding"
        return _hold(status, reason, checks)
    if last:
        return _promote_when_ready(
            ctx, status, f"every phase passed, last {phase.name} after {brief_duration(elapsed)}"
        )
    return _enter_step(
        ctx, status, index + 1, Action.ADVANCE, f"phase {phase.name} passed after {brief_duration(elapsed)}"
    )


def _degraded(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    if ctx.revision == status.stable_revision:
        status = status.evolve(phase=RolloutPhase.HEALTHY, canary_revision=None, step_name=None)
        reason = f"spec is back at stable revision {ctx.revision}; no longer degraded"
        return Decision(Action.CLEAR, status, reason, (Event("Normal", "Recovered", reason),))
    if ctx.revision != status.canary_revision:
        return _start(ctx, status, f"new revision {ctx.revision} (image {ctx.spec.image})")
    if "retry" in ctx.pending:
        return _start(ctx, status, f"retry of revision {ctx.revision} requested")
    return _hold(status, status.message)


def _baking(ctx: _Context, status: BacktestServiceStatus) -> Decision:
    """After promotion: the previous revision stays ready so that a late failure rolls back at once."""
    pods = pod_checks(ctx.spec, ctx.obs.stable_unhealthy_pods, "promoted")
    checks = bake_checks(ctx.spec, ctx.obs) if ctx.obs.error is None else pods
    tripped = first_failure(checks)
    if tripped is not None or "abort" in ctx.pending:
        why = f"rolled back after promotion: {tripped.message}" if tripped else "aborted by request during bake"
        outcome = Outcome.ROLLED_BACK if tripped else Outcome.ABORTED
        entry = HistoryEntry(
            revision=status.stable_revision or "",
            image=ctx.spec.image,
            outcome=outcome,
            phase="bake",
            check=tripped.name if tripped else "abort",
            reason=why,
            started_at=status.rollout_started_at or ctx.now,
            finished_at=ctx.now,
        )
        status = status.evolve(
            phase=RolloutPhase.DEGRADED,
            canary_revision=status.stable_revision,
            stable_revision=status.previous_revision,
            stable_pod=status.previous_pod,
            previous_revision=None,
            previous_pod=None,
            bake_until=None,
            canary_weight=0,
            step_name="bake",
            history=_with_history(status, entry),
        )
        event = Event("Warning", "RolledBack" if tripped else "Aborted", why)
        return Decision(Action.ROLLBACK, status, why, (event,), entry.check, tuple(checks))
    if ctx.revision != status.stable_revision:
        ended = status.evolve(previous_revision=None, previous_pod=None, bake_until=None)
        if ctx.revision == status.previous_revision:
            reason = f"spec is back at previous revision {ctx.revision}; it serves again"
            ended = ended.evolve(
                phase=RolloutPhase.HEALTHY,
                stable_revision=status.previous_revision,
                stable_pod=status.previous_pod,
            )
            return Decision(Action.REVERT, ended, reason, (Event("Normal", "Reverted", reason),))
        return _start(ctx, ended, f"new revision {ctx.revision} during the bake window of {status.stable_revision}")
    if ctx.obs.error is not None:
        return _hold(
            status.evolve(analysis_errors=status.analysis_errors + 1),
            f"baking revision {status.stable_revision}; analysis failed: {ctx.obs.error}",
            [analysis_error_check(ctx.obs), *pods],
        )
    status = status.evolve(analysis_errors=0)
    if status.bake_until is not None and ctx.now >= status.bake_until:
        reason = f"bake window over; revision {status.stable_revision} is stable, previous revision released"
        status = status.evolve(phase=RolloutPhase.HEALTHY, previous_revision=None, previous_pod=None, bake_until=None)
        return Decision(Action.COMPLETE, status, reason, (Event("Normal", "BakeComplete", reason),))
    return _hold(status, f"baking revision {status.stable_revision} until {status.bake_until}", checks)
