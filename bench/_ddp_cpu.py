"""Who used the machine's CPUs while a job trained: the training ranks, and everything else.

On 2 cores two training ranks want both cores; any other process running at the same time (Ray's
dashboard answering a CLI's polls, the GCS, a log monitor, another user's tests) takes CPU from
them, and a DDP step waits for the slower rank. `CpuSampler` snapshots every process's CPU time
every `interval_s` in a background thread; `usage(t0, t1)` splits the CPU seconds spent between
the snapshots nearest to t0 and t1 into ranks and the rest.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

__all__ = ["CpuSampler"]

# A process is a training rank when its command line (the title Ray gives it) or its name holds one
# of these: raytron's actor (ray::TrainWorker.train), Ray Train's worker actor (ray::RayTrainWorker...),
# the torchrun script. A name is cut at 15 characters (ray::TrainWorke, ray::RayTrainWo), and a
# command line Ray is rewriting reads empty, so a pid seen as a rank once counts as one throughout.
_RANK_MARKERS = ("TrainWorke", "RayTrainWo", "_ddp_torchrun_train.py")


class CpuSampler:
    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self._snaps: list[tuple[float, dict[int, tuple[float, bool, str]]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CpuSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            snap: dict[int, tuple[float, bool, str]] = {}
            for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
                try:
                    ct = proc.info["cpu_times"]
                    if ct is None:
                        continue
                    name = proc.info["name"] or "?"
                    label = (" ".join(proc.info["cmdline"] or []) or name).strip()
                    snap[proc.info["pid"]] = (ct.user + ct.system, any(m in label or m in name for m in _RANK_MARKERS), label[:80])
                except (psutil.Error, TypeError):
                    continue
            self._snaps.append((time.time(), snap))
            self._stop.wait(self.interval_s)

    def usage(self, t0: float, t1: float) -> dict[str, Any] | None:
        """CPU seconds of the ranks and of all other processes between the snapshots nearest t0 and t1."""
        if len(self._snaps) < 2:
            return None
        a = min(self._snaps, key=lambda s: abs(s[0] - t0))
        b = min(self._snaps, key=lambda s: abs(s[0] - t1))
        span = b[0] - a[0]
        if span <= 0:
            return None
        ranks = other = 0.0
        top: dict[str, float] = {}
        rank_pids = {pid for t, snap in self._snaps if a[0] <= t <= b[0] for pid, (_, is_rank, _) in snap.items() if is_rank}
        for pid, (cpu, _, label) in b[1].items():
            is_rank = pid in rank_pids
            before = a[1].get(pid)
            used = cpu - (before[0] if before else 0.0)  # a process started in between counts whole
            if used <= 0:
                continue
            if is_rank:
                ranks += used
            else:
                other += used
                top[label] = top.get(label, 0.0) + used
        busiest = sorted(top.items(), key=lambda kv: -kv[1])[:5]
        return {"span_s": span, "ranks_cpu_s": ranks, "other_cpu_s": other, "other_cores": other / span,
                "busiest_other": {k: round(v, 3) for k, v in busiest}}
