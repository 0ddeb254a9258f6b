"""The embedded local Ray head: started on 127.0.0.1 with the Jobs API, found again, stopped by its own pid.

Every listener binds loopback: Ray on Linux replaces `--node-ip-address` with the machine's
external address and listens on all interfaces unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is in
its environment (measured with Ray 2.60; see shared/environment.md). That mode is single-node only,
which is what an embedded head is; a head meant to accept other nodes is started with `ray start`.

Token authentication is on, with a token private to `RAYTRON_HOME` (mode 0600), so other local
users cannot submit jobs to it. The head's state is `RAYTRON_HOME/head.json`, written atomically;
`stop_local_head` ends exactly the processes this head started (never `ray stop`, which kills every
Ray process on the machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from raytron.cluster.errors import HeadError
from raytron.cluster.storage import write_bytes_atomic, write_json_atomic

__all__ = ["LocalHeadConfig", "HeadInfo", "start_local_head", "find_local_head", "stop_local_head"]

_STATE_FILE = "head.json"
_TOKEN_FILE = "auth_token"
_LOG_FILE = "head.log"


@dataclass(frozen=True, kw_only=True)
class LocalHeadConfig:
    """How to start the embedded local head. Ports left as None are picked free on 127.0.0.1."""

    home: Path
    """Directory for the head's state file, auth token and log (`RAYTRON_HOME`)."""
    num_cpus: int | None = None
    """Logical CPUs the head offers (default: the machine's cores)."""
    num_gpus: int | None = None
    """GPUs the head offers (default: what Ray detects)."""
    dashboard_port: int | None = None
    """Port of the dashboard and Jobs API."""
    gcs_port: int | None = None
    """Port of the GCS (the address `ray.init` connects to)."""
    object_store_memory_bytes: int | None = None
    """Shared-memory object store size (default: Ray's, 30% of RAM)."""
    start_timeout_s: float = 90.0
    """How long to wait for the Jobs API to answer before giving up."""

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "num_cpus" else 0):
                raise HeadError(f"`{name}` ({value}) must be >= {1 if name == 'num_cpus' else 0}")
        for name in ("dashboard_port", "gcs_port"):
            value = getattr(self, name)
            if value is not None and not 1024 <= value <= 65535:
                raise HeadError(f"`{name}` ({value}) must be a port between 1024 and 65535")


@dataclass(frozen=True, kw_only=True)
class HeadInfo:
    """A running embedded head, as recorded in `RAYTRON_HOME/head.json`."""

    dashboard_url: str
    """Jobs API address, e.g. http://127.0.0.1:8265 (what `--address` and `RAY_ADDRESS` take)."""
    gcs_address: str
    """GCS address, what `ray.init(address=...)` takes."""
    pid: int
    """Pid of the `ray start --block` process that owns the head's processes."""
    temp_dir: str
    """Ray's temp dir for this head (sessions, logs, sockets)."""
    token_path: str
    """File holding the head's auth token."""
    log_path: str
    """The head's own stdout/stderr."""
    num_cpus: float
    started_at: float
    ray_version: str

    def auth_header(self) -> dict[str, str]:
        """The HTTP header that authenticates to this head's dashboard."""
        return {"Authorization": f"Bearer {Path(self.token_path).read_text().strip()}"}

    def env(self) -> dict[str, str]:
        """Environment for a Ray CLI or `ray.init` talking to this head (token auth on)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path, "RAY_ADDRESS": self.dashboard_url}


def find_local_head(home: Path) -> HeadInfo | None:
    """The embedded head recorded in `home`, if its process is alive; a stale record is removed."""
    state = Path(home) / _STATE_FILE
    try:
        info = HeadInfo(**json.loads(state.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        state.unlink(missing_ok=True)  # unreadable or from another version: not a head we can manage
        return None
    if not _is_head_process(info.pid, info.temp_dir):
        state.unlink(missing_ok=True)
        return None
    return info


def start_local_head(config: LocalHeadConfig) -> tuple[HeadInfo, bool]:
    """Start the embedded head unless one is already running in `config.home`.

    Returns:
        The head and whether this call started it.

    Raises:
        HeadError: Ray did not come up within `start_timeout_s`; the message holds the end of its log.
    """
    home = Path(config.home)
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        existing = find_local_head(home)
        if existing is not None:
            return existing, False
        return _start(config, home), True


def stop_local_head(home: Path, *, timeout_s: float = 20.0) -> HeadInfo | None:
    """Stop the embedded head recorded in `home` and every process it started.

    Sends SIGTERM to the `ray start --block` process (which shuts its children down), then SIGKILL
    to anything of this head still alive after `timeout_s`. Returns the head stopped, or None.
    """
    home = Path(home)
    with _locked(home):
        info = find_local_head(home)
        if info is None:
            return None
        _terminate(info.pid, info.temp_dir, timeout_s)
        (home / _STATE_FILE).unlink(missing_ok=True)
        # Ray's session dirs (logs, sockets, spilled objects) belong to this head alone.
        shutil.rmtree(info.temp_dir, ignore_errors=True)
        return info


# --------------------------------------------------------------------------- internals


def _start(config: LocalHeadConfig, home: Path) -> HeadInfo:
    token_path = home / _TOKEN_FILE
    if not token_path.exists():
        write_bytes_atomic(token_path, secrets.token_hex(32).encode(), mode=0o600)
    token_path.chmod(0o600)
    temp_dir = _temp_dir_for(home)
    ports = _free_ports(9)
    gcs_port = config.gcs_port or ports[0]
    dashboard_port = config.dashboard_port or ports[1]
    for name, port in (("gcs_port", gcs_port), ("dashboard_port", dashboard_port)):
        if not _port_free(port):
            raise HeadError(f"`{name}` {port} is already in use on 127.0.0.1; pick another with --dashboard-port, or omit it for a free one")
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(ports[2]),
        "--node-manager-port", str(ports[3]),
        "--object-manager-port", str(ports[4]),
        "--metrics-export-port", str(ports[5]),
        "--dashboard-agent-listen-port", str(ports[6]),
        "--dashboard-agent-grpc-port", str(ports[7]),
        "--runtime-env-agent-port", str(ports[8]),
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]
    if config.num_cpus is not None:
        cmd += ["--num-cpus", str(config.num_cpus)]
    if config.num_gpus is not None:
        cmd += ["--num-gpus", str(config.num_gpus)]
    if config.object_store_memory_bytes is not None:
        cmd += ["--object-store-memory", str(config.object_store_memory_bytes)]
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps every Ray listener on 127.0.0.1
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # Jobs run `python -m raytron.cluster.runner`: make `python` this interpreter even when the
        # user did not activate the virtual environment raytron is installed in.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.pop("RAY_ADDRESS", None)
    log_path = home / _LOG_FILE
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = HeadInfo(
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        pid=proc.pid,
        temp_dir=temp_dir,
        token_path=str(token_path),
        log_path=str(log_path),
        num_cpus=float(config.num_cpus or os.cpu_count() or 1),
        started_at=time.time(),
        ray_version=_ray_version(),
    )
    deadline = time.monotonic() + config.start_timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise HeadError(f"the local Ray head exited with code {code} while starting. End of {log_path}:\n{_tail(log_path)}")
        if _jobs_api_ready(info):
            break
        if time.monotonic() > deadline:
            _terminate(proc.pid, temp_dir, 10.0)
            raise HeadError(
                f"the local Ray head did not answer on {info.dashboard_url} within {config.start_timeout_s:.0f} s "
                f"(a slow or overloaded machine, or a port taken between choosing and binding it). "
                f"End of {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.1)
    write_json_atomic(home / _STATE_FILE, asdict(info))
    return info


def _jobs_api_ready(info: HeadInfo) -> bool:
    """The Jobs API answers and the head node has registered (before that, it offers no CPUs)."""
    request = urllib.request.Request(info.dashboard_url + "/api/v0/nodes", headers=info.auth_header())
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            nodes = json.loads(response.read()).get("data", {}).get("result", {}).get("result", [])
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(n.get("state") == "ALIVE" and n.get("resources_total", {}).get("CPU") for n in nodes)


def _terminate(pid: int, temp_dir: str, timeout_s: float) -> None:
    import psutil

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    try:
        owner = psutil.Process(pid)
        family = [owner, *owner.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    family += [p for p in ours() if p not in family]
    try:
        os.kill(pid, signal.SIGTERM)  # `ray start --block` shuts down what it started
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    # Anything left (a worker that ignored SIGTERM, a process that outlived its parent): kill it.
    alive += [p for p in ours() if p not in alive]
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _is_head_process(pid: int, temp_dir: str) -> bool:
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return temp_dir in cmdline


def _temp_dir_for(home: Path) -> str:
    # Ray puts Unix sockets under its temp dir, and socket paths are limited to 107 bytes, so the
    # temp dir is short and fixed per home rather than inside it.
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return f"/tmp/raytron-{os.getuid()}-{digest}"


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise start/stop across processes, so two `raytron submit` calls start one head."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "head.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
