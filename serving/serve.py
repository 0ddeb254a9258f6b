"""`raytron serve`: N local Triton replicas of a model repository behind the gateway, supervised.

Start-up: the repository is checked and its Python-backend twin derived once (see
`raytron.serving.triton`), the replicas start in parallel on free loopback ports, and the gateway
starts on the requested port once every replica is ready. While serving, a replica whose process
dies is replaced by a fresh one (the gateway has already taken it out of rotation through its
health checks, and retried the requests it failed on the others). Stopping (Ctrl-C, SIGTERM) drains:
the gateway stops accepting and finishes in-flight requests, then each replica gets SIGTERM.

With `autoscale` set (`raytron serve --autoscale MIN:MAX`), a control loop (`raytron.serving.autoscale`)
runs beside the supervisor: every `interval_s` it reads Triton's metrics of each replica and the
gateway's in-flight counts, steps the HPA policy, and starts replicas (each joins the gateway once
ready) or removes them: the gateway drains a replica first (new requests go elsewhere, its in-flight
ones finish), then it gets SIGTERM. The replica removed is the least loaded, the newest among equals.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raytron.serving.autoscale import AutoscaleConfig, Autoscaler, AutoscalePolicy
from raytron.serving.errors import AutoscaleConfigError, GatewayError, ReplicaError
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
    autoscale: AutoscaleConfig | None = None
    """Scale the replica count between its bounds (`replicas` is the initial count); None: a fixed count."""
    autoscale_log_path: Path | None = None
    """Append every autoscale decision to this file as one JSON line."""

    def __post_init__(self) -> None:
        self.repo = Path(self.repo)
        if self.replicas < 1 or self.replicas > 64:
            raise GatewayError(f"--replicas {self.replicas}: must be between 1 and 64")
        a = self.autoscale
        if a is not None:
            if a.max_replicas > 64:
                raise AutoscaleConfigError(f"--autoscale {a.min_replicas}:{a.max_replicas}: MAX must be at most 64")
            if not a.min_replicas <= self.replicas <= a.max_replicas:
                raise AutoscaleConfigError(f"--replicas {self.replicas}: with --autoscale {a.min_replicas}:{a.max_replicas} it is the initial "
                                           f"count and must lie within {a.min_replicas}-{a.max_replicas}")
        if self.autoscale_log_path is not None:
            if a is None:
                raise AutoscaleConfigError(f"--autoscale-log {self.autoscale_log_path}: needs --autoscale MIN:MAX")
            self.autoscale_log_path = Path(self.autoscale_log_path)
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
        self.autoscaler: Autoscaler | None = None
        self._next_index = 0
        self._lock = threading.Lock()
        # The supervisor (replacing dead replicas) and the autoscaler change `replicas`; one at a time.
        self._replicas_lock = threading.RLock()
        self._starting: list[Replica] = []
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
            if c.autoscale is not None:
                self.autoscaler = self._make_autoscaler(c.autoscale).start()
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
        with self._replicas_lock:
            return self._supervise()

    def _supervise(self) -> list[Replica]:
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

    # -- autoscaling: the Server is the local backend's ScaleTarget ------------------------------------------------

    def _make_autoscaler(self, config: AutoscaleConfig) -> Autoscaler:
        from raytron.serving.autoscale_metrics import LocalMetricsSource

        def replicas() -> list[tuple[str, str]]:
            with self._replicas_lock:
                return [(r.address, r.metrics_url) for r in self.replicas]

        def gateway_metrics() -> str:
            from prometheus_client import generate_latest

            # What the gateway's metrics endpoint would serve, read in-process (the endpoint may be off).
            return generate_latest(self.gateway.gateway.metrics.registry).decode()

        source = LocalMetricsSource(replicas, gateway_metrics)
        return Autoscaler(AutoscalePolicy(config), source, self, log=self.log, decisions_path=self.config.autoscale_log_path)

    def current_replicas(self) -> int:
        """Replicas serving now (the autoscaler's current count)."""
        with self._replicas_lock:
            return len(self.replicas)

    def scale_to(self, count: int) -> int:
        """Start or drain-and-stop replicas until there are `count`; returns the count reached.

        New replicas start in parallel and join the gateway once ready (one that fails to start is
        logged and left out). A removed replica leaves the gateway first, which waits up to
        `drain_timeout_s` for its in-flight requests, and then gets SIGTERM.
        """
        with self._replicas_lock:
            if count > len(self.replicas):
                self._add_replicas(count - len(self.replicas))
            elif count < len(self.replicas):
                self._remove_replicas(len(self.replicas) - count)
            return len(self.replicas)

    def _add_replicas(self, n: int) -> None:
        started = []
        for _ in range(n):
            replica = self._launch(wait=False)
            self._starting.append(replica)
            started.append(replica)
        for replica in started:
            try:
                replica.wait_ready(self.config.startup_timeout_s)
            except ReplicaError as exc:
                self.log(f"raytron: a replica added by the autoscaler failed to start: {exc}")
                replica.kill()
                continue
            finally:
                self._starting.remove(replica)
            self.replicas.append(replica)
            self.gateway.add_replica(replica.address)
            self.log(f"raytron: replica {replica.index} serving on {replica.address}")

    def _remove_replicas(self, n: int) -> None:
        load = {s.address: s.in_flight for s in self.gateway.replicas()}
        # The least loaded goes (it has the least to drain); among equals the newest, so long-lived replicas stay warm.
        victims = sorted(self.replicas, key=lambda r: (load.get(r.address, 0), -r.index))[:n]
        for replica in victims:
            self.replicas.remove(replica)
            self.gateway.remove_replica(replica.address, grace_s=self.config.drain_timeout_s)
            replica.terminate()
        for replica in victims:
            replica.stop(self.config.drain_timeout_s)
            self.log(f"raytron: replica {replica.index} ({replica.address}) drained and stopped")

    def stop(self) -> None:
        """Drain and stop the gateway, then every replica; remove the work directory."""
        if self.autoscaler is not None:
            self.autoscaler.request_stop()
            for replica in list(self._starting):  # a scale-up in progress ends at once (wait_ready sees the exit)
                replica.kill()
            self.autoscaler.stop()
            self.autoscaler = None
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
            if config.autoscale is not None:
                a = config.autoscale
                targets = ", ".join(f"{name} {value:g}" for name, value in a.targets().items())
                log(f"raytron: autoscaling {a.min_replicas}-{a.max_replicas} replicas every {a.interval_s:g} s (targets: {targets}; "
                    f"scale-up window {a.scale_up.stabilization_window_s:g} s, scale-down window {a.scale_down.stabilization_window_s:g} s)"
                    + (f"; decisions to {config.autoscale_log_path}" if config.autoscale_log_path else ""))
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
