"""The desired state of a BacktestService, as platform engineers write it.

These models are the single source of truth for the CRD schema (see ``crd.py``): field docstrings become
schema descriptions, ``Field`` bounds become OpenAPI bounds and the ``x-kubernetes-validations`` below
become CEL rules, so the API server refuses bad objects with the same rules the operator assumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from backtest_operator.api.base import ApiModel
from backtest_operator.api.durations import Duration

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
PhaseName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=63)]
KubeObject = dict[str, Any]
"""A Kubernetes object the API server already knows how to validate (resources, affinity, ...)."""


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1)
    """Name of a Secret in the BacktestService's namespace."""
    key: str = Field(min_length=1)
    """Key within the Secret."""


class FaultInjection(ApiModel):
    """Deliberate faults for rollout rehearsals; off unless set."""

    error_rate: Rate = 0.0
    """Fraction of API requests the engine answers with HTTP 500."""
    added_latency: Duration = timedelta(0)
    """Latency added to every API request."""
    result_bias: float = Field(default=0.0, ge=-0.5, le=0.5)
    """Return-based metrics (total return, CAGR, trade returns, ...) are reported times (1 + this) while
    every answer stays a normal, fast 200: a silently wrong release, for rehearsing the shadow comparison."""


class EngineSettings(ApiModel):
    """Settings handed to the engine pods as environment variables."""

    workers: int = Field(default=2, ge=1, le=64)
    """Worker processes for backtests and optimizations per pod."""
    cache_size: int = Field(default=1000, ge=0)
    """Results kept in the in-memory cache of each pod."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the engine."""
    database_url_secret: SecretKeyRef | None = None
    """Secret key holding a SQLAlchemy URL of an external PostgreSQL; when omitted (and storage is shared)
    the operator runs a PostgreSQL StatefulSet with a PersistentVolumeClaim for this BacktestService."""
    storage: Literal["shared", "local"] = "shared"
    """Where results, datasets and jobs live. `shared` (default): one PostgreSQL for every replica and both
    revisions, surviving rollouts. `local`: SQLite on an emptyDir per pod, lost with the pod and invisible
    to the other replicas; development only."""
    api_keys_secret: SecretKeyRef | None = None
    """Secret key holding the engine's API keys (comma-separated `[tenant:]key`, key plain or
    sha256:<hex>). When omitted the operator generates a key (tenant `default`) and an admin key into the
    Secret named in status.apiKeysSecret."""
    auth: Literal["enabled", "disabled"] = "enabled"
    """`disabled` lets every request in without a key; development only."""
    termination_grace_period: Duration = timedelta(seconds=60)
    """How long a stopping engine pod may take: it stops taking work, finishes its requests and running
    optimizations, and hands the rest back to the queue within this time (ENGINE_SHUTDOWN_SECONDS is set
    5 s shorter)."""
    fault_injection: FaultInjection = Field(default_factory=FaultInjection)
    """Faults to inject, for rehearsing rollbacks."""


class ManagedDatabase(ApiModel):
    """The PostgreSQL the operator runs when storage is shared and no databaseUrlSecret is given."""

    image: str = Field(default="postgres:16", min_length=1)
    """PostgreSQL image (the official image's conventions: POSTGRES_USER, POSTGRES_DB, PGDATA, uid 999)."""
    storage_size: str = Field(default="5Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$")
    """Size of the PersistentVolumeClaim."""
    storage_class_name: str | None = None
    """StorageClass of the claim; the cluster's default when omitted."""
    resources: KubeObject = Field(default_factory=dict)
    """Container resources; sensible requests and limits apply when empty."""


class PrometheusPeer(ApiModel):
    """Where the Prometheus that scrapes the engine runs (NetworkPolicy peer)."""

    namespace_selector: dict[str, str] = Field(default_factory=dict)
    """Labels of the Prometheus namespace; every namespace when empty."""
    pod_selector: dict[str, str] = Field(default_factory=lambda: {"app.kubernetes.io/name": "prometheus"})
    """Labels of the Prometheus pods."""


class NetworkPolicySettings(ApiModel):
    """NetworkPolicies the operator creates for the pods it runs."""

    enabled: bool = True
    """Create them: engine pods accept traffic only from their router and Prometheus, the database only from
    the engine pods. Only effective where the network plugin enforces NetworkPolicies."""
    prometheus: PrometheusPeer = Field(default_factory=PrometheusPeer)
    """The scraping Prometheus, allowed to reach the engine pods."""
    extra_ingress_from: list[KubeObject] = Field(default_factory=list)
    """More NetworkPolicyPeers allowed to reach the engine pods (e.g. the Gateway's pods with the
    gatewayAPI provider, or clients with the replicas provider)."""


class PodSettings(ApiModel):
    """Everything that defines the engine pods; a change to any of it starts a rollout."""

    image: str = Field(min_length=1)
    """Container image of the backtest engine. A change starts a rollout."""
    engine: EngineSettings = Field(default_factory=EngineSettings)
    """Engine settings handed to the pods."""
    env: list[KubeObject] = Field(default_factory=list)
    """Extra environment variables (Kubernetes EnvVar objects)."""
    resources: KubeObject = Field(default_factory=dict)
    """Container resources (Kubernetes ResourceRequirements); sensible requests apply when empty."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the engine pods must be scheduled on."""
    tolerations: list[KubeObject] = Field(default_factory=list)
    """Kubernetes Toleration objects for the engine pods."""
    affinity: KubeObject = Field(default_factory=dict)
    """Kubernetes Affinity for the engine pods."""
    image_pull_secrets: list[KubeObject] = Field(default_factory=list)
    """References to Secrets for pulling the image (LocalObjectReference objects)."""
    service_account_name: str | None = None
    """ServiceAccount the engine pods run as."""
    pod_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on the engine pods."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations on the engine pods."""


def revision_of(pod: PodSettings) -> str:
    """A short, stable hash of the pod-defining settings: equal settings always give the same revision.

    Defaults are left out of the hash, so a field added with a default in a later release (or a default
    the API server filled in) never changes an existing object's revision and never starts a rollout.
    """
    settings = pod.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


class PrometheusSettings(ApiModel):
    url: str = Field(default="http://prometheus.monitoring:9090", pattern=r"^https?://.+")
    """Base URL of the Prometheus server that scrapes the router."""
    timeout: Duration = timedelta(seconds=5)
    """Timeout of each query; a timeout counts as an analysis error."""


class ComparisonSettings(ApiModel):
    """Statistical comparison of canary against stable, on top of the absolute thresholds."""

    enabled: bool = True
    """Fail a phase when the evidence shows the canary is worse than stable (sequential tests sharing
    analysis.noiseBudget)."""
    error_rate_margin: Rate = 0.005
    """Canary error rate may exceed stable's (its upper 97.5% bound) by this much before it counts as worse."""
    slow_rate_margin: Rate = 0.005
    """Canary share of requests over the latency objective may exceed stable's (its upper 97.5% bound) by
    this much before it counts as worse."""
    latency_margin: Duration = timedelta(milliseconds=100)
    """Canary p95 latency may exceed stable's by this much before it counts as worse."""


class QueryOverrides(ApiModel):
    """PromQL templates replacing the defaults of docs/metrics-contract.md; {selector} and {window} are filled in."""

    requests: str | None = None
    errors: str | None = None
    fallbacks: str | None = None
    fast: str | None = None
    """Requests answered within the latency objective ({objective} is filled in)."""
    latency_p95: str | None = None
    """p95 latency in seconds of one track ({track} is filled in)."""
    latency_buckets: str | None = None
    """Increase of each latency histogram bucket of one track over {window}, one series per le label."""


class AnalysisSettings(ApiModel):
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    """Where the metrics live."""
    interval: Duration = timedelta(seconds=30)
    """How often the rollout is evaluated."""
    min_requests: int = Field(default=50, ge=1)
    """Fewer canary requests in a phase makes its verdict inconclusive, never a pass."""
    noise_budget: float = Field(default=0.1, ge=1e-6, le=0.5)
    """Acceptable probability that a canary sitting exactly at its limits is rolled back by chance, over a
    whole rollout (every phase and the bake window, however many evaluations). Shared out over the
    sequential checks; lower means fewer false rollbacks and slower detection. A healthy canary, well
    inside its limits, is rolled back far less often (bench/results/decision-quality.md)."""
    latency_objective: Duration = timedelta(seconds=2)
    """A canary request slower than this is not a success."""
    comparison: ComparisonSettings = Field(default_factory=ComparisonSettings)
    """Canary against stable comparison."""
    queries: QueryOverrides = Field(default_factory=QueryOverrides)
    """Optional PromQL overrides."""
    selector: dict[str, str] = Field(default_factory=dict)
    """Labels selecting this service's router series; default namespace=<namespace>, service=<name>."""


class Phase(ApiModel):
    name: PhaseName
    """Name shown in status and events (canary, testing, ...)."""
    weight: int = Field(ge=1, le=100)
    """Percentage of traffic sent to the new version during this phase."""
    duration: Duration
    """Minimum time in this phase before it can advance."""
    min_success_rate: Rate = 0.95
    """Lowest acceptable share of canary requests answered without error within the latency objective."""
    max_error_rate: Rate = 0.02
    """The phase fails when the canary's error rate reaches this value."""
    max_result_mismatch_rate: Rate = 0.0
    """Share of shadow comparisons (traffic.shadow) whose canary result differs from stable's that the phase
    tolerates. 0 (default): none, judged on evidence like every check, so one odd answer from a flaky
    comparison does not roll back: the phase fails once mismatches are clearly more frequent than one in a
    thousand comparisons (docs/rollout-policy.md, "Result mismatches"). Without shadowing, not judged."""


def _spec_rule_violations(spec: BacktestServiceSpec) -> list[str]:
    """SPEC_RULES, evaluated in Python for manifests read outside the API server."""
    objective = spec.analysis.latency_objective
    broken: list[str] = []
    timeout = spec.traffic.canary_timeout
    if timeout is not None and timeout <= objective:
        broken.append(SPEC_RULES[0]["message"])
    if spec.traffic.stable_timeout <= objective:
        broken.append(SPEC_RULES[1]["message"])
    milliseconds = round(objective.total_seconds() * 1000)
    if spec.traffic.provider != "router" and milliseconds not in ENGINE_LATENCY_BUCKETS_MS:
        broken.append(SPEC_RULES[2]["message"])
    if spec.traffic.provider != "router" and spec.traffic.shadow.fraction > 0:
        broken.append(SPEC_RULES[3]["message"])
    return broken


def default_phases() -> list[Phase]:
    """The product's default rollout: canary 1%, testing 10%, validation 50%, full 100%."""
    return [
        Phase(name="canary", weight=1, duration=timedelta(minutes=10), min_success_rate=0.95, max_error_rate=0.02),
        Phase(name="testing", weight=10, duration=timedelta(minutes=30), min_success_rate=0.95, max_error_rate=0.03),
        Phase(name="validation", weight=50, duration=timedelta(hours=1), min_success_rate=0.97, max_error_rate=0.02),
        Phase(name="full", weight=100, duration=timedelta(minutes=15), min_success_rate=0.98, max_error_rate=0.01),
    ]


class RollbackSettings(ApiModel):
    """Triggers that roll back at once, in any phase."""

    max_error_rate: Rate = 0.10
    """Canary error rate above which the rollout rolls back at once, as soon as the evidence is clear."""
    max_fallback_rate: Rate = 0.25
    """Share of canary requests re-served by stable above which the rollout rolls back at once."""
    max_result_mismatch_rate: Rate = 0.05
    """Share of shadow comparisons with a canary result different from stable's above which the rollout
    rolls back at once, in any phase, as soon as the evidence is clear (with traffic.shadow only)."""
    max_latency_increase: Duration = timedelta(seconds=2)
    """Canary p95 minus stable p95 above which the rollout rolls back at once (judged by counting the
    canary requests slower than stable's p95 plus this)."""
    on_unhealthy: bool = True
    """Roll back when more than maxUnhealthyPods canary pods are unhealthy: crash-looping, unable to start
    from their image or configuration, or not ready for longer than readinessGrace."""
    max_analysis_errors: int = Field(default=3, ge=1)
    """Consecutive failed evaluations (Prometheus unreachable, bad query) before rolling back."""
    min_requests: int = Field(default=10, ge=1)
    """Fewest canary requests in a phase before any check may roll back (the sequential tests need no
    minimum; this is a floor against acting on a handful of requests)."""
    progress_deadline: Duration = timedelta(minutes=10)
    """Roll back when the canary pods are not ready this long after the rollout starts."""
    bake_window: Duration = timedelta(minutes=10)
    """After promotion the previous version stays ready this long; a trigger within it rolls back at once."""
    readiness_grace: Duration = timedelta(minutes=2)
    """A canary pod counts as unhealthy once its readiness has failed this long since its last Ready
    transition; terminating, evicted and preempted pods, and restarts from before the rollout, never count."""
    max_unhealthy_pods: int = Field(default=0, ge=0)
    """Unhealthy canary pods tolerated at once; the unhealthy trigger acts when more are unhealthy."""


class ShadowSettings(ApiModel):
    """Shadow comparison by the bundled router: copies of stable-served requests go to the canary in the
    background and the answers are compared (docs/router.md), which catches results that are wrong without
    failing (judged by the phases' maxResultMismatchRate and rollback.maxResultMismatchRate). Only with the
    router provider: the API server refuses a fraction above 0 with gatewayAPI or replicas, which have no
    router, and the ShadowComparison condition says why shadowing is off."""

    fraction: Rate = 0.0
    """Share of stable-served requests that are safe to repeat (reads and backtest runs, never uploads or job
    control) also sent to the canary and compared; 0 turns shadowing off."""
    max_in_flight: int = Field(default=16, ge=1, le=1000)
    """Shadow copies running at once per router pod; a sampled request beyond this is skipped, never queued."""


class TrafficSettings(ApiModel):
    provider: Literal["router", "gatewayAPI", "replicas"] = "router"
    """How weights are realised: the bundled router, Gateway API HTTPRoute weights, or replica ratio."""
    http_route: str | None = None
    """Name of the HTTPRoute to manage (gatewayAPI provider); defaults to the BacktestService's name."""
    router_replicas: int = Field(default=1, ge=1, le=20)
    """Replicas of the bundled router."""
    router_image: str | None = None
    """Image of the bundled router; the operator's default router image when omitted."""
    parent_refs: list[KubeObject] = Field(default_factory=list)
    """Gateway API parentRefs of the HTTPRoute the operator manages (gatewayAPI provider)."""
    canary_timeout: Duration | None = None
    """The router abandons a canary attempt after this long and re-serves it from stable; must exceed
    analysis.latencyObjective. Default: 2.5 times the latency objective, at most stableTimeout."""
    stable_timeout: Duration = timedelta(seconds=60)
    """The router gives up on stable after this long and answers 504; must exceed analysis.latencyObjective."""
    dynamic_stable_scale: bool = False
    """Scale stable down as traffic leaves it (and back up on rollback), like Argo Rollouts'
    dynamicStableScale: saves pods during a rollout, at the cost of a rollback landing on fewer ready
    stable pods. Off: stable keeps every replica until the new revision is promoted."""
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    """Shadow comparison of canary results against stable (router provider)."""


ENGINE_LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2000, 2500, 5000, 10000, 30000, 60000)
"""Bucket bounds of the engine's request histogram (backtest_engine.service.metrics.DURATION_BUCKETS), in
milliseconds: without the router, the latency objective must be one of them to count slow requests."""
CANARY_TIMEOUT_FACTOR = 2.5
"""Default router canary timeout as a multiple of the latency objective (2 s -> 5 s)."""

SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.traffic.canaryTimeout) || "
        "duration(self.traffic.canaryTimeout) > duration(self.analysis.latencyObjective)",
        "message": "traffic.canaryTimeout must exceed analysis.latencyObjective: an abandoned canary request "
        "must count as slow",
    },
    {
        "rule": "duration(self.traffic.stableTimeout) > duration(self.analysis.latencyObjective)",
        "message": "traffic.stableTimeout must exceed analysis.latencyObjective",
    },
    {
        "rule": "self.traffic.provider == 'router' || "
        f"{list(ENGINE_LATENCY_BUCKETS_MS)}.exists(b, duration(self.analysis.latencyObjective).getMilliseconds() == b)",
        "message": "without the router, analysis.latencyObjective must be a bucket bound of the engine's latency "
        "histogram (5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms, 1s, 2s, 2.5s, 5s, 10s, 30s, 60s)",
    },
    {
        "rule": "self.traffic.provider == 'router' || !has(self.traffic.shadow) || "
        "!has(self.traffic.shadow.fraction) || self.traffic.shadow.fraction == 0.0",
        "message": "traffic.shadow.fraction needs the router provider: the gatewayAPI and replicas providers have "
        "no router to send shadow copies and compare the answers; set it to 0 or use provider router",
    },
]

PHASE_RULES: list[dict[str, str]] = [
    {
        "rule": "self.map(p, p.weight).isSorted() && self.all(p, self.exists_one(q, q.weight == p.weight))",
        "message": "phase weights must be strictly increasing",
    },
    {"rule": "self[size(self) - 1].weight == 100", "message": "the last phase must have weight 100"},
    {
        "rule": "self.all(p, self.exists_one(q, q.name == p.name))",
        "message": "phase names must be unique",
    },
]


class BacktestServiceSpec(PodSettings):
    """Desired state: the engine to run, how to shift traffic to a new version, and how to judge it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})  # type: ignore[dict-item]

    replicas: int = Field(default=2, ge=0, le=1000)
    """Engine pods serving the service (the /scale subresource: `kubectl scale bts`, an HPA). During a
    rollout the operator splits them between stable and canary by weight. Changing only this does not
    start a rollout."""
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    """Traffic shifting."""
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    """How each phase is judged."""
    phases: list[Phase] = Field(
        default_factory=default_phases,
        min_length=1,
        max_length=10,
        json_schema_extra={"x-kubernetes-validations": PHASE_RULES},  # type: ignore[dict-item]
    )
    """Phases the new version walks through, in order; the last one must send 100% of traffic."""
    rollback: RollbackSettings = Field(default_factory=RollbackSettings)
    """Immediate rollback triggers."""
    paused: bool = False
    """Hold the rollout where it is; rollback triggers still act."""
    database: ManagedDatabase = Field(default_factory=ManagedDatabase)
    """The managed PostgreSQL (used when engine.storage is shared and engine.databaseUrlSecret is omitted)."""
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    """Network isolation of the engine and database pods."""

    @model_validator(mode="after")
    def _phases_are_consistent(self) -> BacktestServiceSpec:
        """The same rules the CRD enforces with CEL, for manifests read outside the API server."""
        weights = [p.weight for p in self.phases]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError("phases: phase weights must be strictly increasing")
        if weights[-1] != 100:
            raise ValueError("phases: the last phase must have weight 100")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("phases: phase names must be unique")
        broken = _spec_rule_violations(self)
        if broken:
            raise ValueError(broken[0])
        return self

    def canary_timeout(self) -> timedelta:
        """The router's canary timeout: spec'd, or derived from the latency objective."""
        if self.traffic.canary_timeout is not None:
            return self.traffic.canary_timeout
        return min(self.analysis.latency_objective * CANARY_TIMEOUT_FACTOR, self.traffic.stable_timeout)

    def pod(self) -> PodSettings:
        """The pod-defining part of the spec: what a revision is made of."""
        fields = set(PodSettings.model_fields)
        return PodSettings.model_validate({name: getattr(self, name) for name in fields})

    def revision(self) -> str:
        return revision_of(self.pod())
