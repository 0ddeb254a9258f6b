"""`raytron serve`: local Triton replicas of a model repository behind the gRPC gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from raytron.cluster.cli.autoscaler import (
    DEFAULT_DOWN_POLICIES, DEFAULT_UP_POLICIES, AutoscaleLog, ScaleDownPolicies, ScaleDownSelect, ScaleUpPolicies, ScaleUpSelect, ScaleUpWindow,
    TargetInFlight, TargetQueueCompute, Tolerance,
)

NAME = "serve"


def command(
    repo: Annotated[Path, typer.Argument(metavar="REPO", help="A Triton model repository (ONNX and TorchScript models with config.pbtxt files).", show_default=False)],
    replicas: Annotated[int, typer.Option("--replicas", "-n", help="tritonserver processes behind the gateway (with --autoscale: the initial count).")] = 1,
    port: Annotated[int, typer.Option("--port", "-p", help="Gateway gRPC port (Triton's default 8001; 0 picks a free one).")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Gateway address. Loopback by default; 0.0.0.0 exposes it to the network (containers).")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option("--token", envvar="RAYTRON_SERVE_TOKEN", help="Require `authorization: Bearer TOKEN` on every call (env RAYTRON_SERVE_TOKEN).", show_default=False)] = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="PEM certificate: serve TLS (with --tls-key).", show_default=False)] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="PEM private key of --tls-cert.", show_default=False)] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve the gateway's Prometheus metrics on 127.0.0.1:PORT.", show_default=False)] = None,
    threads: Annotated[int, typer.Option("--threads-per-instance", help="Intra-op threads of each model instance.")] = 1,
    autoscale: Annotated[Optional[str], typer.Option("--autoscale", metavar="MIN:MAX", help="Scale the replicas between MIN and MAX like "
                                                     "Kubernetes' HPA, on queue/compute time and in-flight requests per replica.",
                                                     show_default=False)] = None,
    target_queue_compute: TargetQueueCompute = 1.0,
    target_in_flight: TargetInFlight = 4.0,
    tolerance: Tolerance = 0.1,
    scale_up_window_s: ScaleUpWindow = 2.0,
    scale_down_window_s: Annotated[float, typer.Option(
        "--scale-down-window-s", help="Scale down only to the largest recommendation of this many seconds (HPA's default is 300).")] = 30.0,
    scale_up_policies: ScaleUpPolicies = DEFAULT_UP_POLICIES,
    scale_down_policies: ScaleDownPolicies = DEFAULT_DOWN_POLICIES,
    scale_up_select: ScaleUpSelect = "Max",
    scale_down_select: ScaleDownSelect = "Max",
    autoscale_interval_s: Annotated[float, typer.Option("--autoscale-interval-s", help="Seconds between two autoscaler steps.")] = 1.0,
    autoscale_log: AutoscaleLog = None,
) -> int:
    """Serve REPO: start N local Triton replicas (explicit model control, 127.0.0.1 only) and the
    gateway, which speaks Triton's gRPC protocol, in front of them. Ctrl-C drains and stops everything.

    The bundled tritonserver has only the Python backend, so each model runs through a runner that
    executes the same ONNX or TorchScript file with the production config's tensors and batching.

    With --autoscale MIN:MAX the replica count follows the load (Kubernetes HPA semantics: tolerance,
    stabilization windows, rate limits); a replica is drained through the gateway before it stops.
    """
    from raytron.cluster.cli._common import err
    from raytron.cluster.cli.autoscaler import autoscale_config
    from raytron.serving.autoscale import parse_bounds
    from raytron.serving.serve import ServeConfig, serve_forever

    policy = None
    if autoscale is not None:
        low, high = parse_bounds(autoscale)
        policy = autoscale_config(min_replicas=low, max_replicas=high, target_queue_compute=target_queue_compute,
                                  target_in_flight=target_in_flight, tolerance=tolerance, scale_up_window_s=scale_up_window_s,
                                  scale_down_window_s=scale_down_window_s, scale_up_policies=scale_up_policies,
                                  scale_down_policies=scale_down_policies, scale_up_select=scale_up_select,
                                  scale_down_select=scale_down_select, interval_s=autoscale_interval_s,
                                  flags={"interval_s": "--autoscale-interval-s"})
    config = ServeConfig(repo=repo, replicas=replicas, port=port, host=host, token=token, tls_cert_path=tls_cert, tls_key_path=tls_key,
                         metrics_port=metrics_port, threads_per_instance=threads, autoscale=policy, autoscale_log_path=autoscale_log)
    return serve_forever(config, log=lambda line: err.print(line, markup=False, highlight=False))
