"""`raytron logs`: print (or follow) a job's logs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from raytron.cluster.cli._common import AddressOption

NAME = "logs"


def command(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's submission id (see `raytron jobs`).", show_default=False)],
    address: AddressOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until the job ends.")] = False,
) -> int:
    """Print a job's logs (stdout and stderr of its entrypoint, tracebacks included)."""
    from raytron.cluster.cli._common import connect_verbose
    from raytron.cluster.jobs import JobManager

    manager = JobManager(connect_verbose(address, start=False))
    if not follow:
        sys.stdout.write(manager.logs(job_id))
        return 0
    for event in manager.watch(job_id, max_interval_s=1.0):
        if event.log_text:
            sys.stdout.write(event.log_text)
            sys.stdout.flush()
    return 0
