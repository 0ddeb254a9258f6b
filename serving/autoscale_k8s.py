"""The autoscaler's Kubernetes backend: the same HPA policy, scaling a Deployment through its scale subresource.

Observing: the Triton pods are the A records of their headless Service
(`<service>.<namespace>.svc.<cluster_domain>`; with `publishNotReadyAddresses: false` only ready pods
are listed), and each is scraped at `http://<ip>:<metrics_port>/metrics`. Optionally the gateway's
metrics endpoint gives the mean requests in flight over the interval (see
`raytron.serving.autoscale_metrics`), shared over the pods it has in rotation (its `replica` labels
are `<ip>:<grpc port>`, matched here by IP). Pods the Deployment counts but DNS does not list yet
(starting, or failing readiness) are "not ready" to the policy: 0 load on scale-up, left out on
scale-down, as HPA treats unready pods. With several gateway pods, `--gateway-metrics-url` must
reach one that sees a representative share (or leave the in-flight metric off).

Scaling: `AppsV1Api.read_namespaced_deployment_scale` gives the current count (`spec.replicas`, as
HPA uses) and `patch_namespaced_deployment_scale` sets it, so the ServiceAccount needs only `get` and
`patch` on `deployments/scale` of that one Deployment. The client configuration is the pod's own
(in-cluster: service-account token and CA) or, outside a cluster, the kubeconfig (`$KUBECONFIG`,
`~/.kube/config`).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raytron.serving.autoscale import Autoscaler, AutoscaleConfig, AutoscalePolicy, ReplicaSample
from raytron.serving.autoscale_metrics import (
    ConcurrencyTracker, GatewayCounters, QueueComputeTracker, combine, parse_gateway_metrics, parse_triton_metrics, scrape, scrape_all,
)
from raytron.serving.errors import AutoscaleConfigError, AutoscaleError

__all__ = ["KubernetesScaleConfig", "kubernetes_api", "DeploymentScale", "DnsMetricsSource", "resolve_ipv4", "run_autoscaler"]

_DNS_LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True, kw_only=True)
class KubernetesScaleConfig:
    """What `raytron autoscaler` scales and where it reads metrics. Validated at construction."""

    namespace: str = "raytron"
    """Namespace of the Deployment and the Service."""
    deployment: str = "triton"
    """The Triton Deployment whose scale subresource is patched."""
    service: str = "triton-headless"
    """The headless Service of the Triton pods (its DNS A records are the pods)."""
    metrics_port: int = 8002
    """Triton's metrics port on each pod (Triton's default 8002)."""
    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain."""
    gateway_metrics_url: str | None = None
    """The gateway's Prometheus endpoint (e.g. http://gateway:9090/metrics) for in-flight requests; None: that metric is off."""
    scrape_timeout_s: float = 2.0
    """Per scrape."""
    service_host: str | None = None
    """The name to resolve instead of `<service>.<namespace>.svc.<cluster_domain>` (tests, custom DNS)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("namespace", "deployment", "service", "cluster_domain"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or not set(value) <= _DNS_LABEL_CHARS or value[0] in "-." or len(value) > 253:
                problems.append(f"`--{name.replace('_', '-')}` ({value!r}): must be a DNS name (lower-case letters, digits, '-', '.')")
        if isinstance(self.metrics_port, bool) or not isinstance(self.metrics_port, int) or not 1 <= self.metrics_port <= 65535:
            problems.append(f"`--metrics-port` ({self.metrics_port!r}): must be a TCP port within 1-65535")
        url = self.gateway_metrics_url
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            problems.append(f"`--gateway-metrics-url` ({url!r}): must be an http(s) URL, e.g. http://gateway:9090/metrics")
        if not self.scrape_timeout_s > 0:
            problems.append(f"`--scrape-timeout-s` ({self.scrape_timeout_s!r}): must be > 0")
        if problems:
            raise AutoscaleConfigError("invalid autoscaler configuration: " + "; ".join(problems))

    @property
    def host(self) -> str:
        """The DNS name listing the Triton pods."""
        return self.service_host or f"{self.service}.{self.namespace}.svc.{self.cluster_domain}"


def kubernetes_api(configuration=None):
    """An `ApiClient`: `configuration` if given, else in-cluster config, else the kubeconfig.

    Raises:
        AutoscaleError: neither an in-cluster service account nor a kubeconfig is available.
    """
    from kubernetes import client, config

    if configuration is not None:
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException as in_cluster:
        try:
            config.load_kube_config()
            return client.ApiClient()
        except (config.ConfigException, OSError, TypeError) as kubeconfig:
            raise AutoscaleError(
                f"no Kubernetes cluster to talk to: not in a pod ({in_cluster}) and no usable kubeconfig ({kubeconfig}); "
                "run `raytron autoscaler` in the cluster (k8s/base/autoscaler.yaml) or point $KUBECONFIG at a cluster") from None


def _api_problem(exc, action: str, what: str) -> AutoscaleError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        hint = {403: "the ServiceAccount needs `get` and `patch` on deployments/scale (k8s/base/autoscaler.yaml's Role)",
                404: "check `--namespace` and `--deployment`",
                401: "the credentials were refused"}.get(exc.status, "")
        return AutoscaleError(f"cannot {action} {what}: HTTP {exc.status} {exc.reason}" + (f"; {hint}" if hint else ""))
    reason = getattr(exc, "reason", None) or exc
    return AutoscaleError(f"cannot {action} {what}: the API server is unreachable ({reason})")


class DeploymentScale:
    """A Deployment's scale subresource as the autoscaler's `ScaleTarget`.

    Args:
        api_client: a `kubernetes.client.ApiClient` (see `kubernetes_api`).
        namespace: the Deployment's namespace.
        deployment: its name.
    """

    def __init__(self, api_client, namespace: str, deployment: str):
        from kubernetes import client

        self.apps = client.AppsV1Api(api_client)
        self.namespace, self.deployment = namespace, deployment
        self.what = f"deployments/{deployment}/scale in namespace {namespace}"

    def current_replicas(self) -> int:
        """`spec.replicas` of the scale subresource (what HPA calls the current count)."""
        try:
            scale = self.apps.read_namespaced_deployment_scale(self.deployment, self.namespace, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors: one clear message
            raise _api_problem(exc, "read", self.what) from None
        return int(scale.spec.replicas or 0)

    def scale_to(self, replicas: int) -> int:
        """Patch `spec.replicas`; returns the count the API server answered."""
        try:
            scale = self.apps.patch_namespaced_deployment_scale(self.deployment, self.namespace, {"spec": {"replicas": int(replicas)}},
                                                                _request_timeout=10)
        except Exception as exc:  # noqa: BLE001
            raise _api_problem(exc, "patch", self.what) from None
        return int(scale.spec.replicas or 0)


def resolve_ipv4(host: str) -> list[str]:
    """The IPv4 addresses `host` resolves to (sorted; [] when it does not resolve, e.g. no ready pod)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos}, key=lambda ip: tuple(int(p) for p in ip.split(".")))


class DnsMetricsSource:
    """Samples of the pods behind a headless Service: Triton's metrics by IP, in-flight from the gateway's metrics.

    Args:
        host: the name whose A records are the pods.
        metrics_port: Triton's metrics port.
        gateway_metrics_url: the gateway's metrics endpoint, or None.
        resolve: host -> IPs (injected by tests).
        timeout_s: per scrape.
    """

    def __init__(self, host: str, metrics_port: int, *, gateway_metrics_url: str | None = None,
                 resolve: Callable[[str], list[str]] = resolve_ipv4, timeout_s: float = 2.0):
        self.host, self.metrics_port, self.gateway_metrics_url = host, metrics_port, gateway_metrics_url
        self.resolve, self.timeout_s = resolve, timeout_s
        self.tracker = QueueComputeTracker()
        self.concurrency = ConcurrencyTracker()

    def observe(self) -> list[ReplicaSample]:
        ips = self.resolve(self.host)
        self.tracker.keep_only(ips)
        urls = {ip: f"http://{ip}:{self.metrics_port}/metrics" for ip in ips}
        texts = scrape_all(urls.values(), timeout_s=self.timeout_s)
        gateway, concurrency = None, None
        if self.gateway_metrics_url:
            try:
                scraped = parse_gateway_metrics(scrape(self.gateway_metrics_url, timeout_s=self.timeout_s))
            except AutoscaleError:
                scraped = None  # the in-flight metric is missing this step; the policy treats it as such
            if scraped is not None:
                concurrency = self.concurrency.update(scraped.busy_s)
                gateway = GatewayCounters(scraped.busy_s, {a.rsplit(":", 1)[0].strip("[]"): v for a, v in scraped.replicas.items()})
        ratios = []
        for ip in ips:
            text = texts[urls[ip]]
            ratios.append((ip, self.tracker.update(ip, parse_triton_metrics(text)) if isinstance(text, str) else None))
        if not self.gateway_metrics_url:
            return [ReplicaSample(ip, ready=True, queue_compute_ratio=ratio) for ip, ratio in ratios]  # DNS lists ready pods only
        return combine(ratios, gateway, concurrency)


def run_autoscaler(policy_config: AutoscaleConfig, target: KubernetesScaleConfig, *, log: Callable[[str], None] = print,
                   decisions_path: Path | None = None, dry_run: bool = False, steps: int = 0, api_client=None,
                   resolve: Callable[[str], list[str]] = resolve_ipv4) -> int:
    """`raytron autoscaler`: step the policy every `interval_s` until SIGTERM/SIGINT (or `steps` steps; 0: forever).

    Raises:
        AutoscaleError: no cluster configuration, or the scale subresource cannot be read at start.
    """
    if policy_config.target_in_flight is not None and target.gateway_metrics_url is None:
        raise AutoscaleConfigError(f"`--target-in-flight` ({policy_config.target_in_flight:g}) needs `--gateway-metrics-url` "
                                   "(the gateway's metrics endpoint): Triton does not know what is in flight behind the gateway")
    scale = DeploymentScale(kubernetes_api() if api_client is None else api_client, target.namespace, target.deployment)
    current = scale.current_replicas()  # fail fast, with one clear line, before looping
    source = DnsMetricsSource(target.host, target.metrics_port, gateway_metrics_url=target.gateway_metrics_url, resolve=resolve,
                              timeout_s=target.scrape_timeout_s)
    scaler = Autoscaler(AutoscalePolicy(policy_config), source, scale, log=log, decisions_path=decisions_path, dry_run=dry_run)
    targets = ", ".join(f"{name} {value:g}" for name, value in policy_config.targets().items())
    log(f"raytron: autoscaling {scale.what} ({current} replicas now) within {policy_config.min_replicas}-{policy_config.max_replicas} "
        f"every {policy_config.interval_s:g} s; pods from DNS {target.host}:{target.metrics_port}; targets: {targets}"
        + ("; dry run: decisions are logged, nothing is patched" if dry_run else ""))
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        done = 0
        while not stop.wait(policy_config.interval_s if done else 0):
            try:
                scaler.step()
            except AutoscaleError as exc:
                log(f"raytron: autoscale step failed: {exc}")
            done += 1
            if steps and done >= steps:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("raytron: autoscaler stopped")
    return 0
