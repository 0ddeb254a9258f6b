"""`raytron stop`: stop a running job."""

from __future__ import annotations

from typing import Annotated

import typer

from raytron.cluster.cli._common import AddressOption

NAME = "stop"


def command(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's submission id (see `raytron jobs`).", show_default=False)],
    address: AddressOption = None,
    wait_s: Annotated[float, typer.Option("--wait-s", min=0, help="Seconds to wait for the job's processes to end.")] = 15.0,
) -> int:
    """Stop a job: SIGTERM to its processes, SIGKILL after Ray's grace period; waits until it is STOPPED."""
    from raytron.cluster.cli._common import connect_verbose, err, styled_status
    from raytron.cluster.jobs import JobManager

    manager = JobManager(connect_verbose(address, start=False))
    before = manager.get(job_id)
    record = manager.stop(job_id, wait_s=wait_s)
    if before.terminal:
        err.print(f"{job_id} had already ended: {styled_status(record.status)}")
        return 0
    if not record.terminal:
        err.print(f"[yellow]{job_id} is still {record.status} after {wait_s:g} s[/]; check again with `raytron jobs`")
        return 1
    err.print(f"{job_id} {styled_status(record.status)}")
    return 0
