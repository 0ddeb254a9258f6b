"""The autoscaler: Kubernetes HPA semantics over Triton's queue/compute ratio and the gateway's in-flight requests.

`AutoscalePolicy` is the decision, an explicit state machine: `step(current, samples)` turns one
observation into a `Decision` and remembers what HPA remembers (recent recommendations for the
stabilization windows, recent scale events for the rate limits); `record_scale` is called once a
change took effect. Time comes from an injected clock, so tests step it deterministically.
`Autoscaler` is the control loop around it: a `MetricsSource` observes, the policy decides, a
`ScaleTarget` (local replicas in `raytron serve`, a Deployment's scale subresource in Kubernetes)
applies, and every decision is logged.

One step, as the HPA controller does it (kubernetes pkg/controller/podautoscaler, horizontal.go and
replica_calculator.go):

1. Per metric: ratio = (average over ready replicas) / target. Within `tolerance` of 1 the proposal
   is the current count, else ceil(ratio * replicas). Replicas without a sample count as HPA counts
   pods without metrics: at 0 load when the metric says "scale up" and at 100 % of the target when
   it says "scale down"; replicas not ready yet count as 0 load on scale-up and are ignored on
   scale-down. If that rebalancing brings the ratio within tolerance or flips its direction, the
   proposal is the current count.
2. The recommendation is the largest proposal (HPA's multi-metric rule), clamped to
   [min_replicas, max_replicas]. A metric without any sample is invalid: if every metric is, or the
   valid ones point down, nothing changes (HPA refuses to scale down on partial metrics).
3. Stabilization: scaling down goes only to the largest recommendation seen within the scale-down
   window, scaling up only to the smallest within the scale-up window.
4. Rate limits: each `ScalingPolicy` allows a change relative to the count at the start of its
   period (Pods: +-value; Percent: x(1 +- value/100)), computed from the scale events within the
   period; `select_policy` Max takes the policy allowing the largest change, Min the smallest,
   Disabled forbids changes in that direction.

A current count outside [min, max] goes straight to the bound, without metrics, as HPA does.

Example:
    >>> policy = AutoscalePolicy(AutoscaleConfig(min_replicas=1, max_replicas=4, target_in_flight=4), clock=lambda: 0.0)
    >>> policy.step(1, [ReplicaSample("a", ready=True, in_flight=9.0)]).desired
    3
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from raytron.serving.errors import AutoscaleConfigError

__all__ = [
    "ScalingPolicy", "ScalingRules", "AutoscaleConfig", "ReplicaSample", "MetricProposal", "Decision", "AutoscalePolicy",
    "MetricsSource", "ScaleTarget", "Autoscaler", "parse_bounds", "parse_policies", "METRICS",
]

log = logging.getLogger(__name__)

QUEUE_COMPUTE, IN_FLIGHT = "queue_compute_ratio", "in_flight_per_replica"
METRICS = (QUEUE_COMPUTE, IN_FLIGHT)
_LABELS = {QUEUE_COMPUTE: "queue/compute", IN_FLIGHT: "in-flight/replica"}
_SELECT = ("Max", "Min", "Disabled")
_TYPES = ("Pods", "Percent")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class ScalingPolicy:
    """One rate limit, HPA's `HPAScalingPolicy`: at most `value` pods (or percent) of change per `period_s`."""

    type: str
    """Pods (a number of replicas) or Percent (of the count at the start of the period)."""
    value: int
    """Replicas or percent allowed per period; > 0."""
    period_s: float
    """Length of the sliding window the change is counted over (HPA: 1-1800 s)."""


@dataclass(frozen=True, kw_only=True)
class ScalingRules:
    """One direction's behaviour, HPA's `HPAScalingRules`."""

    stabilization_window_s: float
    """Recommendations this far back bound a change (up: their minimum; down: their maximum); 0 turns it off."""
    policies: tuple[ScalingPolicy, ...]
    """Rate limits; with none, changes in this direction are not rate limited."""
    select_policy: str = "Max"
    """Max: the policy allowing the largest change wins; Min: the smallest; Disabled: no change in this direction."""


def _default_up() -> ScalingRules:
    # HPA's scaleUp rate limits (the larger of +4 pods and +100 % per 15 s), with a 2 s window where HPA has
    # none: HPA steps every 15 s on metrics averaged over a minute or so, this loop every second on
    # instantaneous samples, and one noisy sample (a replica descheduled for a moment) must not add a
    # replica. Measured on 2 cores: without it, one queue/compute sample of 1.24 among 0.2s added one.
    return ScalingRules(stabilization_window_s=2.0, policies=(ScalingPolicy(type="Pods", value=4, period_s=15.0),
                                                              ScalingPolicy(type="Percent", value=100, period_s=15.0)))


def _default_down() -> ScalingRules:
    # HPA's scaleDown policy (-100 % per 15 s), but a 30 s window instead of HPA's 300 s: a local
    # `raytron serve` holds replicas on one machine, where an idle replica costs memory for minutes
    # and a flapping one costs a start-up of seconds, not a pod schedule and image pull.
    return ScalingRules(stabilization_window_s=30.0, policies=(ScalingPolicy(type="Percent", value=100, period_s=15.0),))


@dataclass(frozen=True, kw_only=True)
class AutoscaleConfig:
    """What the autoscaler aims for and how fast it may move. Validated at construction (AutoscaleConfigError names the field)."""

    min_replicas: int = 1
    """Never fewer replicas than this (>= 1)."""
    max_replicas: int = 4
    """Never more replicas than this (>= min_replicas)."""
    target_queue_compute: float | None = 1.0
    """Target of Triton's queue time / compute time per replica over the last interval; None turns the metric off.
    Keep it well above the ratio of a lone request (scheduling overhead: 0.1-0.4 measured with the local Python
    backend): that floor does not fall as replicas are added, so a target near it blocks every scale-down."""
    target_in_flight: float | None = 4.0
    """Target of the gateway's requests in flight per replica; None turns the metric off."""
    tolerance: float = 0.1
    """No change while observed/target is within 1 +- tolerance (HPA's default 0.1)."""
    scale_up: ScalingRules = field(default_factory=_default_up)
    """Scale-up behaviour (window 2 s, HPA's is 0 s; +4 pods or +100 % per 15 s, the larger, as HPA)."""
    scale_down: ScalingRules = field(default_factory=_default_down)
    """Scale-down behaviour (window 30 s here, HPA's is 300 s; -100 % per 15 s)."""
    interval_s: float = 1.0
    """Time between two steps of the control loop (HPA's sync period is 15 s)."""

    def __post_init__(self) -> None:
        problems: list[str] = []

        def bad(name: str, value, allowed: str) -> None:
            problems.append(f"`{name}` ({value!r}): {allowed}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.min_replicas) or self.min_replicas < 1:
            bad("min_replicas", self.min_replicas, "must be an integer >= 1")
        if not is_int(self.max_replicas) or self.max_replicas < 1:
            bad("max_replicas", self.max_replicas, "must be an integer >= 1")
        elif is_int(self.min_replicas) and self.max_replicas < self.min_replicas:
            bad("max_replicas", self.max_replicas, f"must be >= `min_replicas` ({self.min_replicas})")
        for name in ("target_queue_compute", "target_in_flight"):
            value = getattr(self, name)
            if value is not None and (not is_num(value) or value <= 0):
                bad(name, value, "must be a number > 0, or None to turn the metric off")
        if self.target_queue_compute is None and self.target_in_flight is None:
            problems.append("`target_queue_compute` and `target_in_flight` are both off: set at least one target")
        if not is_num(self.tolerance) or not 0 <= self.tolerance < 1:
            bad("tolerance", self.tolerance, "must be a number within [0, 1) (HPA's default is 0.1)")
        if not is_num(self.interval_s) or self.interval_s <= 0:
            bad("interval_s", self.interval_s, "must be a number of seconds > 0")
        for direction in ("scale_up", "scale_down"):
            rules = getattr(self, direction)
            if not isinstance(rules, ScalingRules):
                bad(direction, rules, "must be a ScalingRules")
                continue
            object.__setattr__(rules, "policies", tuple(rules.policies))
            if not is_num(rules.stabilization_window_s) or not 0 <= rules.stabilization_window_s <= 3600:
                bad(f"{direction}.stabilization_window_s", rules.stabilization_window_s, "must be a number of seconds within 0-3600 (HPA's range)")
            if rules.select_policy not in _SELECT:
                bad(f"{direction}.select_policy", rules.select_policy, f"must be one of {', '.join(_SELECT)}")
            for i, p in enumerate(rules.policies):
                where = f"{direction}.policies[{i}]"
                if p.type not in _TYPES:
                    bad(f"{where}.type", p.type, "must be Pods or Percent")
                if not is_int(p.value) or p.value < 1:
                    bad(f"{where}.value", p.value, "must be an integer >= 1")
                if not is_num(p.period_s) or not 0 < p.period_s <= 1800:
                    bad(f"{where}.period_s", p.period_s, "must be a number of seconds within (0, 1800] (HPA's range)")
        if problems:
            raise AutoscaleConfigError("invalid autoscale configuration: " + "; ".join(problems))

    def targets(self) -> dict[str, float]:
        """The metrics in use and their targets."""
        found = {QUEUE_COMPUTE: self.target_queue_compute, IN_FLIGHT: self.target_in_flight}
        return {k: v for k, v in found.items() if v is not None}


def parse_bounds(text: str, *, option: str = "--autoscale") -> tuple[int, int]:
    """`MIN:MAX` (e.g. `1:4`) -> (1, 4).

    Raises:
        AutoscaleConfigError: not two integers with 1 <= MIN <= MAX.
    """
    parts = str(text).split(":")
    try:
        low, high = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or low < 1 or high < low:
        raise AutoscaleConfigError(f"`{option}` ({text!r}): must be MIN:MAX, two integers with 1 <= MIN <= MAX (e.g. 1:4)")
    return low, high


def parse_policies(text: str, *, option: str) -> tuple[ScalingPolicy, ...]:
    """`Pods:4:15,Percent:100:15` (TYPE:VALUE:PERIOD_S, comma-separated) -> ScalingPolicy tuple; `none` -> ().

    Raises:
        AutoscaleConfigError: an item is not TYPE:VALUE:PERIOD_S with TYPE Pods or Percent.
    """
    if str(text).strip().lower() in ("", "none"):
        return ()
    out = []
    for item in str(text).split(","):
        parts = [p.strip() for p in item.split(":")]
        kind = {"pods": "Pods", "percent": "Percent"}.get(parts[0].lower()) if parts else None
        try:
            value, period_s = int(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            kind = None
        if kind is None or len(parts) != 3:
            raise AutoscaleConfigError(f"`{option}` ({text!r}): each item must be TYPE:VALUE:PERIOD_S with TYPE Pods or Percent, "
                                       "e.g. Pods:4:15,Percent:100:15 (or `none` for no rate limit)")
        out.append(ScalingPolicy(type=kind, value=value, period_s=period_s))
    return tuple(out)


# --------------------------------------------------------------------------- observations and decisions


@dataclass(frozen=True)
class ReplicaSample:
    """One replica's load at one step; None where its metric could not be read (HPA's "missing pod")."""

    name: str
    ready: bool = True
    """In rotation (the gateway's health checks pass; in Kubernetes: listed by the headless Service)."""
    queue_compute_ratio: float | None = None
    """Triton's queue time / compute time over the last interval (0 when it computed nothing)."""
    in_flight: float | None = None
    """Requests the gateway has in flight on this replica."""


@dataclass(frozen=True)
class MetricProposal:
    """What one metric asked for."""

    metric: str
    target: float
    observed: float | None
    """Average over ready replicas with a sample; None when there was none (the metric is invalid this step)."""
    proposal: int | None
    samples: int
    """Ready replicas that had a sample."""


@dataclass(frozen=True)
class Decision:
    """One step of the policy, for logs and JSON lines."""

    time_s: float
    current: int
    metrics: tuple[MetricProposal, ...]
    recommendation: int
    """Largest proposal over the metrics, clamped to [min, max] (the current count when no valid metric allowed a change)."""
    stabilized: int
    """After the stabilization windows."""
    limited: int
    """After the rate limits of the scaling policies."""
    desired: int
    """What the replica count should be now."""
    reason: str
    """Why `desired` is what it is: ScaleUp, ScaleDown, WithinTolerance, ScaleDownStabilized, ScaleUpStabilized,
    ScaleUpLimit, ScaleDownLimit, AtBound, NoChange, MetricsUnavailable, TooFewReplicas, TooManyReplicas, ScalingDisabled."""

    @property
    def changes(self) -> bool:
        return self.desired != self.current

    def to_json(self) -> dict:
        """A flat-ish dict for one JSON line."""
        record = asdict(self)
        record["metrics"] = {m.metric: {k: v for k, v in asdict(m).items() if k != "metric"} for m in self.metrics}
        return record

    def describe(self) -> str:
        """`autoscale 2 -> 3 replicas: queue/compute 0.78 (target 1) -> 2, in-flight/replica 1.80 (target 1.5) -> 3; ... (ScaleUp)`."""
        parts = []
        for m in self.metrics:
            observed = "no samples" if m.observed is None else f"{m.observed:.2f}"
            parts.append(f"{_LABELS.get(m.metric, m.metric)} {observed} (target {m.target:g}) -> {'-' if m.proposal is None else m.proposal}")
        head = f"autoscale {self.current} -> {self.desired} replicas" if self.changes else f"autoscale holds {self.current} replicas"
        return f"{head}: {', '.join(parts)}; recommendation {self.recommendation}, stabilized {self.stabilized}, limited {self.limited} ({self.reason})"


def propose(metric: str, current: int, values: Sequence[tuple[bool, float | None]], target: float, tolerance: float) -> MetricProposal:
    """One metric's proposal, HPA's replica calculator for an average-value metric.

    Args:
        metric: its name.
        current: the replica count now.
        values: (ready, value or None) per replica seen; replicas of `current` not seen count as not ready.
        target: the target value per replica.
        tolerance: HPA's tolerance.
    """
    ready = [v for ok, v in values if ok and v is not None]
    missing = sum(1 for ok, v in values if ok and v is None)
    unready = max(0, current - len(ready) - missing)
    if not ready:
        return MetricProposal(metric, target, None, None, 0)
    observed = sum(ready) / len(ready)
    ratio = observed / target
    if missing == 0 and unready == 0:
        proposal = current if abs(ratio - 1.0) <= tolerance else math.ceil(ratio * len(ready))
        return MetricProposal(metric, target, observed, proposal, len(ready))
    if abs(ratio - 1.0) <= tolerance:  # HPA: within tolerance on the ready pods alone, nothing to rebalance
        return MetricProposal(metric, target, observed, current, len(ready))
    # Rebalance conservatively: toward a scale-down missing replicas count at the target and unready ones are
    # left out; toward a scale-up both count as idle (they may be starting, and will take load soon).
    if ratio < 1.0:
        total, n = sum(ready) + missing * target, len(ready) + missing
    else:
        total, n = sum(ready), len(ready) + missing + unready
    new_ratio = total / (target * n)
    if abs(new_ratio - 1.0) <= tolerance or (ratio < 1.0) != (new_ratio < 1.0):
        return MetricProposal(metric, target, observed, current, len(ready))
    proposal = math.ceil(new_ratio * n)
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        proposal = current
    return MetricProposal(metric, target, observed, proposal, len(ready))


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class _Event:
    time_s: float
    change: int


class AutoscalePolicy:
    """The HPA decision as a state machine (see the module doc). Not thread-safe: one control loop steps it.

    Args:
        config: the validated configuration.
        clock: seconds, monotonic; tests pass a fake.
    """

    def __init__(self, config: AutoscaleConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._recommendations: list[tuple[float, int]] = []
        self._up_events: list[_Event] = []
        self._down_events: list[_Event] = []

    def step(self, current: int, samples: Sequence[ReplicaSample]) -> Decision:
        """Decide the replica count for this observation; remembers the recommendation for the windows."""
        c = self.config
        now = self.clock()
        if current <= 0:  # HPA: a target scaled to zero by hand is left alone
            return Decision(now, current, (), current, current, current, current, "ScalingDisabled")
        if current > c.max_replicas or current < c.min_replicas:
            bound = c.max_replicas if current > c.max_replicas else c.min_replicas
            reason = "TooManyReplicas" if current > c.max_replicas else "TooFewReplicas"
            return Decision(now, current, (), bound, bound, bound, bound, reason)
        proposals = tuple(propose(name, current, [(s.ready, getattr(s, "queue_compute_ratio" if name == QUEUE_COMPUTE else "in_flight"))
                                                  for s in samples], target, c.tolerance)
                          for name, target in c.targets().items())
        valid = [p.proposal for p in proposals if p.proposal is not None]
        raw = max(valid) if valid else current
        # HPA: with some metric unreadable, a scale-down is not trusted (the missing one might have said up).
        if not valid or (len(valid) < len(proposals) and raw < current):
            return Decision(now, current, proposals, current, current, current, current, "MetricsUnavailable")
        recommendation = min(max(raw, c.min_replicas), c.max_replicas)
        stabilized = self._stabilize(now, current, recommendation)
        limited, limit_reason = self._limit(now, current, stabilized)
        if limited != stabilized:
            reason = limit_reason
        elif stabilized != recommendation:
            reason = "ScaleDownStabilized" if recommendation < stabilized else "ScaleUpStabilized"
        elif limited == current:
            if raw != current:
                reason = "AtBound"  # the metrics ask for more than max_replicas (or fewer than min_replicas)
            else:
                reason = "WithinTolerance" if all(p.proposal == current for p in proposals if p.proposal is not None) else "NoChange"
        else:
            reason = "ScaleUp" if limited > current else "ScaleDown"
        return Decision(now, current, proposals, recommendation, stabilized, limited, limited, reason)

    def record_scale(self, previous: int, new: int) -> None:
        """Remember a change that took effect (the rate limits count these)."""
        now = self.clock()
        if new > previous:
            self._up_events.append(_Event(now, new - previous))
        elif new < previous:
            self._down_events.append(_Event(now, previous - new))
        longest = max((p.period_s for r in (self.config.scale_up, self.config.scale_down) for p in r.policies), default=0.0)
        self._up_events = [e for e in self._up_events if e.time_s > now - longest]
        self._down_events = [e for e in self._down_events if e.time_s > now - longest]

    # -- HPA's stabilizeRecommendationWithBehaviors and convertDesiredReplicasWithBehaviorRate -------------------------

    def _stabilize(self, now: float, current: int, recommendation: int) -> int:
        up_window, down_window = self.config.scale_up.stabilization_window_s, self.config.scale_down.stabilization_window_s
        up, down = recommendation, recommendation
        for at, rec in self._recommendations:
            if at > now - up_window:
                up = min(up, rec)
            if at > now - down_window:
                down = max(down, rec)
        keep = max(up_window, down_window)
        self._recommendations = [(at, rec) for at, rec in self._recommendations if at > now - keep] + [(now, recommendation)]
        stabilized = current
        if stabilized < up:
            stabilized = up
        if stabilized > down:
            stabilized = down
        return stabilized

    def _limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        if desired > current:
            limit = self._up_limit(now, current, self.config.scale_up)
            limit = max(limit, current)  # HPA: never a limit below the current count while scaling up
            return (limit, "ScaleUpLimit") if desired > limit else (desired, "")
        if desired < current:
            limit = self._down_limit(now, current, self.config.scale_down)
            limit = min(limit, current)
            return (limit, "ScaleDownLimit") if desired < limit else (desired, "")
        return desired, ""

    def _period_start(self, now: float, current: int, period_s: float) -> int:
        added = sum(e.change for e in self._up_events if e.time_s > now - period_s)
        removed = sum(e.change for e in self._down_events if e.time_s > now - period_s)
        return current - added + removed

    def _up_limit(self, now: float, current: int, rules: ScalingRules) -> int:
        if rules.select_policy == "Disabled":
            return current
        if not rules.policies:
            return self.config.max_replicas
        proposed = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_s)
            # Percent rounds up, or a small count could never grow (HPA's comment says the same).
            proposed.append(start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100)))
        return min(proposed) if rules.select_policy == "Min" else max(proposed)

    def _down_limit(self, now: float, current: int, rules: ScalingRules) -> int:
        if rules.select_policy == "Disabled":
            return current
        if not rules.policies:
            return self.config.min_replicas
        proposed = []
        for p in rules.policies:
            start = self._period_start(now, current, p.period_s)
            proposed.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
        return max(proposed) if rules.select_policy == "Min" else min(proposed)


# --------------------------------------------------------------------------- the control loop


class MetricsSource(Protocol):
    """Observes the replicas: one sample per replica it can see."""

    def observe(self) -> list[ReplicaSample]: ...


class ScaleTarget(Protocol):
    """What the autoscaler scales: local replicas, or a Deployment's scale subresource."""

    def current_replicas(self) -> int: ...

    def scale_to(self, replicas: int) -> int:
        """Make it `replicas`; returns the count reached (fewer on a failed start)."""
        ...


class Autoscaler:
    """Observe, decide, apply, log: one `step()` per `config.interval_s` in `run()` (or driven by tests).

    Args:
        policy: the decision state machine.
        source: where samples come from.
        target: what is scaled.
        log: one line per change of the replica count (and per failure).
        decisions_path: when given, every decision is appended to this file as one JSON line.
        dry_run: decide and log, but never call `target.scale_to`.
    """

    def __init__(self, policy: AutoscalePolicy, source: MetricsSource, target: ScaleTarget, *, log: Callable[[str], None] = print,
                 decisions_path: Path | None = None, dry_run: bool = False):
        self.policy, self.source, self.target, self.log, self.dry_run = policy, source, target, log, dry_run
        self.decisions_path = Path(decisions_path) if decisions_path is not None else None
        self.decisions: list[Decision] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> Decision:
        """One iteration: observe, decide, apply when the count changes."""
        current = self.target.current_replicas()
        samples = self.source.observe()
        decision = self.policy.step(current, samples)
        reached = current
        if decision.changes:
            self.log(f"raytron: {decision.describe()}" + (" [dry run]" if self.dry_run else ""))
            if not self.dry_run:
                reached = self.target.scale_to(decision.desired)
                self.policy.record_scale(current, reached)
                if reached != decision.desired:
                    self.log(f"raytron: autoscale reached {reached} replicas, not {decision.desired}")
        self.decisions.append(decision)
        del self.decisions[:-1000]  # a bounded history for status and tests
        if self.decisions_path is not None:
            record = {**decision.to_json(), "reached": reached, "replicas": [asdict(s) for s in samples], "wall_time_s": time.time()}
            with open(self.decisions_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return decision

    def run(self) -> None:
        """Step every `interval_s` until `stop()`; a failing step is logged and the loop goes on."""
        interval_s = self.policy.config.interval_s
        while not self._stop.wait(interval_s):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a scrape or API hiccup must not end autoscaling
                if self._stop.is_set():
                    break
                self.log(f"raytron: autoscale step failed: {type(exc).__name__}: {exc}")

    def start(self) -> "Autoscaler":
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="raytron-autoscaler", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the loop to end after the step in progress, without waiting."""
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the loop to end and wait for it (a step in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
