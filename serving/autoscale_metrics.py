"""What the autoscaler observes: Triton's queue/compute ratio per replica and the gateway's in-flight requests.

Triton exports cumulative microsecond counters on its metrics port, one series per model and
version: `nv_inference_queue_duration_us` (time requests waited in the scheduler queue) and
`nv_inference_compute_infer_duration_us` (time the model spent computing them). Both grow when a
request completes. `QueueComputeTracker` keeps each replica's previous sums (over every model) and
turns two scrapes into the ratio over the interval between them: queue growth / compute growth,
0 when nothing completed, and a counter that went down (a restarted server) counts from 0, as
Prometheus' `rate()` does. The first scrape of a replica has no interval yet: no sample.

In-flight requests come from the gateway's Prometheus metrics (the local gateway's registry, or its
metrics endpoint in Kubernetes), averaged over the interval by Little's law: the growth of
`raytron_gateway_request_latency_seconds_sum` (seconds requests spent in the gateway, added as each
completes) divided by the interval's length is the mean number of requests in flight. It is shared
evenly over the ready replicas, which the gateway balances by least outstanding requests: HPA's
AverageValue semantics for a metric of the whole Deployment. An instantaneous read of the
`raytron_gateway_replica_in_flight` gauge was tried first: on 2 cores with 16 closed-loop clients it
read anything from 0 to 16 from one step to the next, and a stabilization window over such samples
either flaps or never scales. The gauge still says which replicas are in rotation.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from raytron.serving.autoscale import ReplicaSample
from raytron.serving.errors import AutoscaleError

__all__ = ["TritonCounters", "parse_triton_metrics", "GatewayCounters", "parse_gateway_metrics", "QueueComputeTracker",
           "ConcurrencyTracker", "scrape", "scrape_all", "LocalMetricsSource"]

QUEUE_METRIC = "nv_inference_queue_duration_us"
COMPUTE_METRIC = "nv_inference_compute_infer_duration_us"


@dataclass(frozen=True)
class TritonCounters:
    """One scrape of a replica, summed over its models (microseconds since the server started)."""

    queue_us: float
    compute_us: float


def parse_triton_metrics(text: str) -> TritonCounters:
    """Sum the queue and compute counters over every model in Triton's Prometheus text.

    Raises:
        AutoscaleError: the text is not Prometheus exposition format.
    """
    sums = {QUEUE_METRIC: 0.0, COMPUTE_METRIC: 0.0}
    try:
        for family in text_string_to_metric_families(text):
            if family.name in sums:  # the parser names counter samples `<name>_total`; the family keeps Triton's name
                sums[family.name] += sum(s.value for s in family.samples if not s.name.endswith("_created"))
    except ValueError as exc:
        raise AutoscaleError(f"cannot parse Triton's metrics (Prometheus text expected): {exc}") from None
    return TritonCounters(queue_us=sums[QUEUE_METRIC], compute_us=sums[COMPUTE_METRIC])


@dataclass(frozen=True)
class GatewayCounters:
    """One scrape of the gateway."""

    busy_s: float
    """Seconds completed requests spent in the gateway, summed (the latency histogram's `_sum`)."""
    replicas: dict[str, tuple[float, bool]]
    """Replica address -> (requests in flight now, in rotation)."""


def parse_gateway_metrics(text: str) -> GatewayCounters:
    """The gateway's latency sum and its per-replica gauges from its Prometheus text.

    Raises:
        AutoscaleError: the text is not Prometheus exposition format.
    """
    in_flight: dict[str, float] = {}
    healthy: dict[str, bool] = {}
    busy_s = 0.0
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "raytron_gateway_replica_in_flight":
                    in_flight[s.labels.get("replica", "")] = s.value
                elif s.name == "raytron_gateway_replica_healthy":
                    healthy[s.labels.get("replica", "")] = s.value >= 1.0
                elif s.name == "raytron_gateway_request_latency_seconds_sum":
                    busy_s += s.value
    except ValueError as exc:
        raise AutoscaleError(f"cannot parse the gateway's metrics (Prometheus text expected): {exc}") from None
    return GatewayCounters(busy_s, {address: (value, healthy.get(address, True)) for address, value in in_flight.items()})


class ConcurrencyTracker:
    """Mean requests in flight between two scrapes of the gateway (Little's law), None on the first.

    Args:
        clock: seconds, monotonic (injected by tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: tuple[float, float] | None = None

    def update(self, busy_s: float) -> float | None:
        now = self.clock()
        previous, self._last = self._last, (now, busy_s)
        if previous is None or now <= previous[0]:
            return None
        grown = busy_s - previous[1]
        if grown < 0:  # a restarted gateway: its sum began again at 0
            grown = busy_s
        return grown / (now - previous[0])


class QueueComputeTracker:
    """Per-replica deltas of Triton's counters between scrapes -> queue/compute ratio over the interval."""

    def __init__(self) -> None:
        self._last: dict[str, TritonCounters] = {}

    def update(self, replica: str, counters: TritonCounters) -> float | None:
        """Record a scrape of `replica`; the ratio since its previous scrape, or None on its first."""
        previous = self._last.get(replica)
        self._last[replica] = counters
        if previous is None:
            return None
        queue = counters.queue_us - previous.queue_us
        compute = counters.compute_us - previous.compute_us
        if queue < 0 or compute < 0:  # the server restarted: its counters began again at 0
            queue, compute = counters.queue_us, counters.compute_us
        return queue / compute if compute > 0 else 0.0

    def keep_only(self, replicas: Iterable[str]) -> None:
        """Forget replicas that are gone (a later replica on the same address starts afresh)."""
        keep = set(replicas)
        for name in [n for n in self._last if n not in keep]:
            del self._last[name]


def scrape(url: str, *, timeout_s: float = 2.0) -> str:
    """GET a Prometheus endpoint.

    Raises:
        AutoscaleError: unreachable, not 200, or slower than `timeout_s`.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) URLs we built
            return response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AutoscaleError(f"cannot scrape {url}: {getattr(exc, 'reason', exc)}") from None


def scrape_all(urls: Iterable[str], *, timeout_s: float = 2.0) -> dict[str, str | AutoscaleError]:
    """Scrape several endpoints at once: {url: text, or the AutoscaleError it raised}."""
    urls = list(dict.fromkeys(urls))

    def one(url: str) -> str | AutoscaleError:
        try:
            return scrape(url, timeout_s=timeout_s)
        except AutoscaleError as exc:
            return exc

    if len(urls) <= 1:
        return {u: one(u) for u in urls}
    with ThreadPoolExecutor(max_workers=min(16, len(urls)), thread_name_prefix="raytron-scrape") as pool:
        return dict(zip(urls, pool.map(one, urls)))


def combine(replicas: list[tuple[str, float | None]], gateway: GatewayCounters | None, concurrency: float | None) -> list[ReplicaSample]:
    """Samples from (key, queue/compute ratio) per replica, the gateway's scrape and its mean concurrency.

    A replica is ready while the gateway has it in rotation (or, without a gateway scrape, when its
    metrics answered). The mean concurrency is shared evenly over the ready replicas; without it the
    in-flight metric is missing for every replica this step.
    """
    ready = {}
    for key, ratio in replicas:
        seen = gateway.replicas.get(key) if gateway is not None else None
        # A replica the gateway does not list yet (just started, not yet discovered) takes no traffic: not ready.
        ready[key] = seen[1] if seen is not None else (gateway is None and ratio is not None)
    n_ready = sum(ready.values())
    per_replica = concurrency / n_ready if concurrency is not None and n_ready else None
    return [ReplicaSample(key, ready=ready[key], queue_compute_ratio=ratio, in_flight=per_replica if ready[key] else None)
            for key, ratio in replicas]


class LocalMetricsSource:
    """Samples of `raytron serve`'s replicas: Triton's metrics port of each, and the in-process gateway's registry.

    Args:
        replicas: returns (gRPC address, metrics URL) of every running replica.
        gateway_metrics: returns the gateway's metrics as Prometheus text.
        timeout_s: per scrape.
        clock: seconds, monotonic.
    """

    def __init__(self, replicas: Callable[[], list[tuple[str, str]]], gateway_metrics: Callable[[], str], *, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.replicas, self.gateway_metrics, self.timeout_s = replicas, gateway_metrics, timeout_s
        self.tracker = QueueComputeTracker()
        self.concurrency = ConcurrencyTracker(clock)

    def observe(self) -> list[ReplicaSample]:
        replicas = self.replicas()
        self.tracker.keep_only(address for address, _ in replicas)
        gateway = parse_gateway_metrics(self.gateway_metrics())
        concurrency = self.concurrency.update(gateway.busy_s)
        texts = scrape_all((url for _, url in replicas), timeout_s=self.timeout_s)
        ratios = []
        for address, url in replicas:
            text = texts.get(url)
            ratios.append((address, self.tracker.update(address, parse_triton_metrics(text)) if isinstance(text, str) else None))
        return combine(ratios, gateway, concurrency)
