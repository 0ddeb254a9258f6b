"""Submitting, watching, listing and stopping raytron jobs through the Ray Jobs API.

`JobManager` is the SDK; the CLI's `submit`, `jobs`, `logs`, `stop` and `status` are thin views
over it. A job's entrypoint is always `python -m raytron.cluster.runner`, with the validated spec in
its environment and the raytron package shipped as `py_modules`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raytron.cluster.connection import Cluster
from raytron.cluster.errors import ClusterError, JobNotFound, SpecError, SpecProblem
from raytron.cluster.runner import SPEC_CLASS_ENV, SPEC_JSON_ENV, SUBMISSION_ID_ENV
from raytron.cluster.settings import Settings
from raytron.cluster.spec import JobSpec

__all__ = ["JobManager", "JobRecord", "JobEvent", "NodeInfo", "ClusterResources", "TERMINAL_STATUSES", "ENTRYPOINT"]

ENTRYPOINT = "python -m raytron.cluster.runner"
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_META_PREFIX = "raytron."


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """One job as the cluster reports it."""

    submission_id: str
    status: str
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    name: str = ""
    kind: str = ""
    message: str = ""
    error_type: str | None = None
    start_time_s: float | None = None
    end_time_s: float | None = None
    driver_exit_code: int | None = None
    entrypoint: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration_s(self) -> float | None:
        if self.start_time_s is None:
            return None
        return (self.end_time_s or time.time()) - self.start_time_s


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """What `JobManager.watch` yields: new log text, or a status change (or both)."""

    record: JobRecord
    status_changed: bool
    log_text: str = ""


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    node_id: str
    ip: str
    is_head: bool
    state: str
    cpus: float
    gpus: float
    memory_bytes: float


@dataclass(frozen=True, kw_only=True)
class ClusterResources:
    """Nodes and logical resource use of a cluster."""

    nodes: list[NodeInfo]
    used: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    as_of_s: float | None = None
    """When Ray's monitor computed `used` (epoch seconds); it refreshes every few seconds."""

    def free(self, resource: str) -> float:
        return self.total.get(resource, 0.0) - self.used.get(resource, 0.0)

    def largest_node(self, resource: str) -> float:
        return max((getattr(n, resource) for n in self.nodes if n.state == "ALIVE"), default=0.0)


class JobManager:
    """Submit and manage raytron jobs on one cluster.

    Example:
        >>> from raytron.cluster import connect, load_spec, JobManager
        >>> jobs = JobManager(connect())
        >>> job_id = jobs.submit(load_spec("examples/hello.yaml"))
        >>> jobs.wait(job_id).status
        'SUCCEEDED'
    """

    def __init__(self, cluster: Cluster, *, settings: Settings | None = None):
        self.cluster = cluster
        self._settings = settings or Settings.from_env()
        self._client = cluster.job_client()

    # ------------------------------------------------------------------ submit

    def check_fits(self, spec: JobSpec, resources: ClusterResources | None = None) -> list[SpecProblem]:
        """Problems that make the spec impossible to place on this cluster (empty if it fits)."""
        resources = resources or self.resources()
        problems: list[SpecProblem] = []
        if not any(n.state == "ALIVE" for n in resources.nodes):
            return problems  # a cluster still starting (or scaling from zero): let Ray queue the job
        r = spec.resources
        driver = dict(zip(("CPU", "GPU"), spec.entrypoint_resources()))  # what the job's own process holds (e.g. an RL learner)
        for attr, key, field_name in (("cpus", "CPU", "cpus_per_worker"), ("gpus", "GPU", "gpus_per_worker")):
            per_worker = getattr(r, field_name)
            largest = resources.largest_node(attr)
            total = resources.total.get(key, 0.0)
            need = per_worker * r.num_workers + driver[key]
            if per_worker > largest:
                problems.append(SpecProblem(
                    f"resources.{field_name}", f"no node of the cluster at {self.cluster.address} has that many {key}s (the largest has {largest:g}); lower it or add a bigger node", per_worker))
            elif need > total:
                plus = f" + {driver[key]:g} {key} for the job's driver" if driver[key] else ""
                problems.append(SpecProblem(
                    "resources.num_workers",
                    f"{r.num_workers} workers x {per_worker:g} {key}{plus} = {need:g} {key}, but the cluster has {total:g} in all; "
                    f"lower `resources.num_workers` or `resources.{field_name}`",
                    r.num_workers))
        return problems

    def prepare(self, spec: JobSpec, *, submission_id: str | None = None) -> dict[str, Any]:
        """The exact `submit_job` arguments for `spec` (what `submit` sends; `ray job submit` can send it too)."""
        from raytron.cluster._packaging import staged_package

        submission_id = submission_id or f"{spec.name}-{secrets.token_hex(4)}"
        env = dict(spec.runtime.env)
        env[SPEC_JSON_ENV] = spec.to_json()
        env[SPEC_CLASS_ENV] = f"{type(spec).__module__}:{type(spec).__qualname__}"
        env[SUBMISSION_ID_ENV] = submission_id
        runtime_env: dict[str, Any] = {"env_vars": env, "py_modules": [str(staged_package(self._settings.home / "py_modules"))]}
        if spec.runtime.working_dir:
            runtime_env["working_dir"] = spec.runtime.working_dir
        cpus, gpus = spec.entrypoint_resources()
        return {
            "entrypoint": ENTRYPOINT,
            "submission_id": submission_id,
            "runtime_env": runtime_env,
            "metadata": {f"{_META_PREFIX}name": spec.name, f"{_META_PREFIX}kind": spec.kind},
            "entrypoint_num_cpus": cpus or None,
            "entrypoint_num_gpus": gpus or None,
        }

    def submit(self, spec: JobSpec, *, submission_id: str | None = None, check_resources: bool = True) -> str:
        """Submit a validated spec; returns the submission id.

        Raises:
            SpecError: the spec asks for more than the cluster has (nothing is submitted).
            ClusterError: the Jobs API refused the job.
        """
        if check_resources:
            problems = self.check_fits(spec)
            if problems:
                raise SpecError(problems, source=f"spec {spec.name!r}")
        kwargs = self.prepare(spec, submission_id=submission_id)
        try:
            return self._client.submit_job(**kwargs)
        except RuntimeError as exc:  # Ray wraps HTTP errors (duplicate id, bad runtime_env) in RuntimeError
            raise ClusterError(f"the Jobs API at {self.cluster.address} refused job {kwargs['submission_id']!r}: {exc}") from None

    # ------------------------------------------------------------------ observe

    def get(self, submission_id: str) -> JobRecord:
        """The job's current record.

        Raises:
            JobNotFound: no such job on this cluster.
        """
        try:
            info = self._client.get_job_info(submission_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                raise JobNotFound(f"no job {submission_id!r} on {self.cluster.address}; `raytron jobs` lists them") from None
            raise
        return _record(info)

    def list(self) -> list[JobRecord]:
        """Every submitted job on the cluster, newest first."""
        records = [_record(i) for i in self._client.list_jobs() if i.submission_id]
        return sorted(records, key=lambda r: r.start_time_s or 0.0, reverse=True)

    def logs(self, submission_id: str) -> str:
        """The job's whole log so far."""
        self.get(submission_id)  # a clear JobNotFound rather than Ray's HTTP error
        return self._client.get_job_logs(submission_id)

    def watch(self, submission_id: str, *, interval_s: float = 0.1, fast_for_s: float = 3.0, max_interval_s: float = 1.0) -> Iterator[JobEvent]:
        """Yield status changes and new log text until the job ends (see `_Backoff` for the pace).

        The last event carries the terminal status, and every log line the job wrote.
        """
        printed = 0
        last_status = None
        pace = _Backoff(interval_s, fast_for_s, max_interval_s)
        while True:
            record = self.get(submission_id)
            text = self._client.get_job_logs(submission_id) if record.status != "PENDING" else ""
            new = text[printed:]
            printed = max(printed, len(text))
            changed = record.status != last_status
            last_status = record.status
            if new or changed:
                yield JobEvent(record=record, status_changed=changed, log_text=new)
            if record.terminal:
                return
            pace.sleep()

    def wait(self, submission_id: str, *, timeout_s: float | None = None) -> JobRecord:
        """Block until the job ends (or `timeout_s` passes) and return its record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pace = _Backoff(0.1, 3.0, 1.0)
        while True:
            record = self.get(submission_id)
            if record.terminal or (deadline is not None and time.monotonic() > deadline):
                return record
            pace.sleep()

    # ------------------------------------------------------------------ control

    def stop(self, submission_id: str, *, wait_s: float = 15.0) -> JobRecord:
        """Stop the job and wait until the cluster reports it ended (its processes are gone).

        Ray sends SIGTERM to the job's process tree, then SIGKILL after `RAY_JOB_STOP_WAIT_TIME_S`.
        """
        record = self.get(submission_id)
        if record.terminal:
            return record
        self._client.stop_job(submission_id)
        return self.wait(submission_id, timeout_s=wait_s)

    def resources(self) -> ClusterResources:
        """Nodes and resource usage, from the dashboard's cluster-status and node endpoints."""
        # JobSubmissionClient has no public call for these; `_do_request` adds the same auth
        # headers and error handling as its public methods do.
        nodes_json = self._client._do_request("GET", "/api/v0/nodes").json()
        status_json = self._client._do_request("GET", "/api/cluster_status").json()
        nodes = []
        for n in nodes_json.get("data", {}).get("result", {}).get("result", []):
            total = n.get("resources_total", {})
            nodes.append(NodeInfo(
                node_id=n["node_id"], ip=n.get("node_ip", ""), is_head=bool(n.get("is_head_node")), state=n.get("state", "?"),
                cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)), memory_bytes=float(total.get("memory", 0)),
            ))
        cluster_status = status_json.get("data", {}).get("clusterStatus") or {}
        usage = (cluster_status.get("loadMetricsReport") or {}).get("usage") or {}
        used = {k: float(v[0]) for k, v in usage.items()}
        total = {k: float(v[1]) for k, v in usage.items()}
        if not total:  # no autoscaler report yet: totals from the live nodes
            alive = [n for n in nodes if n.state == "ALIVE"]
            total = {"CPU": sum(n.cpus for n in alive), "GPU": sum(n.gpus for n in alive), "memory": sum(n.memory_bytes for n in alive)}
        return ClusterResources(nodes=nodes, used=used, total=total, as_of_s=cluster_status.get("time"))


class _Backoff:
    """The pace of polling a job: every `interval_s` for the first `fast_for_s` seconds (a short job
    is over in about a second, and every interval is latency the user waits), then slowing by 25% a
    poll up to `max_interval_s`. Each poll costs the dashboard CPU, which on a small machine is taken
    from the job itself (bench ddp measured 0.15 cores at 10 polls/s), so new output does not bring
    the fast pace back."""

    def __init__(self, interval_s: float, fast_for_s: float, max_interval_s: float):
        self.delay, self.max_interval_s = interval_s, max_interval_s
        self.fast_until = time.monotonic() + fast_for_s

    def sleep(self) -> None:
        time.sleep(self.delay)
        if time.monotonic() > self.fast_until:
            self.delay = min(self.max_interval_s, self.delay * 1.25)


def _record(info: Any) -> JobRecord:
    meta = info.metadata or {}
    status = info.status.value if hasattr(info.status, "value") else str(info.status)
    return JobRecord(
        submission_id=info.submission_id or info.job_id or "",
        status=status,
        name=meta.get(f"{_META_PREFIX}name", ""),
        kind=meta.get(f"{_META_PREFIX}kind", ""),
        message=info.message or "",
        error_type=str(info.error_type) if info.error_type else None,
        start_time_s=info.start_time / 1000 if info.start_time else None,
        end_time_s=info.end_time / 1000 if info.end_time else None,
        driver_exit_code=info.driver_exit_code,
        entrypoint=info.entrypoint or "",
    )
