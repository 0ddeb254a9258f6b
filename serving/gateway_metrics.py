"""The gateway's Prometheus metrics, in a private registry per gateway (several gateways share a process in tests).

Exposed on `GatewayConfig.metrics_port`:

    raytron_gateway_requests_total{method, model, code}      inference requests answered, by gRPC status code
    raytron_gateway_errors_total{method, model, code}        the subset that did not end OK
    raytron_gateway_rejected_total{model, code}              requests the gateway answered itself (validation, auth)
    raytron_gateway_replica_unavailable_total{replica}       requests `replica` answered UNAVAILABLE (each re-sent to
                                                             another replica in rotation, if one was left)
    raytron_gateway_request_latency_seconds{method, model}   histogram, from receipt to answer
    raytron_gateway_replica_in_flight{replica}               requests in flight on each replica (gauge)
    raytron_gateway_replica_healthy{replica}                 1 while the replica is in rotation (gauge)

`method` is ModelInfer or ModelStreamInfer (one count per request of a stream). `model` is the
requested name when the gateway knows it and `<unknown>` otherwise, so that clients sending random
names cannot grow the label set without bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

__all__ = ["GatewayMetrics", "UNKNOWN_MODEL"]

UNKNOWN_MODEL = "<unknown>"
_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ReplicaCollector:
    """Reads the pool at scrape time, so requests pay nothing for the per-replica gauges."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        in_flight = GaugeMetricFamily("raytron_gateway_replica_in_flight", "Requests in flight on each replica through this gateway",
                                      labels=["replica"])
        healthy = GaugeMetricFamily("raytron_gateway_replica_healthy", "1 while the replica is in rotation (ServerReady succeeds)",
                                    labels=["replica"])
        for slot in self.pool:
            in_flight.add_metric([slot.address], slot.outstanding)
            healthy.add_metric([slot.address], 1.0 if slot.healthy else 0.0)
        yield in_flight
        yield healthy


class GatewayMetrics:
    """Counters and histograms of one gateway; `registry` is what its metrics endpoint serves."""

    def __init__(self, pool):
        self.registry = CollectorRegistry()
        self.requests = Counter("raytron_gateway_requests", "Inference requests answered by the gateway, by gRPC status code",
                                ["method", "model", "code"], registry=self.registry)
        self.errors = Counter("raytron_gateway_errors", "Inference requests that did not end OK, by gRPC status code",
                              ["method", "model", "code"], registry=self.registry)
        self.rejected = Counter("raytron_gateway_rejected", "Requests the gateway answered without a replica (validation, auth)",
                                ["model", "code"], registry=self.registry)
        self.unavailable = Counter("raytron_gateway_replica_unavailable", "Requests a replica answered UNAVAILABLE; each was re-sent to "
                                   "another replica in rotation if one was left", ["replica"], registry=self.registry)
        self.latency = Histogram("raytron_gateway_request_latency_seconds", "Time from receiving an inference request to answering it",
                                 ["method", "model"], buckets=_BUCKETS_S, registry=self.registry)
        self.registry.register(_ReplicaCollector(pool))
        # Label lookups cost microseconds; requests reuse the children.
        self._counted: dict[tuple, tuple] = {}
        self._timed: dict[tuple, object] = {}

    def observe(self, method: str, model: str, code_name: str, seconds: float) -> None:
        """Count one answered inference request and its latency."""
        key = (method, model, code_name)
        children = self._counted.get(key)
        if children is None:
            children = self._counted[key] = (self.requests.labels(*key), self.errors.labels(*key) if code_name != "OK" else None)
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        timer = self._timed.get((method, model))
        if timer is None:
            timer = self._timed[(method, model)] = self.latency.labels(method, model)
        timer.observe(seconds)

    def reject(self, model: str, code_name: str) -> None:
        self.rejected.labels(model, code_name).inc()

    def unavailable_answer(self, replica: str) -> None:
        self.unavailable.labels(replica).inc()
