"""The observed state of a BacktestService: Kubernetes conditions plus what an SRE wants at a glance.

All rollout state lives here (never in operator memory), so a restarted operator resumes exactly where
the previous one stopped: phase, step, when the step started and how many evaluations failed in a row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from backtest_operator.api.base import ApiModel
from backtest_operator.api.spec import PodSettings

HISTORY_LIMIT = 10


class RolloutPhase(StrEnum):
    """Where the object stands. Progressing carries a step (canary, testing, ...)."""

    INITIALIZING = "Initializing"
    """The first revision is being deployed as stable; there is nothing to compare against yet."""
    HEALTHY = "Healthy"
    """Stable serves all traffic and no rollout is under way."""
    PROGRESSING = "Progressing"
    """A new revision is walking the phases."""
    PAUSED = "Paused"
    """A rollout is held by spec.paused; the weight stays, triggers still act."""
    BAKING = "Baking"
    """Promoted; the previous revision stays ready until the bake window ends."""
    DEGRADED = "Degraded"
    """The last rollout was rolled back; stable serves all traffic until the spec changes or a retry."""


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"
    SKIPPED = "skipped"


class Condition(ApiModel):
    """A Kubernetes API convention condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    """CamelCase reason, machine-readable."""
    message: str = ""
    """Human-readable explanation."""
    observed_generation: int = 0
    last_transition_time: datetime


class CheckResult(ApiModel):
    """One check of one evaluation: its number, the threshold it was held to, and the verdict."""

    name: str
    verdict: Verdict
    value: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    """p-value of the statistical comparison against stable, for comparison checks."""
    message: str = ""


class TrackNumbers(ApiModel):
    """Counts of one track over a window (fractions are derived, never stored)."""

    requests: float = 0.0
    errors: float = 0.0
    fallbacks: float = 0.0
    slow: float = 0.0
    latency_p95_seconds: float | None = None


SHADOW_TOP_FIELDS = 5
"""Mismatching result fields kept in status (the most frequent first)."""


class FieldCount(ApiModel):
    """A result field and how many comparisons it mismatched in."""

    field: str
    count: float


class ShadowNumbers(ApiModel):
    """What the router's shadow comparisons found over the phase so far (docs/metrics-contract.md)."""

    comparisons: float = 0.0
    """Judged comparisons: match plus mismatch."""
    mismatches: float = 0.0
    errors: float = 0.0
    """Shadow copies without a comparable canary answer (timeout, transport failure, 5xx, 429)."""
    skipped: float = 0.0
    """Sampled requests not copied because the in-flight limit was full."""
    top_fields: list[FieldCount] = Field(default_factory=list, max_length=SHADOW_TOP_FIELDS)
    """The most frequently mismatching result fields, at most five."""


class AnalysisRecord(ApiModel):
    """The latest evaluation, with the numbers behind it."""

    time: datetime
    phase: str | None = None
    verdict: Verdict
    window_seconds: float = 0.0
    """Length of the window the phase checks covered."""
    canary: TrackNumbers = Field(default_factory=TrackNumbers)
    stable: TrackNumbers = Field(default_factory=TrackNumbers)
    checks: list[CheckResult] = Field(default_factory=list)
    shadow: ShadowNumbers | None = None
    """Shadow comparisons of canary results against stable's over the phase, while shadowing is on."""


class Outcome(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"
    """A newer revision replaced this one mid-rollout."""
    REVERTED = "reverted"
    """The spec went back to the stable revision mid-rollout."""


class HistoryEntry(ApiModel):
    """One finished rollout."""

    revision: str
    image: str
    outcome: Outcome
    phase: str | None = None
    """Phase in which the rollout ended (for rollbacks: the failing phase)."""
    check: str | None = None
    """The check that failed, for rollbacks."""
    reason: str = ""
    started_at: datetime
    finished_at: datetime


class HandledControls(ApiModel):
    """Tokens of the control annotations already acted upon, so each request is handled exactly once."""

    promote: str | None = None
    promote_full: str | None = None
    abort: str | None = None
    retry: str | None = None


class BacktestServiceStatus(ApiModel):
    observed_generation: int = 0
    """The spec generation the status reflects."""
    phase: RolloutPhase = RolloutPhase.INITIALIZING
    step: int | None = None
    """Index into spec.phases of the current phase, while progressing or paused."""
    step_name: str | None = None
    """Name of the current phase."""
    canary_weight: int = 0
    """Percentage of traffic the operator asks the data plane to send to the new revision."""
    effective_weight: int | None = None
    """Percentage of traffic the data plane actually sends to the new revision, as read back (the router's
    weight, the HTTPRoute the gateway accepted, or the ready replica ratio); unset when it cannot be read."""
    replicas: int = 0
    """Engine pods of every live revision (the /scale subresource's status.replicas, read by an HPA)."""
    selector: str = ""
    """Label selector of the engine pods (the /scale subresource's status.selector)."""
    stable_revision: str | None = None
    canary_revision: str | None = None
    previous_revision: str | None = None
    """The revision replaced by the last promotion, kept ready during the bake window."""
    stable_pod: PodSettings | None = None
    """Pod settings of the stable revision, so stable can be rebuilt while spec holds a newer one."""
    previous_pod: PodSettings | None = None
    """Pod settings of the previous revision during the bake window."""
    rollout_started_at: datetime | None = None
    phase_started_at: datetime | None = None
    """When the current phase's clock started: once its weight was applied and confirmed by the data plane
    (shifted forward by time spent paused). Unset while the phase waits for capacity or confirmation."""
    waiting_since: datetime | None = None
    """When the current phase began waiting for canary capacity or weight confirmation; a wait longer than
    rollback.progressDeadline rolls back."""
    promotion_pending: bool = False
    """A promotion waits for every replica of the new revision to be ready before the switch."""
    paused_at: datetime | None = None
    bake_until: datetime | None = None
    analysis_errors: int = 0
    """Consecutive evaluations that could not be made."""
    last_analysis: AnalysisRecord | None = None
    message: str = ""
    """The reason behind the latest decision, in words."""
    history: list[HistoryEntry] = Field(default_factory=list, max_length=HISTORY_LIMIT)
    """Most recent rollouts, newest first."""
    conditions: list[Condition] = Field(default_factory=list)
    handled_controls: HandledControls = Field(default_factory=HandledControls)
    api_keys_secret: str | None = None
    """The Secret holding the engine's API keys: spec.engine.apiKeysSecret, or the one the operator generated
    (keys `api-keys` and `admin-keys`)."""
    database: str | None = None
    """Where results live: the managed PostgreSQL, the external database's Secret, or local SQLite."""

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def evolve(self, **changes: Any) -> BacktestServiceStatus:
        """A copy with changes, validated (model_copy alone would skip validation)."""
        data = self.model_dump()
        data.update(changes)
        return BacktestServiceStatus.model_validate(data)
