"""`raytron autoscaler`: the HPA-style autoscaler for a Triton Deployment in Kubernetes; and the policy options
it shares with `raytron serve --autoscale` (one set of flags, one `AutoscaleConfig`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "autoscaler"

TargetQueueCompute = Annotated[float, typer.Option(
    "--target-queue-compute", help="Target of Triton's queue time / compute time per replica over an interval (0 turns this metric off).")]
TargetInFlight = Annotated[float, typer.Option(
    "--target-in-flight", help="Target of the gateway's requests in flight per replica (0 turns this metric off).")]
Tolerance = Annotated[float, typer.Option("--tolerance", help="No change while observed/target is within 1 +- this (HPA's 0.1).")]
ScaleUpWindow = Annotated[float, typer.Option(
    "--scale-up-window-s", help="Scale up only to the smallest recommendation of this many seconds (HPA's default 0).")]
ScaleUpPolicies = Annotated[str, typer.Option(
    "--scale-up-policies", help="Scale-up rate limits TYPE:VALUE:PERIOD_S, comma-separated, TYPE Pods or Percent; `none` for no limit.")]
ScaleDownPolicies = Annotated[str, typer.Option(
    "--scale-down-policies", help="Scale-down rate limits, as --scale-up-policies.")]
ScaleUpSelect = Annotated[str, typer.Option(
    "--scale-up-select", help="Max: the rate limit allowing the largest change wins; Min: the smallest; Disabled: never scale up.")]
ScaleDownSelect = Annotated[str, typer.Option("--scale-down-select", help="Max, Min or Disabled, as --scale-up-select.")]
AutoscaleLog = Annotated[Optional[Path], typer.Option(
    "--autoscale-log", help="Append every decision (metrics, recommendation, windows, limits) to this file as JSON lines.", show_default=False)]

DEFAULT_UP_POLICIES = "Pods:4:15,Percent:100:15"
DEFAULT_DOWN_POLICIES = "Percent:100:15"

# Field names of AutoscaleConfig -> the flags that set them, so that errors name what the user typed.
_FLAGS = {"target_queue_compute": "--target-queue-compute", "target_in_flight": "--target-in-flight", "tolerance": "--tolerance",
          "scale_up.stabilization_window_s": "--scale-up-window-s", "scale_down.stabilization_window_s": "--scale-down-window-s",
          "scale_up.select_policy": "--scale-up-select", "scale_down.select_policy": "--scale-down-select"}


def autoscale_config(*, min_replicas: int, max_replicas: int, target_queue_compute: float, target_in_flight: float | None, tolerance: float,
                     scale_up_window_s: float, scale_down_window_s: float, scale_up_policies: str, scale_down_policies: str,
                     scale_up_select: str, scale_down_select: str, interval_s: float, flags: dict[str, str]):
    """Build and validate the `AutoscaleConfig` from CLI values; errors name the flags (`flags` adds command-specific ones).

    Raises:
        AutoscaleConfigError: a value is out of range.
    """
    from raytron.serving.autoscale import AutoscaleConfig, ScalingRules, parse_policies
    from raytron.serving.errors import AutoscaleConfigError

    try:
        return AutoscaleConfig(
            min_replicas=min_replicas, max_replicas=max_replicas,
            target_queue_compute=target_queue_compute or None, target_in_flight=target_in_flight or None, tolerance=tolerance,
            scale_up=ScalingRules(stabilization_window_s=scale_up_window_s, select_policy=scale_up_select,
                                  policies=parse_policies(scale_up_policies, option="--scale-up-policies")),
            scale_down=ScalingRules(stabilization_window_s=scale_down_window_s, select_policy=scale_down_select,
                                    policies=parse_policies(scale_down_policies, option="--scale-down-policies")),
            interval_s=interval_s)
    except AutoscaleConfigError as exc:
        names = {**_FLAGS, **flags}
        message = re.sub(r"`(scale_(?:up|down))\.policies\[(\d+)\]\.([a-z_]+)`",
                         lambda m: f"`--{m.group(1).replace('_', '-')}-policies` item {int(m.group(2)) + 1} {m.group(3).upper()}", str(exc))
        message = re.sub(r"`([a-z_.]+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", message)
        message = message.replace("`--target-queue-compute` and `--target-in-flight` are both off",
                                  "`--target-queue-compute` and `--target-in-flight` are both 0 (off)")
        raise AutoscaleConfigError(message) from None


def command(
    namespace: Annotated[str, typer.Option("--namespace", help="Namespace of the Triton Deployment and its headless Service.")] = "raytron",
    deployment: Annotated[str, typer.Option("--deployment", help="The Triton Deployment to scale (its scale subresource).")] = "triton",
    service: Annotated[str, typer.Option("--service", help="Headless Service of the Triton pods: its DNS A records are the pods.")] = "triton-headless",
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Triton's metrics port on each pod.")] = 8002,
    cluster_domain: Annotated[str, typer.Option("--cluster-domain", help="The cluster's DNS domain.")] = "cluster.local",
    service_host: Annotated[Optional[str], typer.Option("--service-host", help="Resolve this name instead of SERVICE.NAMESPACE.svc.CLUSTER_DOMAIN.",
                                                        show_default=False)] = None,
    gateway_metrics_url: Annotated[Optional[str], typer.Option(
        "--gateway-metrics-url", help="The gateway's metrics endpoint (e.g. http://gateway:9090/metrics): turns on the in-flight metric.",
        show_default=False)] = None,
    min_replicas: Annotated[int, typer.Option("--min-replicas", help="Never fewer Triton pods.")] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", help="Never more Triton pods.")] = 4,
    target_queue_compute: TargetQueueCompute = 1.0,
    target_in_flight: Annotated[Optional[float], typer.Option(
        "--target-in-flight", help="Target of in-flight requests per pod (default 4 with --gateway-metrics-url, else off).",
        show_default=False)] = None,
    tolerance: Tolerance = 0.1,
    scale_up_window_s: ScaleUpWindow = 0.0,
    scale_down_window_s: Annotated[float, typer.Option(
        "--scale-down-window-s", help="Scale down only to the largest recommendation of this many seconds (HPA's default 300).")] = 300.0,
    scale_up_policies: ScaleUpPolicies = DEFAULT_UP_POLICIES,
    scale_down_policies: ScaleDownPolicies = DEFAULT_DOWN_POLICIES,
    scale_up_select: ScaleUpSelect = "Max",
    scale_down_select: ScaleDownSelect = "Max",
    interval_s: Annotated[float, typer.Option("--interval-s", help="Seconds between two steps (HPA's sync period is 15).")] = 15.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and log, never patch the Deployment.")] = False,
    autoscale_log: AutoscaleLog = None,
    steps: Annotated[int, typer.Option("--steps", help="Stop after this many steps (0: run until SIGTERM).")] = 0,
) -> int:
    """Scale a Triton Deployment like Kubernetes' HPA would, on Triton's queue/compute ratio (scraped from each pod
    listed by the headless Service's DNS) and the gateway's in-flight requests per pod. It patches only the
    Deployment's scale subresource: its ServiceAccount needs `get` and `patch` on deployments/scale, nothing else.
    Runs in the cluster (in-cluster config) or from a workstation (kubeconfig)."""
    from raytron.cluster.cli._common import err
    from raytron.serving.autoscale_k8s import KubernetesScaleConfig, run_autoscaler
    from raytron.serving.errors import AutoscaleConfigError

    if steps < 0:
        raise AutoscaleConfigError(f"`--steps` ({steps}): must be >= 0 (0 runs until SIGTERM)")
    if target_in_flight is None:
        target_in_flight = 4.0 if gateway_metrics_url else 0.0
    policy = autoscale_config(min_replicas=min_replicas, max_replicas=max_replicas, target_queue_compute=target_queue_compute,
                              target_in_flight=target_in_flight, tolerance=tolerance, scale_up_window_s=scale_up_window_s,
                              scale_down_window_s=scale_down_window_s, scale_up_policies=scale_up_policies,
                              scale_down_policies=scale_down_policies, scale_up_select=scale_up_select, scale_down_select=scale_down_select,
                              interval_s=interval_s, flags={"min_replicas": "--min-replicas", "max_replicas": "--max-replicas",
                                                            "interval_s": "--interval-s"})
    target = KubernetesScaleConfig(namespace=namespace, deployment=deployment, service=service, metrics_port=metrics_port,
                                   cluster_domain=cluster_domain, gateway_metrics_url=gateway_metrics_url, service_host=service_host)
    return run_autoscaler(policy, target, log=lambda line: err.print(line, markup=False, highlight=False), decisions_path=autoscale_log,
                          dry_run=dry_run, steps=steps)
