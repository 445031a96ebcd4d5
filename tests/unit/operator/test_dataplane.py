"""Pod health that means the release, weights read back from each provider, and what they report (issue 13).

Pods are built with the kubernetes client's own models (what the API server's answers deserialize into);
the same states are produced for real on the local API server in tests/e2e/test_mechanics.py.
"""

from __future__ import annotations

from datetime import timedelta

from kubernetes import client as k8s

from backtest_operator.api import BacktestServiceStatus, RolloutPhase
from backtest_operator.capacity import DataPlane
from backtest_operator.conditions import derive_conditions
from backtest_operator.kube import RevisionHealth
from backtest_operator.podhealth import PodState, classify
from backtest_operator.queries import build_queries
from backtest_operator.readback import gateway_plane, replicas_plane, router_plane

from .rollouts import T0, make_spec

GRACE = timedelta(minutes=2)
ROLLOUT = T0 - timedelta(minutes=10)


def pod(
    *, ready: bool = True, since: timedelta = timedelta(minutes=5), phase: str = "Running", reason: str | None = None,
    deleting: bool = False, restarts: int = 0, last_crash: timedelta | None = None, waiting: str | None = None,
    containers_ready: bool | None = None, disruption: bool = False,
) -> k8s.V1Pod:  # fmt: skip
    conditions = [k8s.V1PodCondition(type="Ready", status="True" if ready else "False",
                                     last_transition_time=T0 - since)]  # fmt: skip
    if disruption:
        conditions.append(k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="EvictionByEvictionAPI"))
    terminated = None
    if last_crash is not None:
        terminated = k8s.V1ContainerStateTerminated(exit_code=1, finished_at=T0 - last_crash)
    state = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=waiting)) if waiting else None
    container = k8s.V1ContainerStatus(
        name="engine", image="engine:2", image_id="", ready=ready if containers_ready is None else containers_ready,
        restart_count=restarts, state=state, last_state=k8s.V1ContainerState(terminated=terminated),
    )  # fmt: skip
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p", deletion_timestamp=T0 if deleting else None),
        status=k8s.V1PodStatus(phase=phase, reason=reason, conditions=conditions, container_statuses=[container],
                               start_time=T0 - timedelta(hours=6)),
    )  # fmt: skip


def state(p: k8s.V1Pod) -> PodState:
    return classify(p, T0, ROLLOUT, GRACE).state


def test_restart_from_before_the_rollout_is_not_a_failure_when_the_pod_is_ready_again():
    assert state(pod(restarts=1, last_crash=timedelta(hours=5))) == PodState.READY


def test_terminating_evicted_and_preempted_pods_are_disruptions_not_failures():
    assert state(pod(ready=False, deleting=True, since=timedelta(minutes=30))) == PodState.DISRUPTED
    assert state(pod(ready=False, phase="Failed", reason="Evicted", since=timedelta(hours=1))) == PodState.DISRUPTED
    assert state(pod(ready=False, disruption=True, since=timedelta(minutes=30))) == PodState.DISRUPTED


def test_pods_of_an_unreachable_node_are_disruptions_when_only_the_node_controller_marked_them():
    assert state(pod(ready=False, containers_ready=True, since=timedelta(minutes=4))) == PodState.DISRUPTED


def test_readiness_counts_against_the_release_only_past_the_grace_period():
    assert state(pod(ready=False, containers_ready=False, since=timedelta(seconds=90))) == PodState.STARTING
    verdict = classify(pod(ready=False, containers_ready=False, since=timedelta(minutes=3)), T0, ROLLOUT, GRACE)
    assert verdict.state == PodState.UNHEALTHY and "not ready for 180s" in verdict.reason


def test_crash_loop_since_the_rollout_is_unhealthy_at_once():
    crashing = pod(ready=False, containers_ready=False, since=timedelta(seconds=5), restarts=4,
                   last_crash=timedelta(seconds=5), waiting="CrashLoopBackOff")  # fmt: skip
    assert state(crashing) == PodState.UNHEALTHY
    assert state(pod(ready=False, containers_ready=False, since=timedelta(seconds=5),
                     waiting="ImagePullBackOff")) == PodState.UNHEALTHY  # fmt: skip


def test_router_weight_is_confirmed_only_when_every_router_reports_it():
    base = DataPlane(True, 2, 10)
    assert router_plane(base, 10, [10.0, 10.0]).confirmed_weight == 10
    split = router_plane(base, 10, [10.0, 1.0])
    assert split.confirmed_weight is None and split.effective_weight is None
    assert "2 router pods report 1%, 10%" in split.note
    missing = router_plane(base, 10, [])
    assert missing.confirmed_weight is None and "no router reports" in missing.note


def _route(weight: int, generation: int, accepted: int | None) -> dict:
    status = {"parents": []}
    if accepted is not None:
        condition = {"type": "Accepted", "status": "True", "observedGeneration": accepted}
        status = {"parents": [{"parentRef": {"name": "gw"}, "conditions": [condition]}]}
    refs = [{"name": "q-stable", "weight": 100 - weight}, {"name": "q-canary", "weight": weight}]
    return {"metadata": {"generation": generation}, "spec": {"rules": [{"backendRefs": refs}]}, "status": status}


def test_gateway_weight_is_confirmed_when_the_gateway_accepted_the_generation_that_carries_it():
    base = DataPlane(True, 2, 10)
    assert gateway_plane(base, 10, 1, _route(10, 3, 3)).confirmed_weight == 10
    stale = gateway_plane(base, 10, 1, _route(10, 3, 2))
    assert stale.confirmed_weight is None and stale.effective_weight == 1
    assert "0 of 1 Gateways accepted generation 3" in stale.note
    assert "no Gateway reports" in gateway_plane(base, 10, 1, _route(10, 3, None)).note


def test_replicas_provider_reports_its_real_share_when_the_weight_cannot_be_expressed():
    spec = make_spec("engine:2", replicas=2, traffic={"provider": "replicas"})
    status = BacktestServiceStatus(phase=RolloutPhase.PROGRESSING, stable_revision="a", canary_revision=spec.revision(),
                                   step=0, step_name="canary", canary_weight=1)  # fmt: skip
    health = {"a": RevisionHealth(1, 1, 0, 1), spec.revision(): RevisionHealth(1, 1, 0, 1)}
    plane = replicas_plane(spec, status, health)
    # The review's defect: status said 1% while one of two pods (50%) served the canary.
    assert (plane.effective_weight, plane.confirmed_weight) == (50, 1)
    assert "1 canary and 1 stable ready pods, which is 50%" in plane.note
    reported = status.evolve(effective_weight=50)
    condition = next(c for c in derive_conditions(reported, True, 1, T0, plane.note) if c.type == "WeightApplied")
    assert (condition.status, condition.reason) == ("False", "Disagrees")


def test_kstatus_conditions_follow_the_rollout_when_it_runs_fails_and_finishes():
    def conditions(phase: RolloutPhase) -> dict[str, str]:
        found = derive_conditions(BacktestServiceStatus(phase=phase, stable_revision="a"), True, 1, T0)
        return {c.type: c.status for c in found}

    assert conditions(RolloutPhase.PROGRESSING).items() >= {"Reconciling": "True", "Stalled": "False"}.items()
    assert conditions(RolloutPhase.BAKING)["Reconciling"] == "True"
    assert conditions(RolloutPhase.DEGRADED).items() >= {"Reconciling": "False", "Stalled": "True"}.items()
    assert conditions(RolloutPhase.HEALTHY).items() >= {"Reconciling": "False", "Stalled": "False"}.items()


def test_engine_queries_are_keyed_by_revision_when_there_is_no_router():
    spec = make_spec(traffic={"provider": "gatewayAPI"})
    queries = build_queries(spec.analysis, {"namespace": "prod"}, "canary", timedelta(seconds=30), revision="a1b2")
    assert 'backtest_engine_http_requests_total{namespace="prod",version="a1b2",route=~"/api/.*"' in queries.requests
    assert 'code=~"5.."' in queries.errors
    assert "backtest_engine_http_request_duration_seconds_bucket" in queries.fast
    assert "backtest_router" not in " ".join(vars(queries).values())
