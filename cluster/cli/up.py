"""`raytron up`: start the embedded local Ray head."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

NAME = "up"


def command(
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", min=1, help="Logical CPUs the head offers (default: the machine's cores).")] = None,
    num_gpus: Annotated[Optional[int], typer.Option("--num-gpus", min=0, help="GPUs the head offers (default: what Ray detects).")] = None,
    dashboard_port: Annotated[Optional[int], typer.Option("--dashboard-port", min=1024, max=65535, help="Port of the dashboard / Jobs API (default: a free port).")] = None,
    object_store_memory_bytes: Annotated[Optional[int], typer.Option("--object-store-memory-bytes", min=78643200, help="Object store size in bytes (default: Ray's, 30% of RAM).")] = None,
) -> int:
    """Start a local Ray head on 127.0.0.1 with the Jobs API, print its address, and return.

    The head keeps running in the background until `raytron down`. Every Ray listener binds
    127.0.0.1 and the Jobs API requires a token kept in $RAYTRON_HOME (default ~/.raytron).
    """
    from raytron.cluster.cli._common import err, out
    from raytron.cluster.head import LocalHeadConfig, find_local_head, start_local_head
    from raytron.cluster.settings import Settings

    settings = Settings.from_env()
    config = LocalHeadConfig(home=settings.home, num_cpus=num_cpus, num_gpus=num_gpus, dashboard_port=dashboard_port, object_store_memory_bytes=object_store_memory_bytes)
    if find_local_head(settings.home) is None:
        err.print("[dim]starting a local Ray head on 127.0.0.1...[/]")
    head, started = start_local_head(config)
    if not started:
        err.print(f"a local Ray head is already running (pid {head.pid}); `raytron down` stops it")
    else:
        err.print(f"[green]local Ray head up[/] (pid {head.pid}, Ray {head.ray_version}, {head.num_cpus:g} CPUs); jobs: [bold]raytron submit SPEC.yaml[/]")
    out.print(head.dashboard_url)
    return 0
