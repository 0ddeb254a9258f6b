"""The `serving` theme's targets: how each is started, loaded, accounted for and stopped.

- `onnxruntime`: no server; the load process calls the session itself (the floor).
- `Triton (direct)`: one local replica, `raytron.serving.triton.start_replica`.
- `gateway + Triton`: raytron's gateway (a thread of this process) in front of that same replica.
- `Ray Serve`: `_serving_rayserve.py` in a private network namespace; its load process joins that
  namespace with `nsenter --net`, so nothing of Ray Serve is reachable from, or bound in, ours.

Each target lists the processes whose CPU it costs (`pids()`), so a cell can report how many cores
the server side used during its timed window.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _serving_model import ServingModel

BENCH = Path(__file__).resolve().parent
ONNXRUNTIME, TRITON, GATEWAY, RAY_SERVE = "onnxruntime (in-process)", "Triton (direct)", "gateway + Triton", "Ray Serve"
_READY = "RAYSERVE_READY "


@dataclass
class Target:
    """One thing the load process is pointed at."""

    name: str
    address: str | None = None
    """host:port of its gRPC endpoint (None: the in-process floor)."""
    netns_pid: int | None = None
    """A process in the network namespace the load process must join (Ray Serve)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Start-up facts recorded in the results (start-up time, answer check, isolation check)."""

    def pids(self) -> set[int]:
        """Processes doing this target's serving work (their CPU counts as the server's)."""
        return set()

    def stop(self) -> None:
        """Stop what was started for this target (idempotent)."""


# --------------------------------------------------------------------------- Triton and the gateway


class TritonTarget(Target):
    def __init__(self, replica: Any, work_dir: Path, startup_s: float) -> None:
        super().__init__(name=TRITON, address=replica.address, info={"startup_s": round(startup_s, 2), "log": str(replica.log_path)})
        self.replica, self.work_dir = replica, work_dir
        self._group: set[int] = set()

    def pids(self) -> set[int]:
        if not self._group or not all(_alive(p) for p in self._group):
            self._group = _process_group(self.replica.process.pid)  # tritonserver and its Python-backend stub
        return self._group

    def stop(self) -> None:
        from raytron.serving.triton import remove_work_dir

        self.replica.stop(10.0)
        remove_work_dir(self.work_dir)


def start_triton_target(model: ServingModel) -> TritonTarget:
    from raytron.serving.triton import ReplicaConfig, make_work_dir, remove_work_dir, start_replica

    work_dir = make_work_dir("raytron-bench-serving-")
    t0 = time.monotonic()
    try:
        replica = start_replica(ReplicaConfig(repo=model.repo, work_dir=work_dir), 0)
    except BaseException:
        remove_work_dir(work_dir)
        raise
    return TritonTarget(replica, work_dir, time.monotonic() - t0)


class GatewayTarget(Target):
    def __init__(self, gateway: Any, triton: TritonTarget, startup_s: float, api: str) -> None:
        super().__init__(name=GATEWAY, address=f"127.0.0.1:{gateway.port}", info={"startup_s": round(startup_s, 2), "api": api})
        self.gateway, self.triton = gateway, triton

    def pids(self) -> set[int]:
        return {os.getpid()} | self.triton.pids()  # the gateway is a thread of this process

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
            self.gateway = None


class GatewayUnavailable(RuntimeError):
    """raytron.serving.gateway is not there (yet): the gateway target is left out."""


def start_gateway_target(triton: TritonTarget, model: ServingModel) -> GatewayTarget:
    """raytron's gateway in front of `triton`'s replica, as `raytron serve` runs it (GatewayThread)."""
    try:
        from raytron.serving.gateway import GatewayConfig, GatewayThread
    except ImportError as exc:
        raise GatewayUnavailable(f"raytron.serving.gateway cannot be imported ({exc}); the gateway target is not measured") from exc
    t0 = time.monotonic()
    # The planned API (serving/serve.py uses the same): a config, and a thread wrapper used as a context manager.
    gateway = GatewayThread(GatewayConfig(host="127.0.0.1", port=0, replicas=[triton.address], token=None, metrics_port=None,
                                          production_repo=model.repo))
    gateway.__enter__()
    return GatewayTarget(gateway, triton, time.monotonic() - t0, api="GatewayThread(GatewayConfig(host='127.0.0.1', port=0, replicas=[replica]))")


# --------------------------------------------------------------------------- Ray Serve


class RayServeTarget(Target):
    def __init__(self, proc: subprocess.Popen, work: Path, info: dict[str, Any]) -> None:
        super().__init__(name=RAY_SERVE, address=info.get("address"), netns_pid=proc.pid, info=info)
        self.proc, self.work = proc, work
        self._known: set[int] = {proc.pid}

    def pids(self) -> set[int]:
        self._known |= _tree(self.proc.pid)
        return {p for p in self._known if _alive(p)}

    def check_isolation(self) -> dict[str, Any]:
        """Every Ray Serve process is in the private namespace and none listens in ours."""
        import psutil

        pids = self.pids()
        ours = os.readlink("/proc/self/ns/net")
        outside = sorted(p for p in pids if _netns(p) not in (None, self.info.get("netns")))
        host_listeners = sorted(f"{c.laddr.ip}:{c.laddr.port} (pid {c.pid})" for c in psutil.net_connections("inet")
                                if c.status == psutil.CONN_LISTEN and c.pid in pids)
        inside = subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", "ss", "-ltnH"], capture_output=True, text=True, timeout=20)
        listen = sorted({line.split()[3] for line in inside.stdout.splitlines() if len(line.split()) > 3})
        return {"host_netns": ours, "private_netns": self.info.get("netns"), "processes": len(pids),
                "processes_outside_private_netns": outside, "listening_in_host_netns": host_listeners,
                "listening_in_private_netns": listen, "ok": not outside and not host_listeners and self.info.get("netns") != ours}

    def stop(self, *, keep_work: bool = False) -> None:
        if self.proc is None:
            return
        pids = self.pids()
        try:
            self.proc.stdin.close()  # the driver shuts Serve and Ray down when its stdin closes
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _signal_group(self.proc.pid, signal.SIGKILL)
        for pid in sorted(p for p in pids if _alive(p)):  # Ray daemons run in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None
        if not keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


def start_rayserve_target(model: ServingModel, *, max_batching: bool, timeout_s: float) -> RayServeTarget:
    """Start `_serving_rayserve.py` under `unshare -n` with private Ray/home folders; wait for its ready line.

    The folders live in a short /tmp path of their own: Ray's Unix sockets sit under RAY_TMPDIR and
    their paths may not exceed 107 bytes (`validate_socket_filepath`).
    """
    work = Path(tempfile.mkdtemp(prefix="rtsb-", dir="/tmp"))
    for sub in ("home", "ray"):
        (work / sub).mkdir(exist_ok=True)
    config = {
        "work_dir": str(work), "num_cpus": os.cpu_count() or 2, "http_port": 8000, "grpc_port": 9000,  # the namespace is ours alone
        "max_ongoing_requests": 64, "model_path": str(model.onnx_path), "reference": str(model.reference_path),
        "max_batch_size": model.max_batch_size if max_batching else 1, "batch_wait_s": model.batch_delay_us / 1e6 if max_batching else 0.0,
    }
    env = dict(os.environ, HOME=str(work / "home"), RAY_TMPDIR=str(work / "ray"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # a private local Ray, never someone's cluster
    script = f"ip link set lo up && exec {_q(sys.executable)} {_q(str(BENCH / '_serving_rayserve.py'))} {_q(json.dumps(config))}"
    t0 = time.monotonic()
    with open(work / "driver.log", "wb") as log:
        proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                env=env, cwd=work, start_new_session=True)
    target_info: dict[str, Any] = {}
    reader = threading.Thread(target=_read_ready, args=(proc, target_info), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not target_info.get("address"):
        try:
            code = proc.wait(timeout=5)  # its stdout closed: it is exiting
            reason = f"exited with code {code}"
        except subprocess.TimeoutExpired:
            reason = f"was not ready within {timeout_s:g} s (`--rayserve-startup-timeout-s`)"
        RayServeTarget(proc, work, target_info).stop(keep_work=True)  # the log stays for the reader
        tail = (work / "driver.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"the Ray Serve baseline {reason}; the end of its log ({work / 'driver.log'}, kept):\n" + "\n".join(tail))
    target_info["startup_s"] = round(time.monotonic() - t0, 2)
    target_info["netns"] = _netns(proc.pid)
    target_info["config"] = {k: v for k, v in config.items() if k not in ("model_path", "reference", "work_dir")}
    return RayServeTarget(proc, work, target_info)


def _read_ready(proc: subprocess.Popen, out: dict[str, Any]) -> None:
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if line.startswith(_READY):
            out.update(json.loads(line[len(_READY):]))
            return


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --------------------------------------------------------------------------- processes and CPU


def cpu_seconds(pids: set[int]) -> dict[int, float]:
    """user + system CPU seconds of each live process in `pids`."""
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `cpu_seconds` snapshots (a process new since `before` counts whole)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _tree(pid: int) -> set[int]:
    import psutil

    try:
        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _process_group(pgid: int) -> set[int]:
    import psutil

    found = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.add(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
