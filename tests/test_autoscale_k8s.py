"""The autoscaler's Kubernetes backend: the real `kubernetes` client against a small stand-in API server on
127.0.0.1 that serves a Deployment's scale subresource (GET and PATCH), `raytron autoscaler` through a
kubeconfig pointing at it, and the DNS scraping path against real tritonserver replicas ("localhost")."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from helpers import base_env, run_cli
from raytron.serving.autoscale import AutoscaleConfig, ScalingRules
from raytron.serving.autoscale_k8s import DeploymentScale, DnsMetricsSource, KubernetesScaleConfig, run_autoscaler
from raytron.serving.autoscale_metrics import (
    ConcurrencyTracker, QueueComputeTracker, TritonCounters, combine, parse_gateway_metrics, parse_triton_metrics,
)
from raytron.serving.errors import AutoscaleConfigError, AutoscaleError

SCALE_PATH = "/apis/apps/v1/namespaces/raytron/deployments/triton/scale"


class StandInApiServer:
    """Answers GET and PATCH on one Deployment's scale subresource like the API server; records every request."""

    def __init__(self, replicas: int = 2) -> None:
        self.replicas = replicas
        self.requests: list[dict] = []
        self.status_override: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append({"method": self.command, "path": self.path, "content_type": self.headers.get("Content-Type"),
                                        "authorization": self.headers.get("Authorization"), "body": json.loads(body) if body else None})
                if self.path.split("?")[0] != SCALE_PATH:
                    return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                                            "message": f"{self.path} not found"})
                if server.status_override:
                    code = server.status_override
                    return self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": "Forbidden",
                                             "message": "deployments.apps \"triton\" is forbidden"})
                if self.command == "PATCH":
                    server.replicas = int(json.loads(body)["spec"]["replicas"])
                self._send(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                 "metadata": {"name": "triton", "namespace": "raytron", "resourceVersion": str(len(server.requests))},
                                 "spec": {"replicas": server.replicas},
                                 "status": {"replicas": server.replicas, "selector": "app.kubernetes.io/name=triton"}})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def client(self):
        from kubernetes import client

        configuration = client.Configuration(host=self.url)
        configuration.api_key = {"authorization": "test-token"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api():
    server = StandInApiServer()
    try:
        yield server
    finally:
        server.close()


def test_reads_and_patches_the_scale_subresource(api):
    scale = DeploymentScale(api.client(), "raytron", "triton")
    assert scale.current_replicas() == 2
    assert scale.scale_to(3) == 3 and api.replicas == 3
    get, patch = api.requests
    assert (get["method"], get["path"]) == ("GET", SCALE_PATH)
    assert (patch["method"], patch["path"], patch["body"]) == ("PATCH", SCALE_PATH, {"spec": {"replicas": 3}})
    # A dict body goes out as a strategic merge patch: the only field sent is spec.replicas.
    assert patch["content_type"] == "application/strategic-merge-patch+json"
    assert get["authorization"] == "Bearer test-token"


def test_api_errors_are_one_clear_line(api):
    with pytest.raises(AutoscaleError, match="cannot read deployments/nope/scale in namespace raytron: HTTP 404.*`--deployment`"):
        DeploymentScale(api.client(), "raytron", "nope").current_replicas()
    api.status_override = 403
    with pytest.raises(AutoscaleError, match="HTTP 403.*`get` and `patch` on deployments/scale"):
        DeploymentScale(api.client(), "raytron", "triton").scale_to(2)
    from kubernetes import client

    closed = StandInApiServer()
    closed.close()  # nothing listens on its port any more
    configuration = client.Configuration(host=closed.url)
    configuration.retries = 0
    with pytest.raises(AutoscaleError, match="the API server is unreachable"):
        DeploymentScale(client.ApiClient(configuration), "raytron", "triton").current_replicas()


def _policy(**kw) -> AutoscaleConfig:
    base = dict(min_replicas=1, max_replicas=3, target_queue_compute=None, target_in_flight=1.0, interval_s=0.2,
                scale_down=ScalingRules(stabilization_window_s=0, policies=()))
    base.update(kw)
    return AutoscaleConfig(**base)


def test_run_autoscaler_brings_the_count_within_bounds_and_dry_run_patches_nothing(api):
    api.replicas = 5  # above max: straight to the bound, as HPA does
    target = KubernetesScaleConfig(gateway_metrics_url="http://127.0.0.1:9/metrics")
    lines: list[str] = []
    run_autoscaler(_policy(), target, log=lines.append, steps=1, api_client=api.client(), resolve=lambda host: [], dry_run=True)
    assert [r["method"] for r in api.requests] == ["GET", "GET"] and api.replicas == 5
    assert any("autoscale 5 -> 3 replicas" in line and "[dry run]" in line for line in lines), lines
    run_autoscaler(_policy(), target, log=lines.append, steps=2, api_client=api.client(), resolve=lambda host: [])
    assert api.replicas == 3 and api.requests[-1]["method"] == "GET"  # the second step holds: no pod answered (MetricsUnavailable)
    with pytest.raises(AutoscaleConfigError, match="`--target-in-flight` \\(1\\) needs `--gateway-metrics-url`"):
        run_autoscaler(_policy(), KubernetesScaleConfig(), api_client=api.client())


def test_cli_uses_the_kubeconfig_and_fails_in_one_line_without_a_cluster(api, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": api.url}}],
        "users": [{"name": "test", "user": {"token": "kubeconfig-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "raytron"}}]}))
    env = base_env(tmp_path / "home")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    api.replicas = 7
    done = run_cli("autoscaler", "--max-replicas", "4", "--steps", "1", "--service-host", "nothing.invalid", "--autoscale-log",
                   str(tmp_path / "d.jsonl"), env={**env, "KUBECONFIG": str(kubeconfig)}, timeout_s=60)
    assert done.returncode == 0, done.output
    assert "autoscaling deployments/triton/scale in namespace raytron (7 replicas now) within 1-4" in done.stderr
    assert "autoscale 7 -> 4 replicas" in done.stderr and api.replicas == 4
    assert {r["authorization"] for r in api.requests} == {"Bearer kubeconfig-token"}
    record = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert (record["current"], record["desired"], record["reason"], record["reached"]) == (7, 4, "TooManyReplicas", 4)

    missing = run_cli("autoscaler", env={**env, "KUBECONFIG": str(tmp_path / "none")}, timeout_s=60)
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0, missing.output
    assert "no Kubernetes cluster to talk to" in missing.stderr
    bad = run_cli("autoscaler", "--min-replicas", "3", "--max-replicas", "2", env=env, timeout_s=60)
    assert bad.returncode == 2 and "`--max-replicas` (2): must be >= `--min-replicas` (3)" in bad.stderr, bad.output


# --- metrics parsing --------------------------------------------------------------------------------------------------

TRITON_TEXT = """# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="a",version="1"} 300
nv_inference_queue_duration_us{model="b",version="1"} 100
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="a",version="1"} 150
nv_inference_compute_infer_duration_us{model="b",version="1"} 50
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="a",version="1"} 2
"""


def test_triton_counters_become_a_ratio_per_interval():
    counters = parse_triton_metrics(TRITON_TEXT)
    assert counters == TritonCounters(queue_us=400, compute_us=200)
    tracker = QueueComputeTracker()
    assert tracker.update("r", counters) is None  # no interval yet
    assert tracker.update("r", TritonCounters(1000, 500)) == pytest.approx(600 / 300)
    assert tracker.update("r", TritonCounters(1000, 500)) == 0.0  # nothing computed in the interval: idle
    assert tracker.update("r", TritonCounters(30, 60)) == pytest.approx(0.5)  # restarted: counts from 0
    tracker.keep_only([])
    assert tracker.update("r", TritonCounters(30, 60)) is None
    with pytest.raises(AutoscaleError, match="cannot parse Triton's metrics"):
        parse_triton_metrics("not { prometheus")


def test_gateway_concurrency_is_averaged_over_the_interval():
    text = ('# TYPE raytron_gateway_replica_in_flight gauge\nraytron_gateway_replica_in_flight{replica="10.0.0.5:8001"} 3\n'
            '# TYPE raytron_gateway_replica_healthy gauge\nraytron_gateway_replica_healthy{replica="10.0.0.5:8001"} 0\n'
            '# TYPE raytron_gateway_request_latency_seconds histogram\n'
            'raytron_gateway_request_latency_seconds_bucket{method="ModelInfer",model="m",le="+Inf"} 10\n'
            'raytron_gateway_request_latency_seconds_count{method="ModelInfer",model="m"} 10\n'
            'raytron_gateway_request_latency_seconds_sum{method="ModelInfer",model="m"} 2.5\n'
            'raytron_gateway_request_latency_seconds_sum{method="ModelStreamInfer",model="m"} 0.5\n')
    counters = parse_gateway_metrics(text)
    assert counters.replicas == {"10.0.0.5:8001": (3.0, False)} and counters.busy_s == pytest.approx(3.0)
    now = [0.0]
    tracker = ConcurrencyTracker(clock=lambda: now[0])
    assert tracker.update(3.0) is None
    now[0] = 2.0
    assert tracker.update(19.0) == pytest.approx(8.0)  # 16 s of requests in 2 s: 8 in flight on average (Little's law)
    now[0] = 3.0
    assert tracker.update(1.0) == pytest.approx(1.0)  # a restarted gateway counts from 0
    # Shared over the replicas in rotation; one not (yet) in the gateway's pool is not ready.
    from raytron.serving.autoscale_metrics import GatewayCounters

    gateway = GatewayCounters(0, {"a": (5.0, True), "b": (0.0, True), "c": (0.0, False)})
    samples = combine([("a", 0.5), ("b", None), ("c", 0.1), ("d", 0.2)], gateway, 8.0)
    assert [(s.name, s.ready, s.in_flight, s.queue_compute_ratio) for s in samples] == [
        ("a", True, 4.0, 0.5), ("b", True, 4.0, None), ("c", False, None, 0.1), ("d", False, None, 0.2)]


# --- real replicas, resolved through DNS ("localhost") ------------------------------------------------------------------

@pytest.mark.slow
def test_dns_source_scrapes_real_replicas_and_the_policy_patches_the_stand_in(api, tmp_path):
    import tritonclient.grpc as grpcclient
    from triton_fixtures import build_repository, running_replicas

    from raytron.serving.gateway import GatewayConfig, GatewayThread

    repo = build_repository(tmp_path)
    api.replicas = 1
    with running_replicas(repo, 1) as (replica,), GatewayThread(GatewayConfig(replicas=[replica.address], metrics_port=0,
                                                                              health_interval_s=0.2)) as gateway:
        source = DnsMetricsSource("localhost", replica.metrics_port, gateway_metrics_url=f"http://127.0.0.1:{gateway.metrics_port}/metrics")
        assert [(s.name, s.ready, s.queue_compute_ratio) for s in source.observe()] == [("127.0.0.1", True, None)]

        stop, failures, done = threading.Event(), [], [0]

        def load() -> None:  # bounded: stops at the event, after 20 s, or after 20,000 requests
            client = grpcclient.InferenceServerClient(gateway.address)
            x = np.ones((1, 16), dtype=np.float32)
            request = grpcclient.InferInput("x", [1, 16], "FP32")
            request.set_data_from_numpy(x)
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline and done[0] < 20_000:
                try:
                    client.infer("mlp", [request], client_timeout=10)
                    done[0] += 1
                except Exception as exc:  # noqa: BLE001 - counted, asserted below
                    failures.append(exc)
            client.close()

        threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            target = KubernetesScaleConfig(service_host="localhost", metrics_port=replica.metrics_port,
                                           gateway_metrics_url=f"http://127.0.0.1:{gateway.metrics_port}/metrics")
            log = tmp_path / "d.jsonl"
            run_autoscaler(_policy(target_queue_compute=0.01, interval_s=0.5), target, log=lambda _: None, steps=4, api_client=api.client(),
                           decisions_path=log)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert not failures and done[0] > 0
    records = [json.loads(line) for line in Path(log).read_text().splitlines()]
    seen = records[-1]["replicas"]
    assert [s["name"] for s in seen] == ["127.0.0.1"] and seen[0]["ready"]
    assert seen[0]["queue_compute_ratio"] is not None and seen[0]["in_flight"] is not None
    assert records[0]["reason"] == "MetricsUnavailable"  # the first scrape of the counters gives no interval yet
    up = next(r for r in records if r["desired"] > r["current"])  # 6 clients in flight on one pod, target 1: scale up
    assert api.replicas > 1 and ("PATCH", {"spec": {"replicas": up["desired"]}}) in [(r["method"], r["body"]) for r in api.requests]


def test_help_names_the_rbac_and_the_options(tmp_path):
    env = base_env(tmp_path / "home")
    autoscaler = run_cli("autoscaler", "--help", env=env, timeout_s=60)
    assert autoscaler.returncode == 0 and "deployments/scale" in autoscaler.stdout
    for flag in ("--gateway-metrics-url", "--scale-down-window-s", "--dry-run", "--metrics-port"):
        assert flag in autoscaler.stdout
    serve = run_cli("serve", "--help", env=env, timeout_s=60)
    for flag in ("--autoscale", "--target-queue-compute", "--target-in-flight", "--autoscale-log"):
        assert flag in serve.stdout
