"""`raytron submit`: validate a spec, submit it, and optionally follow it to the end."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from raytron.cluster.cli._common import AddressOption

NAME = "submit"


def command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="The job spec (YAML).", show_default=False)],
    address: AddressOption = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY.PATH=VALUE", help="Override a spec field before validation, e.g. --set resources.num_workers=2 (repeatable; values are YAML).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job: live status, its logs, and exit 0 only if it SUCCEEDED.")] = False,
    submission_id: Annotated[Optional[str], typer.Option("--id", help="Submission id to use (default: NAME-<8 hex>).")] = None,
) -> int:
    """Validate SPEC.yaml, submit it to the cluster through the Ray Jobs API, and print the job id.

    Nothing is submitted unless the whole spec is valid and fits the cluster (exit 2 otherwise).
    With --wait, exits 0 if the job SUCCEEDED and 1 if it FAILED or was STOPPED.
    """
    from raytron.cluster.cli._common import connect_verbose, err, out
    from raytron.cluster.jobs import JobManager
    from raytron.cluster.spec import load_spec

    t0 = time.monotonic()
    spec = load_spec(spec_path, overrides or ())
    cluster = connect_verbose(address)
    manager = JobManager(cluster)
    job_id = manager.submit(spec, submission_id=submission_id)
    if not wait:
        out.print(job_id)
        err.print(f"[dim]submitted to {cluster.address}; follow with `raytron logs {job_id} --follow`[/]")
        return 0
    err.print(f"[dim]raytron: submitted {job_id} to {cluster.address}[/]")
    return follow(manager, job_id, t0)


def follow(manager, job_id: str, t0: float) -> int:
    """Stream the job's logs to stdout with a status line on stderr; exit code from the final status."""
    from raytron.cluster.cli._common import err, format_duration, styled_status
    from raytron.cluster.cli._progress import JobLine

    # On a terminal: a live status line, with a step bar once the job prints `raytron: step N/TOTAL`.
    record = None
    try:
        with JobLine(err, job_id) if err.is_terminal else nullcontext() as line:
            for event in manager.watch(job_id):
                record = event.record
                if event.log_text:
                    sys.stdout.write(event.log_text)
                    sys.stdout.flush()
                    if line is not None:
                        line.feed(event.log_text)
                elapsed = format_duration(time.monotonic() - t0)
                if line is not None:
                    line.status(styled_status(record.status), elapsed)
                elif event.status_changed and not record.terminal:
                    err.print(f"raytron: {job_id} {record.status} ({elapsed})")
    except KeyboardInterrupt:
        err.print(f"\n[yellow]stopped following[/]; the job keeps running. `raytron stop {job_id}` stops it.")
        return 130
    elapsed = format_duration(time.monotonic() - t0)
    if record.status == "SUCCEEDED":
        err.print(f"[green]✔[/] {job_id} {styled_status(record.status)} in {elapsed}")
        return 0
    # Ray's failure message repeats the last 20,000 characters of the log, already streamed above.
    first_line = record.message.strip().splitlines()[0] if record.message.strip() else ""
    detail = f": {first_line.rstrip(',:')}" if first_line else ""
    err.print(f"[red]✘[/] {job_id} {styled_status(record.status)} after {elapsed}{detail}")
    if record.status == "FAILED":
        err.print(f"[dim]the error is in the log above; `raytron logs {job_id}` shows it again[/]")
    return 1
