"""The autoscale policy (HPA semantics), stepped with a fake clock; the control loop with small real collaborators."""

from __future__ import annotations

import json

import pytest

from raytron.serving.autoscale import (
    Autoscaler, AutoscaleConfig, AutoscalePolicy, ReplicaSample, ScalingPolicy, ScalingRules, parse_bounds, parse_policies, propose,
)
from raytron.serving.errors import AutoscaleConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def loaded(n: int, *, in_flight: float | None = None, ratio: float | None = None, ready: bool = True) -> list[ReplicaSample]:
    return [ReplicaSample(f"r{i}", ready=ready, in_flight=in_flight, queue_compute_ratio=ratio) for i in range(n)]


def config(**kw) -> AutoscaleConfig:
    base = dict(min_replicas=1, max_replicas=5, target_in_flight=4.0, target_queue_compute=None,
                scale_up=ScalingRules(stabilization_window_s=0, policies=(ScalingPolicy(type="Pods", value=10, period_s=15),)),
                scale_down=ScalingRules(stabilization_window_s=30, policies=(ScalingPolicy(type="Percent", value=100, period_s=15),)))
    base.update(kw)
    return AutoscaleConfig(**base)


class Loop:
    """The policy plus a replica count that follows its decisions, as a backend would."""

    def __init__(self, cfg: AutoscaleConfig, replicas: int = 1) -> None:
        self.clock = Clock()
        self.policy = AutoscalePolicy(cfg, clock=self.clock)
        self.replicas = replicas

    def step(self, total_in_flight: float | None = None, *, ratio: float | None = None, advance_s: float = 1.0):
        self.clock.advance(advance_s)
        per = None if total_in_flight is None else total_in_flight / self.replicas
        decision = self.policy.step(self.replicas, loaded(self.replicas, in_flight=per, ratio=ratio))
        if decision.desired != self.replicas:
            self.policy.record_scale(self.replicas, decision.desired)
            self.replicas = decision.desired
        return decision


def test_scales_up_under_load_then_holds_within_the_window_then_scales_down():
    loop = Loop(config())
    d = loop.step(16)  # 16 in flight on 1 replica, target 4: ceil(1 * 16/4) = 4
    assert (d.current, d.desired, d.reason) == (1, 4, "ScaleUp")
    assert d.metrics[0].observed == 16 and d.metrics[0].proposal == 4
    assert loop.step(16).reason == "WithinTolerance" and loop.replicas == 4  # 4 per replica: on target
    # The load drops to 1 in flight: the metric asks for 1, but 4 was recommended within the last 30 s.
    held = [loop.step(1) for _ in range(29)]  # t = 3..31 s; the last 4 was recommended at t = 2 s
    assert {d.desired for d in held} == {4} and held[-1].reason == "ScaleDownStabilized" and held[-1].recommendation == 1
    assert held[-1].stabilized == 4
    # 30 s after the last recommendation of 4, the window no longer holds it.
    down = loop.step(1)
    assert (down.current, down.desired, down.reason) == (4, 1, "ScaleDown"), down
    assert loop.replicas == 1


def test_tolerance_keeps_the_count_near_the_target():
    loop = Loop(config(tolerance=0.1), replicas=2)
    assert loop.step(8.7).desired == 2  # 4.35 per replica: ratio 1.0875, within 0.1
    d = loop.step(9.0)  # 4.5 per replica: ratio 1.125, beyond
    assert (d.desired, d.reason) == (3, "ScaleUp")


def test_never_beyond_the_bounds():
    loop = Loop(config(min_replicas=2, max_replicas=3), replicas=2)
    d = loop.step(100)
    assert d.metrics[0].proposal == 25 and d.recommendation == 3 and d.desired == 3
    assert loop.step(100).reason == "AtBound" and loop.replicas == 3
    loop.step(0, advance_s=100)
    assert loop.replicas == 2  # idle: min_replicas, not 0
    # A count outside the bounds (changed by hand) goes straight back to them, without metrics.
    policy = AutoscalePolicy(config(min_replicas=2, max_replicas=3), clock=Clock())
    assert (policy.step(7, []).desired, policy.step(7, []).reason) == (3, "TooManyReplicas")
    assert (policy.step(1, []).desired, policy.step(1, []).reason) == (2, "TooFewReplicas")
    assert policy.step(0, []).reason == "ScalingDisabled"


def test_scale_up_rate_limit_counts_the_events_within_its_period():
    cfg = config(max_replicas=20, scale_up=ScalingRules(stabilization_window_s=0, policies=(ScalingPolicy(type="Pods", value=2, period_s=15),)))
    loop = Loop(cfg)
    d = loop.step(40)  # asks for 10
    assert (d.recommendation, d.limited, d.reason) == (10, 3, "ScaleUpLimit")
    d = loop.step(40)  # 2 were added 1 s ago: the period starts at 1, so 3 is the limit still
    assert (d.desired, d.reason) == (3, "ScaleUpLimit") and not d.changes
    loop.clock.advance(14.5)
    assert loop.step(40).desired == 5  # the first event left the 15 s period


def test_select_policy_max_min_and_disabled():
    pods, percent = ScalingPolicy(type="Pods", value=1, period_s=60), ScalingPolicy(type="Percent", value=100, period_s=60)
    for select, expected in (("Max", 8), ("Min", 5)):  # from 4: +1 pod -> 5, +100 % -> 8
        cfg = config(max_replicas=20, scale_up=ScalingRules(stabilization_window_s=0, policies=(pods, percent), select_policy=select))
        assert Loop(cfg, replicas=4).step(80).desired == expected, select
    cfg = config(scale_up=ScalingRules(stabilization_window_s=0, policies=(pods,), select_policy="Disabled"))
    d = Loop(cfg, replicas=2).step(80)
    assert (d.desired, d.reason) == (2, "ScaleUpLimit")
    # Scale-down: -1 pod per period, and Min picks the policy allowing the smallest change.
    cfg = config(scale_down=ScalingRules(stabilization_window_s=0, policies=(pods, percent), select_policy="Min"))
    loop = Loop(cfg, replicas=5)
    assert loop.step(0).desired == 4
    assert loop.step(0).desired == 4  # the period's start is 5: 5 - 1 = 4 still


def test_scale_up_stabilization_window_takes_the_smallest_recent_recommendation():
    cfg = config(scale_up=ScalingRules(stabilization_window_s=10, policies=()))
    loop = Loop(cfg)
    d = loop.step(16)  # the first recommendation (4) is the only one in the window: the window bounds it by itself
    assert d.desired == 4
    loop2 = Loop(cfg)
    assert loop2.step(4).desired == 1  # on target: recommendation 1
    d = loop2.step(16)
    assert (d.recommendation, d.desired, d.reason) == (4, 1, "ScaleUpStabilized")
    loop2.clock.advance(9.5)
    assert loop2.step(16).desired == 4  # the recommendation of 1 left the 10 s window


def test_multi_metric_takes_the_largest_proposal():
    policy = AutoscalePolicy(config(target_queue_compute=0.5, max_replicas=10), clock=Clock())
    # in-flight asks for 2 (8 on 2 replicas: on target... 4 each -> 2), queue/compute 1.5/0.5 asks for 6.
    d = policy.step(2, loaded(2, in_flight=4.0, ratio=1.5))
    by = {m.metric: m for m in d.metrics}
    assert by["in_flight_per_replica"].proposal == 2 and by["queue_compute_ratio"].proposal == 6 and d.desired == 6
    assert "queue/compute 1.50 (target 0.5) -> 6" in d.describe() and d.describe().startswith("autoscale 2 -> 6 replicas")
    json.dumps(d.to_json())  # JSON-serializable as logged


def test_missing_metrics_are_conservative_like_hpa():
    # Scale-up: two ready replicas at 8 in flight, one missing (counted as 0): ratio (8+8+0)/(3*4) = 1.33 -> 4.
    samples = [(True, 8.0), (True, 8.0), (True, None)]
    assert propose("m", 3, samples, 4.0, 0.1).proposal == 4
    # Scale-down: the missing one counts at the target: (0+0+4)/(3*4) -> ceil(0.33*3) = 1, instead of 0 -> min.
    assert propose("m", 3, [(True, 0.0), (True, 0.0), (True, None)], 4.0, 0.1).proposal == 1
    # An unready replica (starting) is 0 load on scale-up and left out on scale-down.
    assert propose("m", 3, [(True, 12.0), (True, 12.0), (False, None)], 4.0, 0.1).proposal == 6
    assert propose("m", 3, [(True, 1.0), (True, 1.0)], 4.0, 0.1).proposal == 1
    # Rebalancing that flips the direction holds: ready say up (4.8 vs 4), with the unready at 0 it says down.
    assert propose("m", 3, [(True, 4.8), (False, None), (False, None)], 4.0, 0.1).proposal == 3
    # No sample at all: the metric is invalid.
    assert propose("m", 2, [(False, None), (False, None)], 4.0, 0.1).proposal is None


def test_partial_metrics_never_scale_down():
    policy = AutoscalePolicy(config(target_queue_compute=0.5), clock=Clock())
    d = policy.step(3, loaded(3, in_flight=0.0, ratio=None))  # in-flight says 1, queue/compute has no sample
    assert (d.desired, d.reason) == (3, "MetricsUnavailable")
    d = policy.step(3, loaded(3, in_flight=12.0, ratio=None))  # but a scale-up on the valid metric goes ahead
    assert d.desired == 5
    assert policy.step(3, []).reason == "MetricsUnavailable"


@pytest.mark.parametrize("fields, named", [
    ({"min_replicas": 0}, "`min_replicas` (0)"),
    ({"min_replicas": 3, "max_replicas": 2}, "`max_replicas` (2): must be >= `min_replicas` (3)"),
    ({"target_in_flight": -1.0}, "`target_in_flight` (-1.0)"),
    ({"target_in_flight": None, "target_queue_compute": None}, "set at least one target"),
    ({"tolerance": 1.5}, "`tolerance` (1.5)"),
    ({"interval_s": 0}, "`interval_s` (0)"),
    ({"scale_down": ScalingRules(stabilization_window_s=-1, policies=())}, "`scale_down.stabilization_window_s` (-1)"),
    ({"scale_up": ScalingRules(stabilization_window_s=0, policies=(ScalingPolicy(type="Nodes", value=1, period_s=15),))},
     "`scale_up.policies[0].type` ('Nodes'): must be Pods or Percent"),
    ({"scale_up": ScalingRules(stabilization_window_s=0, policies=(), select_policy="Fastest")}, "`scale_up.select_policy` ('Fastest')"),
])
def test_config_errors_name_the_field_and_value(fields, named):
    with pytest.raises(AutoscaleConfigError) as info:
        config(**fields)
    assert named in str(info.value)
    assert info.value.exit_code == 2


def test_parsers():
    assert parse_bounds("1:4") == (1, 4)
    for bad in ("4", "0:2", "3:2", "a:b", "1:2:3"):
        with pytest.raises(AutoscaleConfigError, match="`--autoscale`"):
            parse_bounds(bad)
    assert parse_policies("Pods:4:15,percent:100:15", option="--scale-up-policies") == (
        ScalingPolicy(type="Pods", value=4, period_s=15.0), ScalingPolicy(type="Percent", value=100, period_s=15.0))
    assert parse_policies("none", option="x") == ()
    with pytest.raises(AutoscaleConfigError, match="`--scale-down-policies` \\('Pods:4'\\)"):
        parse_policies("Pods:4", option="--scale-down-policies")


class FakeReplicas:
    """A scale target that records what it was asked; reaching fewer than asked once, as a failed start would."""

    def __init__(self, replicas: int) -> None:
        self.replicas, self.calls = replicas, []
        self.fail_once = False

    def current_replicas(self) -> int:
        return self.replicas

    def scale_to(self, replicas: int) -> int:
        self.calls.append(replicas)
        if self.fail_once and replicas > self.replicas:
            self.fail_once = False
            replicas = self.replicas + 1
        self.replicas = replicas
        return replicas


class FixedLoad:
    def __init__(self, target: FakeReplicas, total: float) -> None:
        self.target, self.total = target, total

    def observe(self):
        return loaded(self.target.replicas, in_flight=self.total / self.target.replicas)


def test_autoscaler_applies_logs_and_writes_json_lines(tmp_path):
    clock, lines = Clock(), []
    target = FakeReplicas(1)
    source = FixedLoad(target, 16)
    scaler = Autoscaler(AutoscalePolicy(config(), clock=clock), source, target, log=lines.append, decisions_path=tmp_path / "d.jsonl")
    target.fail_once = True
    d = scaler.step()
    assert d.desired == 4 and target.replicas == 2 and target.calls == [4]
    assert lines[0].startswith("raytron: autoscale 1 -> 4 replicas: in-flight/replica 16.00 (target 4) -> 4")
    assert lines[1] == "raytron: autoscale reached 2 replicas, not 4"
    clock.advance(1)
    scaler.step()
    assert target.replicas == 4
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [(r["current"], r["desired"], r["reached"]) for r in records] == [(1, 4, 2), (2, 4, 4)]
    assert records[0]["metrics"]["in_flight_per_replica"]["observed"] == 16.0 and len(records[1]["replicas"]) == 2


def test_dry_run_decides_but_does_not_scale():
    target = FakeReplicas(1)
    lines = []
    scaler = Autoscaler(AutoscalePolicy(config(), clock=Clock()), FixedLoad(target, 16), target, log=lines.append, dry_run=True)
    assert scaler.step().desired == 4 and target.calls == [] and lines[0].endswith("[dry run]")
