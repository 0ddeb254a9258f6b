"""`raytron serve`: local Triton replicas of a model repository behind the gRPC gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "serve"


def command(
    repo: Annotated[Path, typer.Argument(metavar="REPO", help="A Triton model repository (ONNX and TorchScript models with config.pbtxt files).", show_default=False)],
    replicas: Annotated[int, typer.Option("--replicas", "-n", help="tritonserver processes behind the gateway.")] = 1,
    port: Annotated[int, typer.Option("--port", "-p", help="Gateway gRPC port (Triton's default 8001; 0 picks a free one).")] = 8001,
    host: Annotated[str, typer.Option("--host", help="Gateway address. Loopback by default; 0.0.0.0 exposes it to the network (containers).")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option("--token", envvar="RAYTRON_SERVE_TOKEN", help="Require `authorization: Bearer TOKEN` on every call (env RAYTRON_SERVE_TOKEN).", show_default=False)] = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="PEM certificate: serve TLS (with --tls-key).", show_default=False)] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="PEM private key of --tls-cert.", show_default=False)] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve the gateway's Prometheus metrics on 127.0.0.1:PORT.", show_default=False)] = None,
    threads: Annotated[int, typer.Option("--threads-per-instance", help="Intra-op threads of each model instance.")] = 1,
) -> int:
    """Serve REPO: start N local Triton replicas (explicit model control, 127.0.0.1 only) and the
    gateway, which speaks Triton's gRPC protocol, in front of them. Ctrl-C drains and stops everything.

    The bundled tritonserver has only the Python backend, so each model runs through a runner that
    executes the same ONNX or TorchScript file with the production config's tensors and batching.
    """
    from raytron.cluster.cli._common import err
    from raytron.serving.serve import ServeConfig, serve_forever

    config = ServeConfig(repo=repo, replicas=replicas, port=port, host=host, token=token, tls_cert_path=tls_cert, tls_key_path=tls_key,
                         metrics_port=metrics_port, threads_per_instance=threads)
    return serve_forever(config, log=lambda line: err.print(line, markup=False, highlight=False))
