"""`raytron status`: the cluster's nodes, resources and running jobs."""

from __future__ import annotations

import time

from raytron.cluster.cli._common import AddressOption

NAME = "status"


def command(address: AddressOption = None) -> int:
    """Show the cluster's nodes, CPUs/GPUs/memory used and free, and its running jobs."""
    from rich.table import Table

    from raytron.cluster.cli._common import connect_verbose, err, format_duration, out, styled_status
    from raytron.cluster.jobs import JobManager

    cluster = connect_verbose(address, start=False)
    manager = JobManager(cluster)
    res = manager.resources()
    where = f"local head (pid {cluster.head.pid}, Ray {cluster.head.ray_version})" if cluster.head else "cluster"
    out.print(f"[bold]{where}[/] at {cluster.address}")
    nodes = Table("NODE", "IP", "ROLE", "STATE", "CPUS", "GPUS", "MEMORY", box=None, header_style="bold")
    for n in res.nodes:
        nodes.add_row(n.node_id[:12], n.ip, "head" if n.is_head else "worker", n.state, f"{n.cpus:g}", f"{n.gpus:g}", _gib(n.memory_bytes))
    out.print(nodes)
    usage = Table("RESOURCE", "USED", "FREE", "TOTAL", box=None, header_style="bold")
    for key, label, fmt in (("CPU", "CPU", "{:g}"), ("GPU", "GPU", "{:g}"), ("memory", "memory", None), ("objectStoreMemory", "object store", None)):
        total = res.total.get(key, 0.0)
        if key == "GPU" and total == 0:
            usage.add_row(label, "-", "-", "0")
            continue
        used = res.used.get(key, 0.0)
        cells = [fmt.format(v) if fmt else _gib(v) for v in (used, total - used, total)]
        usage.add_row(label, *cells)
    out.print(usage)
    if res.as_of_s is not None:
        err.print(f"[dim]resource use as Ray's monitor saw it {max(0.0, time.time() - res.as_of_s):.1f} s ago[/]")
    running = [r for r in manager.list() if r.status in ("PENDING", "RUNNING")]
    if not running:
        err.print("no running jobs")
        return 0
    jobs = Table("JOB", "NAME", "KIND", "STATUS", "ELAPSED", box=None, header_style="bold")
    for r in running:
        jobs.add_row(r.submission_id, r.name or "-", r.kind or "-", styled_status(r.status), format_duration(r.duration_s))
    out.print(jobs)
    return 0


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"
