"""What the CLI's commands share: consoles, the `--address` option, and rendering."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.console import Console

#: Logs and machine-readable output go to stdout; status, progress and errors to stderr.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

AddressOption = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="Ray Jobs API address of a cluster, e.g. http://127.0.0.1:8265. Default: $RAY_ADDRESS, else the embedded local head.",
        show_default=False,
    ),
]

STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow", "RUNNING": "cyan", "PENDING": "blue"}


def styled_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def connect_verbose(address: str | None, *, start: bool = True):
    """`connect`, telling the user when (and why) a local head is being started."""
    from raytron.cluster.connection import connect

    return connect(address, start=start, on_start=lambda: err.print("[dim]raytron: no local Ray head is running; starting one on 127.0.0.1 (`raytron down` stops it)...[/]"))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_time(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))

