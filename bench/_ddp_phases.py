"""Where a raytron training job's fixed time goes, read from the logs it leaves (best effort).

Two sources, both in wall-clock time (`time.time()`; the logs print local time):

- the job's own log, as `raytron submit --wait` prints it: Ray's logging lines carry their
  timestamps (runtime env set-up; the job driver's `ray.init` starting and connected);
- the head's session logs (`<temp_dir>/session_latest/logs`): each TrainWorker's core-worker log
  says when its process came up, when the actor's constructor finished and when it was killed; the
  job driver's says when it disconnected from Ray.

Ray's log formats are not an API: whatever cannot be found is left out, and nothing fails.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

__all__ = ["job_log_times", "ray_log_times"]

_PY_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+\w+ \S+ -- (.*)$")
_CORE_LOG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_JOB_LOG_EVENTS = {
    "runtime_env_setup": "Runtime env is setting up",
    "driver_ray_init": "Connecting to existing Ray cluster",
    "driver_connected": "Connected to Ray cluster",
}
# (phase, text in a TrainWorker's core-worker log, combine over the ranks)
_WORKER_EVENTS = [
    ("actor_processes_up", "Constructing CoreWorkerProcess", max),
    ("actors_ready", "Actor creation task finished", max),
    ("actors_killed", "Force kill actor request", max),
]


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def job_log_times(lines: list[str]) -> dict[str, float]:
    """Wall-clock times of the job-log lines in `_JOB_LOG_EVENTS` (first occurrence)."""
    found: dict[str, float] = {}
    for line in lines:
        m = _PY_LOG.match(line.strip())
        if not m:
            continue
        for phase, text in _JOB_LOG_EVENTS.items():
            if phase not in found and text in m.group(2):
                found[phase] = _stamp(m.group(1))
    return found


def ray_log_times(temp_dir: str | Path, since: float) -> dict[str, float]:
    """Wall-clock times of the TrainWorker actors and the job driver of the run launched at `since`.

    The run's TrainWorkers are those whose stdout file (`worker-<id>-<job>-<pid>.out`, first lines
    `:job_id:` and `:actor_name:TrainWorker`) was written after `since`; runs are sequential.
    """
    logs = Path(temp_dir) / "session_latest" / "logs"
    found: dict[str, float] = {}
    per_worker: dict[str, list[float]] = {}
    job_id = None
    try:
        outs = [p for p in logs.glob("worker-*.out") if p.stat().st_mtime >= since]
    except OSError:
        return found
    for out in outs:
        try:
            head = out.read_text(errors="replace")[:200]
        except OSError:
            continue
        if ":actor_name:TrainWorker" not in head:
            continue
        worker_id, job, pid = out.stem.split("-")[1:4]
        job_id = job
        core = logs / f"python-core-worker-{worker_id}_{pid}.log"
        for phase, text in _first_times(core, [t for _, t, _ in _WORKER_EVENTS]).items():
            per_worker.setdefault(phase, []).append(text)
    for phase, text, combine in _WORKER_EVENTS:
        if per_worker.get(text):
            found[phase] = combine(per_worker[text])
    if job_id:
        for driver in logs.glob(f"python-core-driver-{job_id}*.log"):
            times = _first_times(driver, ["Destructing CoreWorkerProcessImpl"])
            if times:
                found["driver_ray_shutdown"] = next(iter(times.values()))
    return found


def _first_times(path: Path, texts: list[str]) -> dict[str, float]:
    """For each text, the timestamp of the first core-log line holding it."""
    found: dict[str, float] = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                for text in texts:
                    if text not in found and text in line and (m := _CORE_LOG.match(line)):
                        found[text] = _stamp(m.group(1))
    except OSError:
        pass
    return found
