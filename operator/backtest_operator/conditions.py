"""Kubernetes-convention conditions derived from the rollout state.

Ready, Progressing and Degraded say what an SRE asks; Reconciling and Stalled are the "abnormal-true"
conditions of the kstatus conventions (sigs.k8s.io/cli-utils), which Flux and ``kubectl wait`` read:
Reconciling is True while a rollout (or its bake) runs, Stalled is True once a release was rolled back,
until a new spec or a retry. Without them kstatus falls back to Ready and calls an object Current in the
middle of a rollout and after a rollback. WeightApplied says whether the data plane applies the weight
the operator asked for (docs/operations.md, "GitOps health").
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from backtest_operator.api import BacktestServiceStatus, Condition, Outcome, RolloutPhase

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Replace (or add) one condition; lastTransitionTime moves only when the status flips."""
    previous = next((c for c in conditions if c.type == kind), None)
    moved = previous is None or previous.status != status
    updated = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now if moved or previous is None else previous.last_transition_time,
    )
    return [updated if c.type == kind else c for c in conditions] if previous else [*conditions, updated]


_PROGRESSING: dict[RolloutPhase, tuple[ConditionStatus, str]] = {
    RolloutPhase.INITIALIZING: ("True", "Initializing"),
    RolloutPhase.PROGRESSING: ("True", "RolloutInProgress"),
    RolloutPhase.PAUSED: ("True", "RolloutPaused"),
    RolloutPhase.BAKING: ("True", "Baking"),
    RolloutPhase.HEALTHY: ("False", "RolloutComplete"),
    RolloutPhase.DEGRADED: ("False", "RolledBack"),
}


_RECONCILING: dict[RolloutPhase, str] = {
    RolloutPhase.INITIALIZING: "Initializing",
    RolloutPhase.PROGRESSING: "RolloutInProgress",
    RolloutPhase.PAUSED: "RolloutPaused",
    RolloutPhase.BAKING: "Baking",
}


def derive_conditions(
    status: BacktestServiceStatus, stable_ready: bool, generation: int, now: datetime, weight_note: str = ""
) -> list[Condition]:
    """Conditions as a function of the rollout state; unchanged inputs give unchanged conditions."""
    conditions = list(status.conditions)
    initializing = status.phase == RolloutPhase.INITIALIZING
    ready_reason = "StableAvailable" if stable_ready else ("Initializing" if initializing else "StableUnavailable")
    ready_message = (
        f"stable revision {status.stable_revision} is serving"
        if stable_ready
        else f"stable revision {status.stable_revision} has no ready pods yet"
    )
    conditions = set_condition(
        conditions, "Ready", "True" if stable_ready else "False", ready_reason, ready_message, generation, now
    )
    progressing, reason = _PROGRESSING[status.phase]
    conditions = set_condition(conditions, "Progressing", progressing, reason, status.message, generation, now)
    if status.phase == RolloutPhase.DEGRADED:
        last = status.history[0] if status.history else None
        degraded_reason = "Aborted" if last is not None and last.outcome == Outcome.ABORTED else "RolledBack"
        conditions = set_condition(conditions, "Degraded", "True", degraded_reason, status.message, generation, now)
        conditions = set_condition(conditions, "Stalled", "True", degraded_reason, status.message, generation, now)
    else:
        conditions = set_condition(conditions, "Degraded", "False", "AsExpected", "", generation, now)
        conditions = set_condition(conditions, "Stalled", "False", "AsExpected", "", generation, now)
    reconciling = _RECONCILING.get(status.phase)
    if reconciling is not None:
        conditions = set_condition(conditions, "Reconciling", "True", reconciling, status.message, generation, now)
    else:
        conditions = set_condition(conditions, "Reconciling", "False", reason, "", generation, now)
    return _weight_condition(conditions, status, generation, now, weight_note)


def _weight_condition(
    conditions: list[Condition], status: BacktestServiceStatus, generation: int, now: datetime, note: str
) -> list[Condition]:
    """WeightApplied: True when the data plane's weight (read back) is the one asked for."""
    asked, applied = status.canary_weight, status.effective_weight
    if applied is None and not note:
        # Nothing was read back (the simulator; the router while no rollout runs): no claim either way.
        return [c for c in conditions if c.type != "WeightApplied"]
    if applied == asked:
        return set_condition(
            conditions, "WeightApplied", "True", "DataPlaneAgrees", f"the data plane sends {applied}% to the canary",
            generation, now,
        )  # fmt: skip
    if applied is None:
        reason, message = "Unreadable", f"{asked}% asked; {note}"
    elif note:
        reason, message = "Disagrees", f"{asked}% asked, the data plane sends {applied}%: {note}"
    else:
        reason, message = "Pending", f"{asked}% asked, the data plane still sends {applied}%"
    return set_condition(conditions, "WeightApplied", "False", reason, message, generation, now)
