"""Kubernetes-convention conditions (Ready, Progressing, Degraded) derived from the rollout state."""

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


def derive_conditions(
    status: BacktestServiceStatus, stable_ready: bool, generation: int, now: datetime
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
    else:
        conditions = set_condition(conditions, "Degraded", "False", "AsExpected", "", generation, now)
    return conditions
