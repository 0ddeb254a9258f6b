"""The gateway: one gRPC endpoint that speaks Triton's protocol (KServe v2) in front of N Triton replicas.

Unmodified tritonclient code (sync, callback, asyncio, streaming) works against it. It balances each
*request* to the replica with the fewest requests in flight (ties round-robin), takes replicas that
fail ServerReady out of rotation and puts them back when they answer again, retries a request that
found its replica UNAVAILABLE on another one within the caller's deadline, and rejects bad requests
itself with Triton's own status code and message (`raytron.serving.validation`). ModelInfer is
forwarded as raw bytes both ways.

Discovery: besides fixed `replicas`, `replicas_dns` names a DNS name whose every address is a replica
(in Kubernetes, the Triton headless Service, whose answer lists the ready pods). It is resolved every
`dns_refresh_s`; addresses that appear join the pool (and the rotation at their first good probe),
addresses that disappear are drained and removed. A failed lookup keeps the pool as it was.

Security: an optional bearer token (`authorization: Bearer <token>` metadata, compared in constant
time) guards every `inference.GRPCInferenceService` method. The standard `grpc.health.v1.Health`
service answers without it, so that Kubernetes gRPC probes (which cannot send headers) work; it
reports SERVING while at least one replica is ready. TLS is on when a certificate and key are given.

Not proxied: shared-memory registration and status, TraceSetting and LogSettings answer UNIMPLEMENTED
(see `raytron.serving._gateway_service`). Retries assume inference is idempotent, which holds for
stateless models; sequence (stateful) models need every request of a sequence on one replica, which
a per-request balancer does not give.

Example:
    >>> config = GatewayConfig(replicas=["127.0.0.1:8001", "127.0.0.1:8011"], metrics_port=0)
    >>> with GatewayThread(config) as gateway:
    ...     client = tritonclient.grpc.InferenceServerClient(gateway.address)
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from raytron.serving._gateway_service import SERVICE, InferenceService
from raytron.serving.balancer import HealthChange, HealthChecker, ReplicaPool, ReplicaSlot
from raytron.serving.errors import GatewayError, ModelRepositoryError
from raytron.serving.gateway_metrics import GatewayMetrics
from raytron.serving.model_catalog import ModelCatalog

__all__ = ["GatewayConfig", "Gateway", "GatewayThread", "ReplicaStatus", "MAX_MESSAGE_BYTES", "resolve_addresses"]

log = logging.getLogger(__name__)

#: tritonclient's gRPC message-size limit, both ways (INT32_MAX).
MAX_MESSAGE_BYTES = 2**31 - 1
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_MAX_METADATA_BYTES = 4 << 20
# Model states that do not take a live replica out of rotation (see Gateway._probe); "" is a model never loaded.
_IN_TRANSITION = frozenset({"READY", "LOADING", "UNLOADING", ""})
_COMPRESSION = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}
_DNS_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "any": socket.AF_UNSPEC}
# getaddrinfo's "this name has no addresses" answers: a headless Service with no ready pod answers so.
_NO_ADDRESSES = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

#: Resolves (host, port, family) to IP addresses; `resolve_addresses` by default, injectable for tests.
Resolver = Callable[[str, int, str], Iterable[str]]


def resolve_addresses(host: str, port: int, family: str = "ipv4") -> list[str]:
    """Every address `host` resolves to (getaddrinfo, `family` one of ipv4, ipv6, any), sorted; [] when it has none.

    Raises:
        OSError: the lookup itself failed (resolver unreachable, timeout): the caller keeps what it had.
    """
    try:
        infos = socket.getaddrinfo(host, port, family=_DNS_FAMILIES[family], type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_ADDRESSES:
            return []
        raise
    return sorted({info[4][0] for info in infos})


def _join(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _address_problem(address) -> str | None:
    if not isinstance(address, str):
        return "must be a string HOST:PORT"
    match = _ADDRESS.match(address)
    if match is None:
        return "must be HOST:PORT (e.g. 127.0.0.1:8001, [::1]:8001)"
    if not 1 <= int(match.group(2)) <= 65535:
        return "port must be within 1-65535"
    return None


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """How to run one gateway. Validated at construction (GatewayError names the field, the value and what is allowed)."""

    host: str = "127.0.0.1"
    """Address the gRPC endpoint listens on; `0.0.0.0` or `[::]` to accept other hosts."""
    port: int = 0
    """gRPC port; 0 picks a free one (read it back from `Gateway.port`)."""
    replicas: tuple[str, ...] = ()
    """Triton replicas' gRPC addresses, HOST:PORT; more can be added later with `Gateway.add_replica`."""
    replicas_dns: str | None = None
    """HOST:PORT of a DNS name whose every address is a replica on PORT (Kubernetes: the Triton headless Service,
    e.g. triton-headless.raytron.svc:8001); re-resolved every `dns_refresh_s`. None: only `replicas`."""
    dns_refresh_s: float = 5.0
    """Seconds between resolutions of `replicas_dns`."""
    dns_family: str = "ipv4"
    """Addresses `replicas_dns` contributes: ipv4 (Triton listens on 0.0.0.0 by default), ipv6, or any."""
    token: str | None = None
    """Bearer token clients must send as `authorization: Bearer <token>`; None accepts every client."""
    tls_cert_path: Path | None = None
    """PEM certificate chain for TLS; give `tls_key_path` too, or neither for plaintext."""
    tls_key_path: Path | None = None
    """PEM private key for `tls_cert_path`."""
    metrics_port: int | None = None
    """Prometheus metrics port on `metrics_host`; None turns the endpoint off, 0 picks a free port."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint listens on."""
    health_interval_s: float = 1.0
    """Time between ServerReady probes of every replica."""
    health_timeout_s: float = 1.0
    """How long one probe waits before the replica counts as not ready."""
    production_repo: Path | None = None
    """Production model repository whose config.pbtxt files clients see through ModelConfig/ModelMetadata
    (instead of the local Python-backend twin's); None serves the replicas' own answers."""
    max_send_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest message the gateway sends (to clients and replicas); tritonclient's default."""
    max_receive_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest message the gateway accepts (from clients and replicas); tritonclient's default."""
    response_compression: str = "none"
    """Compression of the gateway's responses: none, gzip or deflate (only used where the client accepts it,
    as Triton's `--grpc-infer-response-compression-level`)."""
    stream_window: int = 64
    """Requests of one ModelStreamInfer stream forwarded at once; the gateway reads further requests as answers go out."""

    def __post_init__(self) -> None:
        problems: list[str] = []

        def bad(name: str, value, allowed: str) -> None:
            problems.append(f"`{name}` ({value!r}): {allowed}")

        def port_ok(value, allow_none: bool) -> bool:
            return (value is None and allow_none) or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535)

        for name in ("host", "metrics_host"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad(name, getattr(self, name), "must be a non-empty host name or IP address")
        if not port_ok(self.port, False):
            bad("port", self.port, "must be an integer within 0-65535 (0 picks a free port)")
        if not port_ok(self.metrics_port, True):
            bad("metrics_port", self.metrics_port, "must be None (no metrics endpoint) or an integer within 0-65535 (0 picks a free port)")
        replicas = (self.replicas,) if isinstance(self.replicas, str) else tuple(self.replicas or ())
        object.__setattr__(self, "replicas", replicas)
        for i, address in enumerate(replicas):
            problem = _address_problem(address)
            if problem:
                bad(f"replicas[{i}]", address, problem)
        if len(set(replicas)) != len(replicas):
            bad("replicas", list(replicas), "lists a replica twice")
        if self.replicas_dns is not None and _address_problem(self.replicas_dns):
            bad("replicas_dns", self.replicas_dns, f"{_address_problem(self.replicas_dns)}, or None")
        if isinstance(self.dns_refresh_s, bool) or not isinstance(self.dns_refresh_s, (int, float)) or not self.dns_refresh_s > 0:
            bad("dns_refresh_s", self.dns_refresh_s, "must be a number of seconds > 0")
        if self.dns_family not in _DNS_FAMILIES:
            bad("dns_family", self.dns_family, f"must be one of {', '.join(_DNS_FAMILIES)}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token
                                       or any(not (0x21 <= ord(c) <= 0x7E) for c in self.token)):
            problems.append("`token`: must be None or a non-empty string of printable ASCII without spaces (gRPC metadata values)")
        for name in ("tls_cert_path", "tls_key_path", "production_repo"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            bad("tls_cert_path" if self.tls_key_path is None else "tls_key_path", self.tls_cert_path or self.tls_key_path,
                "TLS needs both `tls_cert_path` and `tls_key_path` (or neither, for plaintext)")
        for name in ("tls_cert_path", "tls_key_path"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                bad(name, str(value), "is not a readable file")
        if self.production_repo is not None and not self.production_repo.is_dir():
            bad("production_repo", str(self.production_repo), "is not a directory (the production model repository, or None)")
        for name in ("health_interval_s", "health_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                bad(name, value, "must be a number of seconds > 0")
        for name in ("max_send_message_bytes", "max_receive_message_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MESSAGE_BYTES:
                bad(name, value, f"must be an integer within 1-{MAX_MESSAGE_BYTES} (gRPC's limit)")
        if self.response_compression not in _COMPRESSION:
            bad("response_compression", self.response_compression, f"must be one of {', '.join(_COMPRESSION)}")
        if isinstance(self.stream_window, bool) or not isinstance(self.stream_window, int) or self.stream_window < 1:
            bad("stream_window", self.stream_window, "must be an integer >= 1")
        if problems:
            raise GatewayError("invalid gateway configuration: " + "; ".join(problems))

    def message_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_send_message_length", self.max_send_message_bytes), ("grpc.max_receive_message_length", self.max_receive_message_bytes)]


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica as the gateway sees it."""

    address: str
    healthy: bool
    in_flight: int
    requests_total: int
    last_error: str = ""


@dataclass
class _Running:
    server: object
    health_task: asyncio.Task
    health_service: object
    metrics_http: object | None = None
    tasks: set = field(default_factory=set)


class Gateway:
    """The gateway on the running asyncio event loop.

    Args:
        config: the validated configuration.
        resolver: resolves `config.replicas_dns` (default `resolve_addresses`; it blocks, so it runs in the loop's executor).

    Example:
        >>> gateway = Gateway(GatewayConfig(replicas=["127.0.0.1:8001"]))
        >>> await gateway.start()
        >>> await gateway.add_replica("127.0.0.1:8011")
        >>> await gateway.stop(grace_s=5)
    """

    def __init__(self, config: GatewayConfig, *, resolver: Resolver = resolve_addresses):
        self.config = config
        self.resolver = resolver
        # Replicas that `replicas_dns` added, and so may remove: fixed `replicas` are never removed by DNS.
        self._dns_members: set[str] = set()
        self._dns_empty = False  # to warn once when the answer becomes empty, not at every refresh
        self._dns_task: asyncio.Task | None = None
        self.pool = ReplicaPool(self._channel)
        self.catalog = ModelCatalog(config.production_repo)
        self.metrics = GatewayMetrics(self.pool)
        self.health = HealthChecker(self.pool, self._probe, interval_s=config.health_interval_s, on_change=self._health_changed)
        self._port: int | None = None
        self._metrics_port: int | None = None
        self._running: _Running | None = None
        self._refreshing: asyncio.Future | None = None

    # -- properties --------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The gRPC port the gateway listens on (after `start`)."""
        if self._port is None:
            raise GatewayError("the gateway is not started; `await gateway.start()` first")
        return self._port

    @property
    def address(self) -> str:
        """HOST:PORT for clients (after `start`)."""
        host = self.config.host
        return _join("127.0.0.1" if host in ("0.0.0.0", "[::]", "::") else host, self.port)

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus port (after `start`), or None when `metrics_port` is None."""
        return self._metrics_port

    def replicas(self) -> list[ReplicaStatus]:
        """Every replica with its health and load."""
        return [ReplicaStatus(s.address, s.healthy, s.outstanding, s.requests_total, s.last_error) for s in self.pool]

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe the replicas, load the model catalog, and start serving.

        Raises:
            GatewayError: the port is taken, the TLS files or the production repository are unreadable.
        """
        if self._running is not None:
            raise GatewayError("the gateway is already started")
        config = self.config
        try:
            self.catalog.load_production()
        except ModelRepositoryError as exc:
            raise GatewayError(f"`production_repo`: {exc}") from None
        credentials = self._credentials()
        for address in config.replicas:
            self.pool.add(address)
        try:
            if config.replicas_dns is not None:
                await self.sync_dns(probe=False)  # the first answer joins the start-up probe below
            await self._start_serving(credentials)
            if config.replicas_dns is not None:
                self._dns_task = asyncio.ensure_future(self._discover())
        except BaseException:
            for slot in list(self.pool):
                self.pool.remove(slot.address)
                await slot.channel.close()
            raise

    async def _start_serving(self, credentials) -> None:
        config = self.config
        await self.health.step()
        if self.pool.any_healthy():
            await self._refresh_quietly()
        else:
            log.warning("no replica is ready yet (%s); the gateway starts anyway and answers UNAVAILABLE until one is",
                        ", ".join(config.replicas) or "none configured")

        service = InferenceService(pool=self.pool, health=self.health, catalog=self.catalog, metrics=self.metrics, token=config.token,
                                   refresh_models=self.refresh_models, health_interval_s=config.health_interval_s,
                                   stream_window=config.stream_window)
        server = grpc.aio.server(options=[*config.message_options(), ("grpc.so_reuseport", 0)],
                                 compression=_COMPRESSION[config.response_compression])
        server.add_generic_rpc_handlers((service.handler(),))
        health_service = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
        bind = _join(config.host, config.port)
        try:
            port = server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
        except RuntimeError as exc:
            port, reason = 0, str(exc).split(";")[0]
        else:
            reason = "gRPC returned port 0"
        if not port:
            await server.stop(None)
            raise GatewayError(f"the gateway cannot listen on {bind} (`host`, `port`): {reason}; the port may be in use: choose another "
                               "`port`, or 0 for a free one")
        self._port = port
        await server.start()
        self._running = _Running(server=server, health_task=asyncio.ensure_future(self.health.run()), health_service=health_service)
        await self._publish_health()
        if config.metrics_port is not None:
            try:
                self._running.metrics_http = self._start_metrics(config.metrics_host, config.metrics_port)
            except GatewayError:
                await self.stop(0)
                raise
        log.info("gateway listening on %s (%s, %s) in front of %d replica(s)%s", self.address, "TLS" if credentials else "plaintext",
                 "bearer token" if config.token else "no token", len(self.pool),
                 f"; metrics on http://{config.metrics_host}:{self._metrics_port}/metrics" if self._metrics_port else "")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting requests, let in-flight ones finish for up to `grace_s`, then close every channel."""
        running, self._running = self._running, None
        if running is None:
            return
        dns_task, self._dns_task = self._dns_task, None
        if dns_task is not None:  # first, so that no replica joins while the others close
            dns_task.cancel()
            await asyncio.gather(dns_task, return_exceptions=True)
        running.health_task.cancel()
        await running.server.stop(grace_s)
        if running.metrics_http is not None:
            await asyncio.get_running_loop().run_in_executor(None, _shutdown_http, running.metrics_http)
        for slot in list(self.pool):
            self.pool.remove(slot.address)
            await slot.channel.close()
        pending = [running.health_task, *running.tasks, *([self._refreshing] if self._refreshing else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def add_replica(self, address: str) -> bool:
        """Add a replica and probe it at once; True if it is ready (in rotation) now.

        A replica that is not ready yet joins the rotation at the first probe it passes.

        Raises:
            GatewayError: the address is malformed or already in the pool.
        """
        problem = _address_problem(address)
        if problem:
            raise GatewayError(f"replica address {address!r}: {problem}")
        if self.pool.get(address) is not None:
            raise GatewayError(f"replica {address} is already behind this gateway")
        slot = self.pool.add(address)
        await self.health.check([slot])
        return slot.healthy

    async def remove_replica(self, address: str, *, grace_s: float = 5.0) -> None:
        """Take a replica out of the pool; its in-flight requests get up to `grace_s` to finish before its channel closes.

        Raises:
            GatewayError: no such replica.
        """
        try:
            slot = self.pool.remove(address)
        except KeyError:
            raise GatewayError(f"replica {address} is not behind this gateway (replicas: "
                               f"{', '.join(s.address for s in self.pool) or 'none'})") from None
        await self._publish_health()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while slot.outstanding and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await slot.channel.close()

    async def sync_dns(self, *, probe: bool = True) -> tuple[list[str], list[str]]:
        """Resolve `replicas_dns` once: add the addresses that appeared, drain and remove those that disappeared.

        One step of discovery (the gateway runs it every `dns_refresh_s`; tests call it directly). A
        failed lookup changes nothing. Removals drain concurrently, each for up to 5 s (`remove_replica`).

        Args:
            probe: probe added replicas at once (False at start-up, where the first health step probes all).

        Returns:
            (added, removed) addresses, sorted.
        """
        if self.config.replicas_dns is None:
            return [], []
        host, _, port_text = self.config.replicas_dns.rpartition(":")
        host, port = host.strip("[]"), int(port_text)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(None, self.resolver, host, port, self.config.dns_family)
        except OSError as exc:
            log.warning("resolving %s failed (%s); keeping the %d replica(s) it gave before", self.config.replicas_dns, exc,
                        len(self._dns_members))
            return [], []
        wanted = {_join(ip, port) for ip in found}
        added = sorted(a for a in wanted - self._dns_members if self.pool.get(a) is None)
        removed = sorted(self._dns_members - wanted)
        for address in added:
            self._dns_members.add(address)
            if probe:
                await self.add_replica(address)
            else:
                self.pool.add(address)
        self._dns_members -= set(removed)
        await asyncio.gather(*(self._remove_quietly(a) for a in removed))
        if added or removed:
            log.info("%s: %d replica(s) (added %s; removed %s)", self.config.replicas_dns, len(self._dns_members),
                     ", ".join(added) or "none", ", ".join(removed) or "none")
        if not wanted and not self._dns_empty:
            log.warning("%s resolves to no address: no replica is ready behind it", self.config.replicas_dns)
        self._dns_empty = not wanted
        return added, removed

    async def refresh_models(self) -> None:
        """Reload the model catalog from a ready replica (one refresh at a time; concurrent callers share it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._refreshing)

    # -- internals ---------------------------------------------------------------------------------------------------

    async def _discover(self) -> None:
        while True:
            await asyncio.sleep(self.config.dns_refresh_s)
            try:
                await self.sync_dns()
            except Exception:  # noqa: BLE001 - a bad answer must not end discovery
                log.exception("replica discovery through %s failed", self.config.replicas_dns)

    async def _remove_quietly(self, address: str) -> None:
        try:
            await self.remove_replica(address)
        except GatewayError:
            pass  # removed meanwhile through `remove_replica`

    def _channel(self, address: str):
        backoff_ms = int(min(1.0, self.config.health_interval_s) * 1000)
        # Reconnect quickly: a replica restarted on the same port must not wait out gRPC's default 120 s back-off.
        options = [*self.config.message_options(), ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", max(100, backoff_ms)),
                   # Triton's error for a request with many inputs lists them all in grpc-message (16 KB for 1,000):
                   # relay it rather than fail on gRPC's default 8 KB metadata limit.
                   ("grpc.max_metadata_size", _MAX_METADATA_BYTES), ("grpc.absolute_max_metadata_size", _MAX_METADATA_BYTES)]
        return grpc.aio.insecure_channel(address, options=options)

    def _credentials(self):
        config = self.config
        if config.tls_cert_path is None:
            return None
        try:
            cert, key = config.tls_cert_path.read_bytes(), config.tls_key_path.read_bytes()
        except OSError as exc:
            raise GatewayError(f"cannot read the TLS files (`tls_cert_path`, `tls_key_path`): {exc}") from None
        if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
            raise GatewayError(f"`tls_cert_path` ({config.tls_cert_path}) and `tls_key_path` ({config.tls_key_path}) must be PEM files")
        return grpc.ssl_server_credentials([(key, cert)])

    async def _probe(self, slot: ReplicaSlot) -> str | None:
        """None when the replica can take requests, else why not.

        ServerReady decides, with one exception. Replicas run with strict readiness (the local
        launcher turns it on), under which Triton answers "not ready" while *any* model is loading
        or unloading -- for a second or more after a RepositoryModelUnload, although its own code
        means to ignore unloaded models (core server.cc, "Okay if model is not ready due to
        unload"). A replica that says not ready but is live, serves at least one model, and whose
        other models are only loading, unloading or unloaded stays in rotation: a load or unload
        through the gateway must not empty the rotation. A model that failed to load still takes
        its replica out, as strict readiness intends.
        """
        timeout = self.config.health_timeout_s
        try:
            answer = await slot.method("ServerReady")(pb.ServerReadyRequest().SerializeToString(), timeout=timeout)
            if pb.ServerReadyResponse.FromString(answer).ready:
                return None
            live = pb.ServerLiveResponse.FromString(await slot.method("ServerLive")(pb.ServerLiveRequest().SerializeToString(), timeout=timeout))
            if not live.live:
                return "ServerReady answered not ready, ServerLive not live"
            index = pb.RepositoryIndexResponse.FromString(
                await slot.method("RepositoryIndex")(pb.RepositoryIndexRequest().SerializeToString(), timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            return f"ServerReady failed: {exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - a closed channel or similar: not ready
            return f"ServerReady failed: {exc!r}"
        failed = [f"{m.name} v{m.version} {m.state}: {m.reason}" for m in index.models
                  if not (m.state in _IN_TRANSITION or (m.state == "UNAVAILABLE" and m.reason == "unloaded"))]
        if failed or not any(m.state == "READY" for m in index.models):
            return f"ServerReady answered not ready ({'; '.join(failed) or 'no model is ready'})"
        return None

    async def _health_changed(self, changes: list[HealthChange]) -> None:
        await self._publish_health()
        if any(c.healthy for c in changes) and self._running is not None:
            # A replica came back: its models may differ from what the catalog holds.
            task = asyncio.ensure_future(self._refresh_quietly())
            self._running.tasks.add(task)
            task.add_done_callback(self._running.tasks.discard)

    async def _publish_health(self) -> None:
        if self._running is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if self.pool.any_healthy() else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self._running.health_service.set(service, status)

    async def _refresh(self) -> None:
        errors = []
        for slot in sorted(self.pool.healthy(), key=lambda s: s.outstanding):
            try:
                await self.catalog.refresh(pb_grpc.GRPCInferenceServiceStub(slot.channel))
                return
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{slot.address}: {exc.code().name}: {exc.details()}")
        raise GatewayError(f"could not load the model catalog from any ready replica ({'; '.join(errors) or 'none is ready'})")

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_models()
        except Exception as exc:  # noqa: BLE001 - keep serving with the previous catalog
            log.warning("model catalog refresh failed: %s", exc)

    def _start_metrics(self, host: str, port: int):
        from prometheus_client import start_http_server

        try:
            httpd, _thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as exc:
            raise GatewayError(f"the metrics endpoint cannot listen on {host}:{port} (`metrics_host`, `metrics_port`): {exc.strerror or exc}; "
                               "choose another `metrics_port`, 0 for a free one, or None to turn metrics off") from None
        self._metrics_port = httpd.server_port
        return httpd


def _shutdown_http(httpd) -> None:
    httpd.shutdown()
    httpd.server_close()


class GatewayThread:
    """A `Gateway` on its own event loop in a background thread, for synchronous callers and tests.

    Args:
        config: the gateway's configuration.
        start_timeout_s: how long `start` waits for the gateway to serve.
        resolver: resolves `config.replicas_dns` (see `Gateway`).

    Example:
        >>> with GatewayThread(GatewayConfig(replicas=[replica.address])) as gateway:
        ...     tritonclient.grpc.InferenceServerClient(gateway.address).is_server_ready()
    """

    def __init__(self, config: GatewayConfig, *, start_timeout_s: float = 60.0, resolver: Resolver = resolve_addresses):
        self.config = config
        self.start_timeout_s = start_timeout_s
        self.resolver = resolver
        self.gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> GatewayThread:
        """Start the loop thread and the gateway; returns once it serves (or raises GatewayError)."""
        if self._thread is not None:
            raise GatewayError("this GatewayThread is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raytron-gateway", daemon=True)
        self._thread.start()
        self.gateway = Gateway(self.config, resolver=self.resolver)
        try:
            self.run(self.gateway.start(), timeout_s=self.start_timeout_s)
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the gateway (in-flight requests get `grace_s`) and the loop thread."""
        if self._thread is None:
            return
        try:
            self.run(self.gateway.stop(grace_s), timeout_s=grace_s + 30)
        finally:
            self._close_loop()

    def run(self, coroutine, *, timeout_s: float | None = 30.0):
        """Run a coroutine on the gateway's loop and return its result (e.g. `run(gateway.add_replica(a))`)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def add_replica(self, address: str) -> bool:
        """`Gateway.add_replica` from another thread."""
        return self.run(self.gateway.add_replica(address))

    def remove_replica(self, address: str, *, grace_s: float = 5.0) -> None:
        """`Gateway.remove_replica` from another thread."""
        self.run(self.gateway.remove_replica(address, grace_s=grace_s), timeout_s=grace_s + 30)

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def address(self) -> str:
        return self.gateway.address

    @property
    def metrics_port(self) -> int | None:
        return self.gateway.metrics_port

    def replicas(self) -> list[ReplicaStatus]:
        return self.run(_snapshot(self.gateway))

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()
        self._thread = None

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def _snapshot(gateway: Gateway) -> list[ReplicaStatus]:
    return gateway.replicas()
