"""Capacity before traffic and confirmed weights: the policy against a measured data plane (issue 13).

Each test reproduces one defect of the review: traffic moving before the canary has the ready pods for it,
promotion switching stable to a half-started revision, and a phase clock started before its weight was
applied. The data plane is given as the reconciler measures it (``DataPlane``), with an explicit clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from backtest_operator.api import BacktestServiceStatus, RolloutPhase
from backtest_operator.capacity import DataPlane, canary_replicas, share_replicas, target_weight
from backtest_operator.controls import Controls
from backtest_operator.policy import Action, Decision, decide
from backtest_operator.reconcile import POLL_WHILE_WAITING, RESYNC, next_pass
from backtest_operator.workloads import replica_plan

from .rollouts import T0, make_spec, observe, track

PHASES = [
    {"name": "canary", "weight": 10, "duration": "1m"},
    {"name": "validation", "weight": 50, "duration": "1m"},
    {"name": "full", "weight": 100, "duration": "1m"},
]


@dataclass
class Cluster:
    """Drives decide() like the reconciler does: the data plane is measured before each decision."""

    spec: object
    status: BacktestServiceStatus = field(default_factory=BacktestServiceStatus)
    now: object = T0
    decisions: list[Decision] = field(default_factory=list)

    def step(self, plane: DataPlane, controls: Controls | None = None, **obs) -> Decision:
        decision = decide(
            self.spec, self.status, observe(self.now, **obs), self.now, generation=1,
            controls=controls or Controls(), plane=plane,
        )  # fmt: skip
        self.status = decision.status
        self.decisions.append(decision)
        return decision

    def plan(self) -> dict[str, int]:
        return {track: n for track, n in replica_plan(self.spec, self.status).by_revision.values()}


def plane(canary: int, stable: int = 10, weight: int | None = None) -> DataPlane:
    """Ready pods per track, and the weight the data plane confirms (None: not confirmed)."""
    return DataPlane(True, canary, stable, weight, weight)


def rolling_cluster(**spec) -> Cluster:
    cluster = Cluster(make_spec("engine:1", replicas=10, phases=PHASES, **spec))
    cluster.step(plane(0))  # first revision
    cluster.step(plane(0))  # healthy
    cluster.spec = make_spec("engine:2", replicas=10, phases=PHASES, **spec)
    assert cluster.step(plane(0, weight=0)).action == Action.START
    return cluster


def test_canary_is_sized_for_the_next_weight_before_the_weight_moves_when_a_phase_passes():
    cluster = rolling_cluster()
    assert cluster.plan()["canary"] == 1
    assert cluster.step(plane(1, weight=0)).status.canary_weight == 10
    assert cluster.step(plane(1, weight=10)).action == Action.CONFIRM
    cluster.now += timedelta(minutes=1)
    advanced = cluster.step(plane(1, weight=10))
    assert advanced.action == Action.ADVANCE
    # The review's defect: 10% -> 50% sent half the traffic to 2 ready canary pods. Now the weight stays
    # at 10% and the canary is resized for 50% first.
    assert advanced.status.canary_weight == 10
    assert advanced.status.step_name == "validation"
    assert cluster.plan() == {"stable": 10, "canary": 5}
    held = cluster.step(plane(2, weight=10))
    assert (held.action, held.status.canary_weight) == (Action.HOLD, 10)
    assert "2 of 5 canary pods ready for 50%" in held.reason
    shifted = cluster.step(plane(5, weight=10))
    assert (shifted.action, shifted.status.canary_weight) == (Action.SHIFT, 50)
    assert [e.reason for e in shifted.events] == ["TrafficShifted"]


def test_phase_clock_starts_when_the_data_plane_confirms_the_weight_when_it_lags():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))  # 10% applied
    for _ in range(3):  # the router has not picked it up yet
        cluster.now += timedelta(seconds=20)
        waiting = cluster.step(DataPlane(True, 1, 10, 0, None, "1 router pods report 0%"))
        assert waiting.status.phase_started_at is None
        assert "waiting for the data plane to apply 10%" in waiting.reason
    cluster.now += timedelta(seconds=20)
    confirmed = cluster.step(plane(1, weight=10))
    assert confirmed.action == Action.CONFIRM
    assert confirmed.status.phase_started_at == cluster.now  # not when the weight was written, a minute ago
    assert [e.reason for e in confirmed.events] == ["PhaseStarted"]
    cluster.now += timedelta(seconds=59)
    assert cluster.step(plane(1, weight=10)).status.step_name == "canary"  # its full minute, from confirmation


def test_all_traffic_waits_for_every_canary_pod_when_the_last_phase_starts():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(minutes=1)
    cluster.step(plane(1, weight=10))
    cluster.step(plane(5, weight=10))
    cluster.step(plane(5, weight=50))
    cluster.now += timedelta(minutes=1)
    cluster.step(plane(5, weight=50))
    assert cluster.plan()["canary"] == 10
    # The review's defect: 50% -> 100% put all traffic on the 10 pods already up while 10 more started.
    held = cluster.step(plane(9, weight=50))
    assert (held.action, held.status.canary_weight) == (Action.HOLD, 50)
    assert cluster.step(plane(10, weight=50)).status.canary_weight == 100


def test_full_promotion_waits_for_the_whole_new_revision_when_requested_at_the_first_phase():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    # The review's defect: promote --full at 1% switched the stable Service to a revision with 1 pod.
    held = cluster.step(plane(1, weight=10), Controls(promote_full="t1"))
    assert held.action == Action.PROMOTING
    assert held.status.promotion_pending and held.status.stable_revision != held.status.canary_revision
    assert "1 of 10 pods ready" in held.reason
    assert cluster.plan()["canary"] == 10
    assert not [e for e in held.events if e.reason == "RequestIgnored"]
    assert cluster.step(plane(7, weight=10), Controls(promote_full="t1")).action == Action.PROMOTING
    promoted = cluster.step(plane(10, weight=10), Controls(promote_full="t1"))
    assert promoted.action == Action.PROMOTE
    assert not promoted.status.promotion_pending


def test_promotion_after_the_last_phase_waits_when_canary_pods_were_lost():
    cluster = rolling_cluster(rollback={"bakeWindow": "0s"})
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    for ready, weight in ((5, 10), (5, 50), (10, 50), (10, 100)):
        if cluster.status.phase_started_at is not None:
            cluster.now += timedelta(minutes=1)
            cluster.step(plane(ready, weight=weight))
        cluster.step(plane(ready, weight=weight))
    assert cluster.status.step_name == "full" and cluster.status.phase_started_at is not None
    cluster.now += timedelta(minutes=1)
    held = cluster.step(plane(8, weight=100))  # two pods evicted by a drain
    assert held.action == Action.PROMOTING and held.status.phase == RolloutPhase.PROGRESSING
    assert cluster.step(plane(10, weight=100)).action == Action.PROMOTE


def test_waiting_for_capacity_rolls_back_at_the_progress_deadline_when_pods_never_come():
    cluster = rolling_cluster(rollback={"progressDeadline": "5m"})
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(minutes=1)
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(minutes=4)
    assert cluster.step(plane(3, weight=10)).action == Action.HOLD
    cluster.now += timedelta(minutes=1)
    rolled = cluster.step(plane(3, weight=10))
    assert rolled.action == Action.ROLLBACK
    assert rolled.failing_check == "progress_deadline"


def test_rollback_triggers_act_while_the_next_weight_waits_for_capacity():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(minutes=1)
    cluster.step(plane(1, weight=10))
    rolled = cluster.step(plane(2, weight=10), canary=track(200, errors=60))
    assert rolled.action == Action.ROLLBACK
    assert rolled.failing_check == "error_rate_trigger"


def test_stable_keeps_every_replica_until_promotion_when_dynamic_scale_is_off():
    cluster = rolling_cluster()
    for ready, weight in ((1, 0), (1, 10)):
        cluster.step(plane(ready, weight=weight))
    assert cluster.plan()["stable"] == 10


def test_stable_shrinks_only_as_confirmed_traffic_leaves_it_when_dynamic_scale_is_on():
    cluster = rolling_cluster(traffic={"dynamicStableScale": True})
    cluster.step(plane(1, weight=0))
    assert cluster.status.canary_weight == 10
    cluster.step(DataPlane(True, 1, 10, 0, None, "not yet"))  # asked 10%, the router still sends 0%
    assert cluster.plan()["stable"] == 10
    cluster.step(plane(1, weight=10))
    assert cluster.plan()["stable"] == 9


def test_replica_split_keeps_total_capacity_while_the_canary_starts_when_provider_is_replicas():
    spec = make_spec("engine:2", replicas=4, phases=PHASES, traffic={"provider": "replicas"})
    entering = BacktestServiceStatus(
        phase=RolloutPhase.PROGRESSING, stable_revision="a", canary_revision=spec.revision(), step=1,
        step_name="validation", canary_weight=10,
    )  # fmt: skip
    plan = {track: n for track, n in replica_plan(spec, entering).by_revision.values()}
    assert plan == {"canary": 2, "stable": 3}  # 10% ran on 1 canary + 3 stable; the canary grows to 2 first
    applied = entering.evolve(canary_weight=50)
    plan = {track: n for track, n in replica_plan(spec, applied).by_revision.values()}
    assert plan == {"canary": 2, "stable": 2}


def test_replica_counts_follow_the_weight_when_computed():
    assert share_replicas(1, 20) == 1 and share_replicas(50, 20) == 10 and share_replicas(100, 20) == 20
    assert canary_replicas(1, 2, "replicas") == 1 and canary_replicas(1, 2, "router") == 1
    assert canary_replicas(0, 10, "router") == 0
    spec = make_spec(phases=PHASES)
    assert target_weight(spec, BacktestServiceStatus()) == 0


def test_canary_share_goes_back_to_stable_and_the_phase_starts_over_when_every_canary_pod_is_evicted():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(seconds=30)
    # The drain's requests failed at the router (a Service without endpoints): they say nothing of the release.
    lost = cluster.step(plane(0, weight=10), canary=track(100, errors=100))
    assert lost.action == Action.SHIFT
    assert (lost.status.canary_weight, lost.status.phase_started_at) == (0, None)
    assert "capacity lost in phase canary" in lost.reason
    assert [e.reason for e in lost.events] == ["CapacityLost"]
    assert cluster.plan()["canary"] == 1  # the pods come back
    assert cluster.step(plane(0, weight=0)).action == Action.HOLD
    assert cluster.step(plane(1, weight=0)).status.canary_weight == 10
    restarted = cluster.step(plane(1, weight=10))
    assert restarted.action == Action.CONFIRM
    assert restarted.status.step_name == "canary" and restarted.status.phase_started_at == cluster.now


def test_canary_keeps_its_share_when_some_of_its_pods_are_evicted():
    cluster = rolling_cluster()
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(minutes=1)
    cluster.step(plane(1, weight=10))
    cluster.step(plane(5, weight=10))
    started = cluster.step(plane(5, weight=50))
    assert started.status.phase_started_at is not None
    cluster.now += timedelta(seconds=10)
    kept = cluster.step(plane(3, weight=50))
    assert (kept.action, kept.status.canary_weight) == (Action.HOLD, 50)


def test_replicas_provider_share_follows_the_ready_pods_when_every_canary_pod_is_evicted():
    cluster = rolling_cluster(traffic={"provider": "replicas"})
    cluster.step(plane(1, weight=0))
    cluster.step(plane(1, weight=10))
    cluster.now += timedelta(seconds=30)
    assert cluster.step(plane(0, weight=0)).action != Action.SHIFT


def test_never_ready_canary_is_rolled_back_when_its_readiness_fails_past_the_grace_before_taking_traffic():
    cluster = rolling_cluster()
    held = cluster.step(plane(0, weight=0), canary_unhealthy_pods=1)
    assert held.action == Action.ROLLBACK
    assert held.failing_check is not None and "unhealthy" in held.failing_check
    assert held.status.history[0].outcome == "rolled_back"


def test_healthy_service_is_looked_at_again_within_seconds_while_its_pods_follow_a_resize():
    spec = make_spec("engine:1", replicas=3)
    healthy = BacktestServiceStatus(phase=RolloutPhase.HEALTHY, stable_revision=spec.revision(), replicas=1)
    assert next_pass(spec, healthy) == POLL_WHILE_WAITING
    assert next_pass(spec, healthy.evolve(replicas=3)) == RESYNC
