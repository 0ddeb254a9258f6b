"""`raytron down`: stop the embedded local Ray head."""

from __future__ import annotations

from typing import Annotated

import typer

NAME = "down"


def command(
    timeout_s: Annotated[float, typer.Option("--timeout-s", min=1, help="Seconds to wait for a graceful stop before killing what is left.")] = 20.0,
) -> int:
    """Stop the local Ray head started by `raytron up` (or by `raytron submit`), and every process it started.

    Only this head's processes are stopped; other Ray clusters on the machine are left alone.
    """
    from raytron.cluster.cli._common import err
    from raytron.cluster.head import stop_local_head
    from raytron.cluster.settings import Settings

    settings = Settings.from_env()
    head = stop_local_head(settings.home, timeout_s=timeout_s)
    if head is None:
        err.print(f"no local Ray head is running (RAYTRON_HOME={settings.home})")
    else:
        err.print(f"[green]stopped[/] the local Ray head at {head.dashboard_url} (pid {head.pid})")
    return 0
