"""`raytron serve`: N local Triton replicas of a model repository behind the gateway, supervised.

Start-up: the repository is checked and its Python-backend twin derived once (see
`raytron.serving.triton`), the replicas start in parallel on free loopback ports, and the gateway
starts on the requested port once every replica is ready. While serving, a replica whose process
dies is replaced by a fresh one (the gateway has already taken it out of rotation through its
health checks, and retried the requests it failed on the others). Stopping (Ctrl-C, SIGTERM) drains:
the gateway stops accepting and finishes in-flight requests, then each replica gets SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raytron.serving.errors import GatewayError, ReplicaError
from raytron.serving.modelconfig import list_models
from raytron.serving.triton import Replica, ReplicaConfig, derive_python_repository, find_triton, make_work_dir, remove_work_dir, start_replica

__all__ = ["ServeConfig", "Server", "serve_forever"]


@dataclass
class ServeConfig:
    """What `raytron serve` runs."""

    repo: Path
    replicas: int = 1
    port: int = 8001
    """Gateway gRPC port on `host` (8001 is Triton's own default gRPC port; 0 picks a free one)."""
    host: str = "127.0.0.1"
    token: str | None = None
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    metrics_port: int | None = None
    """Gateway's Prometheus port on 127.0.0.1 (None: off; 0: a free port)."""
    startup_timeout_s: float = 120.0
    drain_timeout_s: float = 10.0
    threads_per_instance: int = 1
    health_interval_s: float = 0.5
    supervise_interval_s: float = 1.0

    def __post_init__(self) -> None:
        self.repo = Path(self.repo)
        if self.replicas < 1 or self.replicas > 64:
            raise GatewayError(f"--replicas {self.replicas}: must be between 1 and 64")
        if not 0 <= self.port <= 65535:
            raise GatewayError(f"--port {self.port}: must be a TCP port (0-65535; 0 picks a free one)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise GatewayError(f"--metrics-port {self.metrics_port}: must be a TCP port (0-65535)")
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise GatewayError("--tls-cert and --tls-key go together: give both for TLS, or neither")


class Server:
    """Replicas plus gateway, started by `start()` and stopped (drained) by `stop()`."""

    def __init__(self, config: ServeConfig, *, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.work_dir = make_work_dir()
        self.replicas: list[Replica] = []
        self.gateway = None
        self._next_index = 0
        self._lock = threading.Lock()
        self.models = [m.name for m in list_models(config.repo)]

    def start(self) -> "Server":
        from raytron.serving.gateway import GatewayConfig, GatewayThread

        c = self.config
        try:
            install = find_triton()
            self._replica_config = ReplicaConfig(repo=c.repo, work_dir=self.work_dir, startup_timeout_s=c.startup_timeout_s,
                                                 stop_timeout_s=c.drain_timeout_s, threads_per_instance=c.threads_per_instance)
            derive_python_repository(c.repo, self.work_dir / "repository", threads_per_instance=c.threads_per_instance)
            self._install = install
            started = [self._launch(wait=False) for _ in range(c.replicas)]
            for replica in started:  # they start in parallel; wait for each in turn
                replica.wait_ready(c.startup_timeout_s)
            self.replicas = started
            self.gateway = GatewayThread(GatewayConfig(
                host=c.host, port=c.port, replicas=[r.address for r in self.replicas], token=c.token,
                tls_cert_path=c.tls_cert_path, tls_key_path=c.tls_key_path, metrics_port=c.metrics_port,
                health_interval_s=c.health_interval_s, production_repo=c.repo,
            ))
            self.gateway.__enter__()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, *, wait: bool) -> Replica:
        with self._lock:
            index = self._next_index
            self._next_index += 1
        return start_replica(self._replica_config, index, install=self._install, wait=wait)

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def metrics_port(self) -> int | None:
        return self.gateway.metrics_port

    def supervise_once(self) -> list[Replica]:
        """Replace every replica whose process has exited; returns the new ones."""
        replaced = []
        for old in [r for r in self.replicas if not r.alive()]:
            self.log(f"raytron: replica {old.index} ({old.address}) exited with code {old.process.returncode}; starting a replacement")
            self.gateway.remove_replica(old.address)
            self.replicas.remove(old)
            old.kill()  # its stubs, if any survived
            try:
                new = self._launch(wait=True)
            except ReplicaError as exc:
                self.log(f"raytron: the replacement failed to start: {exc}")
                continue
            self.replicas.append(new)
            self.gateway.add_replica(new.address)
            self.log(f"raytron: replica {new.index} serving on {new.address}")
            replaced.append(new)
        return replaced

    def stop(self) -> None:
        """Drain and stop the gateway, then every replica; remove the work directory."""
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
            self.gateway = None
        for replica in self.replicas:  # all drain at once, not one after the other
            replica.terminate()
        for replica in self.replicas:
            replica.stop(self.config.drain_timeout_s)
        self.replicas = []
        remove_work_dir(self.work_dir)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(config: ServeConfig, *, log: Callable[[str], None] = print) -> int:
    """Serve until SIGINT or SIGTERM, replacing replicas that die; then drain and stop everything."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Server(config, log=log) as server:
            scheme = "grpcs" if config.tls_cert_path else "grpc"
            log(f"raytron: serving {', '.join(server.models)} on {scheme}://{config.host}:{server.port} "
                f"({len(server.replicas)} Triton replica(s): {', '.join(r.address for r in server.replicas)})"
                + (f"; metrics on http://127.0.0.1:{server.metrics_port}/metrics" if server.metrics_port else "")
                + ("; bearer token required" if config.token else ""))
            log("raytron: Ctrl-C drains in-flight requests and stops")
            while not stop.wait(config.supervise_interval_s):
                server.supervise_once()
            log("raytron: draining and stopping")
            started = time.monotonic()
        log(f"raytron: stopped in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
