"""`raytron jobs`: list the cluster's jobs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from raytron.cluster.cli._common import AddressOption

NAME = "jobs"


def command(
    address: AddressOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON (one array) instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many jobs, newest first.")] = 50,
) -> int:
    """List jobs on the cluster, newest first: id, name, kind, status, start time, duration."""
    from rich.table import Table

    from raytron.cluster.cli._common import connect_verbose, err, format_duration, format_time, out, styled_status
    from raytron.cluster.jobs import JobManager

    records = JobManager(connect_verbose(address, start=False)).list()[:limit]
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in records]))
        return 0
    if not records:
        err.print("no jobs yet; submit one with `raytron submit SPEC.yaml`")
        return 0
    table = Table("ID", "NAME", "KIND", "STATUS", "STARTED", "DURATION", box=None, header_style="bold")
    for r in records:
        table.add_row(r.submission_id, r.name or "-", r.kind or "-", styled_status(r.status), format_time(r.start_time_s), format_duration(r.duration_s))
    out.print(table)
    return 0
