"""Replica discovery through DNS (`GatewayConfig.replicas_dns`), as the gateway does in Kubernetes
with the Triton headless Service: the pool follows the answer set, and requests follow the pool.

The fast tests inject a resolver whose answer a test switches; nothing listens on the addresses, so
the replicas join the pool but never the rotation. The slow ones resolve "localhost" for real in
front of a real tritonserver replica, and run `raytron gateway` as a user would.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading

import numpy as np
import pytest
import tritonclient.grpc as gc
from helpers import RAYTRON, base_env, wait_for
from tritonclient.utils import InferenceServerException
from triton_fixtures import build_repository, reference, running_replicas

from raytron.serving.errors import GatewayError
from raytron.serving.gateway import Gateway, GatewayConfig, GatewayThread, resolve_addresses


class SwitchableResolver:
    """A resolver whose answer the test sets; `fail` makes the next lookups raise like an unreachable DNS server."""

    def __init__(self, *addresses: str):
        self.addresses = list(addresses)
        self.fail = False
        self.calls: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def set(self, *addresses: str) -> None:
        with self._lock:
            self.addresses = list(addresses)

    def __call__(self, host: str, port: int, family: str) -> list[str]:
        with self._lock:
            self.calls.append((host, port, family))
            if self.fail:
                raise OSError("Temporary failure in name resolution")
            return list(self.addresses)


def pool_addresses(thread: GatewayThread) -> set[str]:
    return {r.address for r in thread.replicas()}


# -- fast: no Triton -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, named", [
    ({"replicas_dns": "triton-headless"}, "`replicas_dns` ('triton-headless')"),
    ({"replicas_dns": "triton-headless:99999"}, "`replicas_dns`"),
    ({"dns_refresh_s": 0}, "`dns_refresh_s` (0)"),
    ({"dns_family": "ipx"}, "`dns_family` ('ipx')"),
])
def test_dns_config_errors_name_the_field(fields, named):
    with pytest.raises(GatewayError) as error:
        GatewayConfig(**fields)
    assert named in str(error.value)


def test_resolve_addresses_resolves_localhost():
    assert "127.0.0.1" in resolve_addresses("localhost", 8001, "ipv4")
    assert all(":" not in a for a in resolve_addresses("localhost", 8001, "ipv4"))


def test_sync_dns_adds_and_removes_what_the_answer_adds_and_removes():
    resolver = SwitchableResolver("127.0.0.1")
    config = GatewayConfig(replicas=["127.0.0.3:1"], replicas_dns="triton.test:1", health_timeout_s=0.2)

    async def scenario():
        gateway = Gateway(config, resolver=resolver)
        try:
            for address in config.replicas:
                gateway.pool.add(address)
            assert await gateway.sync_dns() == (["127.0.0.1:1"], [])
            resolver.set("127.0.0.1", "127.0.0.2", "127.0.0.3")  # the static replica is not DNS's to add or remove
            assert await gateway.sync_dns() == (["127.0.0.2:1"], [])
            assert {s.address for s in gateway.pool} == {"127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"}
            resolver.fail = True  # a failed lookup keeps the pool
            assert await gateway.sync_dns() == ([], [])
            assert len(gateway.pool) == 3
            resolver.fail = False
            resolver.set("127.0.0.2")
            assert await gateway.sync_dns() == ([], ["127.0.0.1:1"])
            resolver.set()  # no ready pod: the answer is empty
            assert await gateway.sync_dns() == ([], ["127.0.0.2:1"])
            assert {s.address for s in gateway.pool} == {"127.0.0.3:1"}
            assert resolver.calls[0] == ("triton.test", 1, "ipv4")
        finally:
            for slot in list(gateway.pool):
                gateway.pool.remove(slot.address)
                await slot.channel.close()

    asyncio.run(scenario())


def test_the_running_gateway_follows_the_answer_in_the_background():
    resolver = SwitchableResolver("127.0.0.1")
    config = GatewayConfig(replicas_dns="triton.test:1", dns_refresh_s=0.05, health_interval_s=0.2, health_timeout_s=0.2)
    with GatewayThread(config, resolver=resolver) as running:
        assert pool_addresses(running) == {"127.0.0.1:1"}  # resolved before the gateway started serving
        resolver.set("127.0.0.1", "127.0.0.2")
        wait_for(lambda: pool_addresses(running) == {"127.0.0.1:1", "127.0.0.2:1"}, timeout_s=10, what="127.0.0.2 joining")
        resolver.set("127.0.0.2")
        wait_for(lambda: pool_addresses(running) == {"127.0.0.2:1"}, timeout_s=10, what="127.0.0.1 leaving")
        # A replica removed by hand meanwhile is not an error for discovery.
        running.remove_replica("127.0.0.2:1", grace_s=0)
        resolver.set()
        wait_for(lambda: len(resolver.calls) > 10 and not pool_addresses(running), timeout_s=10, what="an empty pool")
    calls = len(resolver.calls)
    threading.Event().wait(0.3)
    assert len(resolver.calls) == calls  # stopping the gateway stopped discovery


def test_raytron_gateway_needs_replicas_and_valid_options(tmp_path):
    from helpers import run_cli

    none = run_cli("gateway", "--port", "0", env=base_env(tmp_path), timeout_s=60)
    assert none.returncode == 2 and "`--replica HOST:PORT`" in none.stderr and "`--replicas-dns HOST:PORT`" in none.stderr
    bad = run_cli("gateway", "--replicas-dns", "triton-headless", "--port", "0", env=base_env(tmp_path), timeout_s=60)
    assert bad.returncode == 2 and "`replicas_dns` ('triton-headless')" in bad.stderr


# -- slow: a real tritonserver replica -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    repo = build_repository(tmp_path_factory.mktemp("gateway-dns"))
    with running_replicas(repo, 1) as started:
        yield started[0]


def infer_mlp(address: str) -> None:
    client = gc.InferenceServerClient(address)
    try:
        x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        tensor = gc.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("mlp", [tensor]).as_numpy("logits"), reference("mlp", x)[0], rtol=1e-4, atol=1e-5)
    finally:
        client.close()


@pytest.mark.slow
def test_localhost_dns_name_discovers_a_real_replica(replica):
    config = GatewayConfig(replicas_dns=f"localhost:{replica.grpc_port}", dns_refresh_s=0.2, health_interval_s=0.2)
    with GatewayThread(config) as running:
        assert pool_addresses(running) == {replica.address}
        wait_for(lambda: all(r.healthy for r in running.replicas()), timeout_s=30, what="the replica in rotation")
        infer_mlp(running.address)


@pytest.mark.slow
def test_requests_follow_the_answer_set(replica):
    resolver = SwitchableResolver("127.0.0.1")
    config = GatewayConfig(replicas_dns=f"triton-headless.test:{replica.grpc_port}", dns_refresh_s=0.1, health_interval_s=0.2,
                           health_timeout_s=0.5)
    with GatewayThread(config, resolver=resolver) as running:
        wait_for(lambda: any(r.healthy for r in running.replicas()), timeout_s=30, what="the replica in rotation")
        infer_mlp(running.address)
        # A second address appears (nothing listens there): it joins the pool, not the rotation, and requests still succeed.
        resolver.set("127.0.0.1", "127.0.0.2")
        wait_for(lambda: len(running.replicas()) == 2, timeout_s=10, what="127.0.0.2 joining")
        for _ in range(4):
            infer_mlp(running.address)
        assert not next(r for r in running.replicas() if r.address.startswith("127.0.0.2")).healthy
        # The real replica leaves the answer (its pod is no longer ready): no replica, UNAVAILABLE.
        resolver.set("127.0.0.2")
        wait_for(lambda: pool_addresses(running) == {f"127.0.0.2:{replica.grpc_port}"}, timeout_s=10, what="the replica leaving")
        with pytest.raises(InferenceServerException) as error:
            infer_mlp(running.address)
        assert error.value.status() == "StatusCode.UNAVAILABLE"
        # It comes back.
        resolver.set("127.0.0.1")
        wait_for(lambda: pool_addresses(running) == {replica.address} and running.replicas()[0].healthy, timeout_s=30, what="the replica back")
        infer_mlp(running.address)


@pytest.mark.slow
def test_raytron_gateway_command_discovers_serves_and_drains_on_sigterm(replica, tmp_path):
    proc = subprocess.Popen([RAYTRON, "gateway", "--replicas-dns", f"localhost:{replica.grpc_port}", "--port", "0", "--dns-refresh-s", "0.5",
                             "--metrics-port", "0"], env=base_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []

        def read() -> str | None:
            line = proc.stderr.readline()
            lines.append(line)
            match = re.search(r"gateway on grpc://127\.0\.0\.1:(\d+)", line)
            if not line and proc.poll() is not None:
                raise AssertionError(f"raytron gateway exited {proc.returncode}: {''.join(lines)}")
            return match.group(1) if match else None

        port = wait_for(read, timeout_s=60, interval_s=0, what="the gateway's start line")
        wait_for(lambda: gc.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready(), timeout_s=30, what="the gateway ready")
        infer_mlp(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "draining and stopping" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
