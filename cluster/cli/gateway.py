"""`raytron gateway`: the gateway alone, in front of Triton replicas it is given or finds through DNS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "gateway"


def command(
    replica: Annotated[Optional[list[str]], typer.Option("--replica", help="A Triton replica's gRPC address HOST:PORT (repeatable).",
                                                         show_default=False)] = None,
    replicas_dns: Annotated[Optional[str], typer.Option("--replicas-dns", help="HOST:PORT of a DNS name whose every address is a replica "
                                                                               "(Kubernetes: the Triton headless Service).", show_default=False)] = None,
    dns_refresh_s: Annotated[float, typer.Option("--dns-refresh-s", help="Seconds between resolutions of --replicas-dns.")] = 5.0,
    dns_family: Annotated[str, typer.Option("--dns-family", help="Addresses --replicas-dns contributes: ipv4, ipv6 or any.")] = "ipv4",
    port: Annotated[int, typer.Option("--port", "-p", help="gRPC port (0 picks a free one).")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 in a container.")] = "127.0.0.1",
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on --metrics-host:PORT.",
                                                        show_default=False)] = None,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="Address of the metrics endpoint.")] = "127.0.0.1",
    production_repo: Annotated[Optional[Path], typer.Option("--production-repo", help="Production model repository whose config.pbtxt files "
                                                                                      "clients see (default: the replicas' own).", show_default=False)] = None,
    token: Annotated[Optional[str], typer.Option("--token", envvar="RAYTRON_SERVE_TOKEN", help="Require `authorization: Bearer TOKEN` "
                                                                                             "(env RAYTRON_SERVE_TOKEN).", show_default=False)] = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="PEM certificate: serve TLS (with --tls-key).", show_default=False)] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="PEM private key of --tls-cert.", show_default=False)] = None,
    drain_timeout_s: Annotated[float, typer.Option("--drain-timeout-s", help="On Ctrl-C/SIGTERM, how long in-flight requests may finish.")] = 10.0,
) -> int:
    """Run the gateway alone (Triton's gRPC protocol, per-request balancing) in front of --replica
    addresses and/or every address of --replicas-dns, re-resolved as replicas come and go.
    Ctrl-C or SIGTERM stops accepting, drains in-flight requests, and exits.
    """
    import logging
    import signal
    import threading

    from raytron.cluster.cli._common import err
    from raytron.serving.errors import GatewayError
    from raytron.serving.gateway import GatewayConfig, GatewayThread

    if not replica and replicas_dns is None:
        raise GatewayError("no replicas: give `--replica HOST:PORT` (repeatable) and/or `--replicas-dns HOST:PORT`")
    config = GatewayConfig(host=host, port=port, replicas=tuple(replica or ()), replicas_dns=replicas_dns, dns_refresh_s=dns_refresh_s,
                           dns_family=dns_family, metrics_port=metrics_port, metrics_host=metrics_host, production_repo=production_repo,
                           token=token, tls_cert_path=tls_cert, tls_key_path=tls_key)
    # Replicas joining and leaving are the gateway's log; in a pod it is all `kubectl logs` shows.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with GatewayThread(config) as gateway:
            sources = [*config.replicas, *([f"every address of {replicas_dns}"] if replicas_dns else [])]
            err.print(f"raytron: gateway on {'grpcs' if tls_cert else 'grpc'}://{host}:{gateway.port} in front of {'; '.join(sources)}"
                      + (f"; metrics on http://{metrics_host}:{gateway.metrics_port}/metrics" if gateway.metrics_port else ""), markup=False)
            stop.wait()
            err.print("raytron: draining and stopping", markup=False)
            gateway.stop(grace_s=drain_timeout_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
