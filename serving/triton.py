"""Local Triton replicas: `tritonserver` processes on 127.0.0.1 serving a model repository.

The server is the real `tritonserver` binary bundled in the nvidia-pytriton wheel. That build has
only the Python backend, so a production repository (ONNX Runtime and libtorch models with standard
config.pbtxt files) is served through a *derived* repository: each model keeps its config (tensor
names, dtypes, dims, max_batch_size, dynamic batching, instance count) with `backend: "python"`, and
each version directory links the real model file and `raytron/serving/_triton_runner.py` as
`model.py`, which runs the file with onnxruntime or torch. What clients see (ModelMetadata,
ModelConfig tensors, batching) is the production config's.

Every replica runs in explicit model-control mode with every model loaded at start, listens on
127.0.0.1 only (gRPC and metrics; HTTP off), and lives in its own process group so that stopping it
also stops its Python-backend stubs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from raytron.serving.errors import ModelRepositoryError, ReplicaError
from raytron.serving.modelconfig import PLATFORM_FILES, list_models, write_model_config

__all__ = ["TritonInstall", "find_triton", "derive_python_repository", "ReplicaConfig", "Replica", "start_replica", "free_port", "server_ready", "make_work_dir", "remove_work_dir"]

_RUNNER = Path(__file__).with_name("_triton_runner.py")


@dataclass(frozen=True)
class TritonInstall:
    """Where the bundled server and its Python backend live."""

    server: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path
    libs: Path

    def environment(self) -> dict[str, str]:
        """Environment for `tritonserver` and its Python stubs.

        The stub links libpython3.X; the interpreter's own LIBDIR must come first or an older
        system copy is found (every model then fails with an `_thread.RLock` error). The stub's
        embedded interpreter ignores PYTHONPATH and takes its prefix from the first `python3` on PATH,
        so this interpreter's bin directory goes first: with a virtualenv's `python3` found there, the
        stub gets the virtualenv's site-packages (numpy, onnxruntime, torch), as nvidia-pytriton does.
        """
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = ":".join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
        return env


def find_triton() -> TritonInstall:
    """The `tritonserver` of the installed nvidia-pytriton wheel, with the stub for this Python."""
    try:
        import pytriton
    except ImportError:
        raise ReplicaError("nvidia-pytriton is not installed; it provides the local tritonserver (`pip install -e .` installs it)") from None
    root = Path(pytriton.__file__).parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        server=root / "tritonserver" / "bin" / "tritonserver",
        backend_lib=root / "tritonserver" / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "tritonserver" / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
    )
    for what in ("server", "backend_lib", "backend_utils", "stub"):
        if not getattr(install, what).exists():
            raise ReplicaError(f"the nvidia-pytriton wheel lacks {getattr(install, what)} (Python {version}); reinstall nvidia-pytriton==0.7.0")
    return install


def _backend_directory(install: TritonInstall, work_dir: Path) -> Path:
    """`<work>/backends/python/` with the backend library, its utils and the stub for this Python."""
    python = work_dir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (install.backend_lib, install.backend_utils, install.stub):
        link = python / src.name
        if not link.exists():
            link.symlink_to(src)
    return work_dir / "backends"


def derive_python_repository(repo: str | Path, out_dir: str | Path, *, threads_per_instance: int = 1) -> Path:
    """Write the Python-backend twin of a production repository under `out_dir` (see the module doc).

    Raises:
        ModelRepositoryError: the repository has no models, a model's platform is not ONNX or
            TorchScript, or a version lacks its model file.
    """
    out = Path(out_dir)
    models = list_models(repo)
    if not models:
        raise ModelRepositoryError(f"{repo} holds no models (directories with a config.pbtxt); `raytron export` writes one")
    for model in models:
        if model.platform not in PLATFORM_FILES:
            raise ModelRepositoryError(f"{model.path}/config.pbtxt: platform {model.platform!r} cannot be served locally; "
                                       f"the local launcher serves {', '.join(PLATFORM_FILES)} (production Triton serves the rest)")
        if not model.versions:
            raise ModelRepositoryError(f"{model.path} has no version directories (1/, 2/, ...)")
        config = type(model.config)()
        config.CopyFrom(model.config)
        config.ClearField("platform")
        config.backend = "python"
        config.ClearField("default_model_filename")
        for group in config.instance_group:
            group.kind = group.KIND_CPU  # this server has no GPU backend; production keeps KIND_GPU
            group.ClearField("gpus")
        file_name = model.model_file(model.versions[0]).name
        config.parameters["raytron_platform"].string_value = model.platform
        config.parameters["raytron_model_file"].string_value = file_name
        config.parameters["raytron_threads"].string_value = str(threads_per_instance)
        target = out / model.name
        target.mkdir(parents=True, exist_ok=True)
        write_model_config(target / "config.pbtxt", config)
        for version in model.versions:
            source = model.model_file(version)
            if not source.exists():
                raise ModelRepositoryError(f"{source} is missing: version {version} of {model.name} has no {file_name}")
            vdir = target / str(version)
            vdir.mkdir(exist_ok=True)
            for link, src in ((vdir / "model.py", _RUNNER), (vdir / file_name, source.resolve())):
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(src)
    return out


def server_ready(address: str, timeout_s: float = 2.0) -> bool:
    """Whether a KServe v2 gRPC server (Triton, the gateway, `raytron serve`) at `address` answers ServerReady; False when not listening yet."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    try:
        return client.is_server_ready(client_timeout=timeout_s)
    except Exception:  # noqa: BLE001 - not listening yet, or starting
        return False
    finally:
        client.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ReplicaConfig:
    """How to run local replicas of one repository."""

    repo: Path
    work_dir: Path
    """Derived repository, backend links and replica logs live here."""
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    """Time a replica has to finish in-flight requests after SIGTERM before it is killed."""
    threads_per_instance: int = 1
    log_verbose: int = 0

    def __post_init__(self) -> None:
        self.repo, self.work_dir = Path(self.repo), Path(self.work_dir)
        if self.startup_timeout_s <= 0 or self.stop_timeout_s < 0:
            raise ValueError("startup_timeout_s must be > 0 and stop_timeout_s >= 0")


@dataclass
class Replica:
    """One running `tritonserver`."""

    index: int
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server answers ServerReady (every model loaded), or raise ReplicaError."""
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.address)
        try:
            while True:
                if not self.alive():
                    raise ReplicaError(f"replica {self.index} (tritonserver on {self.address}) exited with code {self.process.returncode} "
                                       f"while starting; log {self.log_path}:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise ReplicaError(f"replica {self.index} was not ready within {timeout_s:g} s (`startup_timeout_s`); log {self.log_path}:\n{self.log_tail()}")
                time.sleep(0.1)
        finally:
            client.close()

    def terminate(self) -> None:
        """Ask the server to finish in-flight requests and exit (SIGTERM); `stop` waits for it."""
        if self.alive():
            _signal_group(self.process, signal.SIGTERM)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL of the whole process group."""
        # Named while the server is up: once it has exited its stubs are no longer its children, and
        # the group's SIGKILL below may catch a stub before it removed its region.
        regions = _shm_regions(self.process.pid) if self.alive() else []
        if self.alive():
            self.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        _remove_regions(regions)

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crash, as far as clients can tell).

        A graceful stop lets Triton remove the stubs' shared-memory regions; after a kill they would
        stay in /dev/shm (1 MiB and more each), so they are removed here by the names the stubs carry
        in their command lines.
        """
        regions = _shm_regions(self.process.pid) if self.alive() else []
        _signal_group(self.process, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _remove_regions(regions)


def _remove_regions(names: list[str]) -> None:
    for name in names:
        for path in Path("/dev/shm").glob(f"{name}*"):
            path.unlink(missing_ok=True)


def _shm_regions(pid: int) -> list[str]:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    names = []
    for child in children:
        try:
            names += [a for a in child.cmdline() if a.startswith("triton_python_backend_shm_region_")]
        except psutil.Error:
            continue
    return names


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the server leads its own group; its stubs are in it
    except ProcessLookupError:
        pass


def start_replica(config: ReplicaConfig, index: int, *, install: TritonInstall | None = None, wait: bool = True) -> Replica:
    """Start replica `index` of `config.repo` on free loopback ports; wait until it is ready unless `wait=False`."""
    install = install or find_triton()
    derived = config.work_dir / "repository"
    if not derived.is_dir():
        derive_python_repository(config.repo, derived, threads_per_instance=config.threads_per_instance)
    backends = _backend_directory(install, config.work_dir)
    log_path = config.work_dir / f"replica-{index}.log"
    grpc_port, metrics_port = free_port(), free_port()
    cmd = [
        str(install.server), "--model-repository", str(derived), "--backend-directory", str(backends),
        "--model-control-mode", "explicit", "--load-model", "*", "--strict-model-config", "true",
        "--allow-http", "false", "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--allow-metrics", "true", "--allow-gpu-metrics", "false", "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
        "--exit-on-error", "true", "--strict-readiness", "true", "--exit-timeout-secs", str(max(1, int(config.stop_timeout_s))),
        "--log-verbose", str(config.log_verbose),
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=install.environment(),
                                   start_new_session=True, cwd=config.work_dir)
    replica = Replica(index=index, grpc_port=grpc_port, metrics_port=metrics_port, process=process, log_path=log_path)
    if wait:
        replica.wait_ready(config.startup_timeout_s)
    return replica


def make_work_dir(prefix: str = "raytron-serve-") -> Path:
    """A private temporary folder for a launcher (short path: the stubs open Unix sockets in /dev/shm, not here)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
