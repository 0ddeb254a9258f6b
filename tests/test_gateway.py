"""The gateway: unit tests of its parts, then real tritonserver replicas, real gRPC and tritonclient's own clients.

Replicas are shared per module (two for most tests; the kill test starts its own victim). Every bad
request is sent to a replica directly and through the gateway, and the two answers (status code and
message) must be equal: the tests hold no copy of Triton's wording.
"""

from __future__ import annotations

import asyncio
import math
import queue
import shutil
import subprocess
import threading
import urllib.request
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as gc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException
from triton_fixtures import MAX_BATCH, SLOW_QUEUE_S, build_repository, reference, running_replicas

from raytron.serving._gateway_service import forward_metadata, merge_statistics
from raytron.serving.balancer import HealthChecker, ReplicaPool
from raytron.serving.errors import GatewayError
from raytron.serving.gateway import MAX_MESSAGE_BYTES, GatewayConfig, GatewayThread
from raytron.serving.modelconfig import read_model_config, wire_dtype
from raytron.serving.validation import MAX_CHECKED_INPUTS, TritonStatus, parse_version, unordered_map_order

_METHOD = "/inference.GRPCInferenceService/"
# Triton's answer to a request with 1,000+ inputs lists them all: more than gRPC's default 8 KB of metadata.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_metadata_size", 4 << 20), ("grpc.absolute_max_metadata_size", 4 << 20)]


# --- unit tests: no Triton ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, named", [
    ({"port": 70000}, "`port` (70000)"),
    ({"replicas": ["localhost"]}, "`replicas[0]` ('localhost')"),
    ({"replicas": ["a:1", "a:1"]}, "`replicas`"),
    ({"health_interval_s": 0}, "`health_interval_s` (0)"),
    ({"metrics_port": -1}, "`metrics_port` (-1)"),
    ({"token": "has space"}, "`token`"),
    ({"production_repo": "/nonexistent/repo"}, "`production_repo` ('/nonexistent/repo')"),
    ({"response_compression": "brotli"}, "`response_compression` ('brotli')"),
    ({"max_receive_message_bytes": 2**31}, "`max_receive_message_bytes`"),
])
def test_config_errors_name_the_field_and_value(fields, named):
    with pytest.raises(GatewayError) as error:
        GatewayConfig(**fields)
    assert named in str(error.value)


def test_config_needs_both_tls_files(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(GatewayError, match="`tls_key_path`"):
        GatewayConfig(tls_cert_path=cert)
    assert GatewayConfig(replicas="127.0.0.1:8001").replicas == ("127.0.0.1:8001",)


def test_pool_picks_least_outstanding_then_round_robin():
    pool = ReplicaPool(lambda address: None)
    a, b, c = (pool.add(x) for x in ("h:1", "h:2", "h:3"))
    assert pool.pick() is None  # nothing probed yet: nothing in rotation
    for slot in (a, b, c):
        slot.healthy = True
    picks = [pool.pick().address for _ in range(6)]
    assert sorted(picks[:3]) == ["h:1", "h:2", "h:3"] and picks[3:] == picks[:3]  # idle replicas take turns
    a.outstanding, b.outstanding, c.outstanding = 2, 0, 1
    assert {pool.pick().address for _ in range(5)} == {"h:2"}
    assert pool.pick(exclude=[b]) is c
    pool.mark_down(b, "test")
    assert pool.pick() is c and pool.pick(exclude=[c]) is a
    pool.remove("h:1")
    assert pool.pick(exclude=[c]) is None


def test_health_checker_is_stepped_with_an_injected_clock():
    ready = {"h:1": True, "h:2": False}
    now = [100.0]

    async def probe(slot):
        return None if ready[slot.address] else "not ready"

    async def scenario():
        pool = ReplicaPool(lambda address: None)
        for address in ready:
            pool.add(address)
        seen = []

        async def on_change(changes):
            seen.extend(changes)

        checker = HealthChecker(pool, probe, interval_s=1.0, on_change=on_change, clock=lambda: now[0])
        first = await checker.step()
        assert [(c.address, c.healthy) for c in first] == [("h:1", True)]
        assert [s.address for s in pool.healthy()] == ["h:1"] and pool.get("h:1").last_probe_s == 100.0
        ready.update({"h:1": False, "h:2": True})
        now[0] = 101.0
        second = await checker.step()
        assert {(c.address, c.healthy) for c in second} == {("h:1", False), ("h:2", True)}
        assert pool.get("h:1").last_error == "not ready"
        assert await checker.step() == []  # no change, no callback
        assert len(seen) == 3 and checker.steps == 3

    asyncio.run(scenario())


def test_forward_metadata_keeps_application_headers_only():
    metadata = (("user-agent", "grpc-python"), ("grpc-accept-encoding", "gzip"), (":authority", "x"),
                ("authorization", "Bearer t"), ("x-request-id", "42"), ("trace-bin", b"\x00\x01"))
    assert forward_metadata(metadata, strip_authorization=True) == (("x-request-id", "42"), ("trace-bin", b"\x00\x01"))
    assert ("authorization", "Bearer t") in forward_metadata(metadata, strip_authorization=False)
    assert forward_metadata((("user-agent", "x"),), strip_authorization=True) is None


def test_merge_statistics_adds_counts_and_durations():
    def stats(count, ns, last, batch_count):
        response = pb.ModelStatisticsResponse()
        s = response.model_stats.add(name="m", version="1", last_inference=last, inference_count=count, execution_count=count)
        s.inference_stats.success.count, s.inference_stats.success.ns = count, ns
        b = s.batch_stats.add(batch_size=1)
        b.compute_infer.count, b.compute_infer.ns = batch_count, ns
        return response

    merged = merge_statistics([stats(3, 30, 5, 3), stats(4, 40, 9, 4)]).model_stats
    assert len(merged) == 1
    m = merged[0]
    assert (m.inference_count, m.execution_count, m.last_inference) == (7, 7, 9)
    assert (m.inference_stats.success.count, m.inference_stats.success.ns) == (7, 70)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in m.batch_stats] == [(1, 7, 70)]


def test_version_strings_parse_like_std_stol():
    assert parse_version("") == -1
    assert parse_version("3") == 3 and parse_version(" 12abc") == 12
    assert isinstance(parse_version("x"), TritonStatus) and isinstance(parse_version("-2"), TritonStatus)
    assert isinstance(parse_version("99999999999999999999"), TritonStatus)


def test_unordered_map_order_is_a_permutation_without_duplicates():
    names = [f"input_{i}" for i in range(40)]
    order = unordered_map_order(names + names[:5])
    assert sorted(order) == sorted(names)


def test_gateway_without_a_ready_replica_says_so():
    config = GatewayConfig(replicas=["127.0.0.1:1"], health_interval_s=0.2, health_timeout_s=0.2)  # nothing listens on port 1
    with GatewayThread(config) as running:
        client = gc.InferenceServerClient(running.address)
        try:
            assert client.is_server_live() and not client.is_server_ready()
            with pytest.raises(InferenceServerException) as error:
                client.infer("mlp", [fp32_input("x", np.zeros((1, 16)))])
            assert error.value.status() == "StatusCode.UNAVAILABLE"
            assert "127.0.0.1:1" in error.value.message() and "`health_interval_s`" in error.value.message()
        finally:
            client.close()
        with grpc.insecure_channel(running.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(GatewayError, match="`port`"):
            GatewayThread(GatewayConfig(port=running.port)).start()


# --- fixtures: real replicas ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repository(tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="module")
def replicas(repo):
    with running_replicas(repo, 2) as started:
        yield started


@pytest.fixture(scope="module")
def gateway(replicas, repo):
    config = GatewayConfig(replicas=[r.address for r in replicas], production_repo=repo, metrics_port=0, health_interval_s=0.2)
    with GatewayThread(config) as running:
        yield running


def fp32_input(name: str, array: np.ndarray) -> gc.InferInput:
    tensor = gc.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array.astype(np.float32))
    return tensor


def multi_inputs(a: np.ndarray, b: np.ndarray) -> list[gc.InferInput]:
    ia = gc.InferInput("a", list(a.shape), "INT32")
    ia.set_data_from_numpy(a.astype(np.int32))
    return [ia, fp32_input("b", b)]


def multi_example(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(-50, 50, (batch, 4)).astype(np.int32), rng.standard_normal((batch, 4)).astype(np.float32)


def check_multi(result, a, b) -> None:
    expected_sum, expected_doubled = reference("multi", a, b)
    np.testing.assert_allclose(result.as_numpy("sum"), expected_sum, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("doubled"), expected_doubled)


def raw_answer(address: str, method: str, body: bytes, **kwargs) -> tuple[str, str, bytes | None]:
    """(status code name, details, response bytes) of one raw unary call."""
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        try:
            return "OK", "", channel.unary_unary(_METHOD + method)(body, timeout=30, **kwargs)
        except grpc.RpcError as error:
            return error.code().name, error.details(), None


def stream_answers(address: str, bodies: list[bytes]) -> list[pb.ModelStreamInferResponse]:
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        call = channel.stream_stream(_METHOD + "ModelStreamInfer")
        return [pb.ModelStreamInferResponse.FromString(b) for b in call(iter(bodies), timeout=30)]


def infer_body(model: str, tensors, *, raws=None, outputs=(), **fields) -> bytes:
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, datatype, shape in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
    if raws is None:  # zeros of the right size (the shapes that take this branch are small and non-negative)
        raws = [bytes(4 * math.prod(shape)) for _, _, shape in tensors]
    request.raw_input_contents.extend(raws)
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def rejected_total(thread: GatewayThread) -> float:
    registry = thread.gateway.metrics.registry
    return sum(s.value for m in registry.collect() if m.name == "raytron_gateway_rejected" for s in m.samples if s.name.endswith("_total"))


def shm_regions(group: int) -> set[Path]:
    """The /dev/shm files that the processes of process group `group` (a replica and its stubs) have mapped."""
    regions = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                regions |= {Path(line.split(None, 5)[5].strip()) for line in (proc / "maps").read_text().splitlines()
                            if "/dev/shm/" in line and len(line.split(None, 5)) == 6}
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return regions


def status_of(thread: GatewayThread, address: str):
    return next(r for r in thread.replicas() if r.address == address)


# --- clients ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sync_client_every_batch_size_and_model(gateway):
    client = gc.InferenceServerClient(gateway.address)
    try:
        for batch in range(1, MAX_BATCH + 1):
            a, b = multi_example(batch, seed=batch)
            check_multi(client.infer("multi", multi_inputs(a, b)), a, b)
        x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
        np.testing.assert_allclose(client.infer("mlp", [fp32_input("x", x)]).as_numpy("logits"), reference("mlp", x)[0], rtol=1e-4, atol=1e-5)
        y = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_allclose(client.infer("nobatch", [fp32_input("x", y)]).as_numpy("y"), reference("nobatch", y)[0])
        # gzip-compressed requests and custom headers pass through
        a, b = multi_example(2)
        check_multi(client.infer("multi", multi_inputs(a, b), compression_algorithm="gzip", headers={"x-request-source": "test"}), a, b)
    finally:
        client.close()


@pytest.mark.slow
def test_callback_client_concurrent_requests(gateway):
    client = gc.InferenceServerClient(gateway.address)
    answers: queue.Queue = queue.Queue()
    examples = {i: multi_example(1 + i % MAX_BATCH, seed=i) for i in range(24)}
    try:
        for i, (a, b) in examples.items():
            client.async_infer("multi", multi_inputs(a, b), callback=partial(lambda i, result, error: answers.put((i, result, error)), i),
                               request_id=str(i))
        got = [answers.get(timeout=30) for _ in examples]
    finally:
        client.close()
    assert sorted(i for i, _, _ in got) == list(examples)
    for i, result, error in got:
        assert error is None, error
        assert result.get_response().id == str(i)
        check_multi(result, *examples[i])


@pytest.mark.slow
def test_asyncio_client_calls_and_stream(gateway):
    import tritonclient.grpc.aio as grpcaio

    async def scenario():
        client = grpcaio.InferenceServerClient(gateway.address)
        try:
            assert await client.is_server_live() and await client.is_server_ready() and await client.is_model_ready("multi")
            assert (await client.get_model_metadata("multi")).name == "multi"
            examples = [multi_example(batch, seed=batch) for batch in range(1, MAX_BATCH + 1)]
            results = await asyncio.gather(*(client.infer("multi", multi_inputs(a, b)) for a, b in examples))
            for result, (a, b) in zip(results, examples):
                check_multi(result, a, b)

            async def requests():
                for i, (a, b) in enumerate(examples):
                    yield {"model_name": "multi", "inputs": multi_inputs(a, b), "request_id": str(i)}

            streamed = [(result, error) async for result, error in client.stream_infer(requests())]
        finally:
            await client.close()
        assert [r.get_response().id for r, e in streamed if e is None] == [str(i) for i in range(len(examples))]
        for (result, _), (a, b) in zip(streamed, examples):
            check_multi(result, a, b)

    asyncio.run(scenario())


@pytest.mark.slow
def test_stream_answers_in_order_and_errors_like_triton(gateway, replicas):
    client = gc.InferenceServerClient(gateway.address)
    answers: queue.Queue = queue.Queue()
    examples = [multi_example(1 + i % MAX_BATCH, seed=i) for i in range(12)]
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i, (a, b) in enumerate(examples):
            client.async_stream_infer("multi", multi_inputs(a, b), request_id=str(i))
        got = [answers.get(timeout=30) for _ in examples]
    finally:
        client.stop_stream()
        client.close()
    assert [result.get_response().id for result, error in got] == [str(i) for i in range(len(examples))]
    for (result, error), (a, b) in zip(got, examples):
        assert error is None
        check_multi(result, a, b)

    # Bad requests inside a stream: the same error_message and request id as Triton's own stream, and the stream goes on.
    good = infer_body("multi", [("a", "INT32", [1, 4]), ("b", "FP32", [1, 4])], id="good")
    bodies = [good, infer_body("multi", [("a", "INT32", [1, 4]), ("b", "FP32", [1, 5])], id="bad-shape"), good,
              infer_body("nope", [], id="bad-model"), infer_body("multi", [("a", "INT32", [1, 4])], id="missing"),
              infer_body("multi", [("a", "INT32", [1, 4]), ("b", "FP32", [1, 4])], raws=[bytes(16), bytes(8)]), good]
    direct, through = stream_answers(replicas[0].address, bodies), stream_answers(gateway.address, bodies)
    assert [(r.error_message, r.infer_response.id) for r in through] == [(r.error_message, r.infer_response.id) for r in direct]
    assert sum(bool(r.error_message) for r in through) == 4
    assert [r.infer_response for r in through] == [r.infer_response for r in direct]  # outputs, raw contents, parameters


# --- health, metadata, statistics, repository ------------------------------------------------------------------------

@pytest.mark.slow
def test_health_and_server_calls(gateway, replicas):
    with grpc.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    client, direct = gc.InferenceServerClient(gateway.address), gc.InferenceServerClient(replicas[0].address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and not client.is_model_ready("nope")
        assert client.get_server_metadata() == direct.get_server_metadata()
        assert client.get_model_repository_index() == direct.get_model_repository_index()
        with pytest.raises(InferenceServerException) as error:
            client.register_system_shared_memory("region", "/key", 64)
        assert error.value.status() == "StatusCode.UNIMPLEMENTED" and "does not proxy" in error.value.message()
    finally:
        client.close()
        direct.close()


@pytest.mark.slow
def test_clients_see_the_production_config(gateway, replicas, repo):
    client, direct = gc.InferenceServerClient(gateway.address), gc.InferenceServerClient(replicas[0].address)
    try:
        for name in ("mlp", "multi", "nobatch"):
            production = read_model_config(repo / name)
            metadata = client.get_model_metadata(name)
            config = client.get_model_config(name).config
            batch = [-1] if production.max_batch_size else []
            assert metadata.platform == config.platform == production.platform
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == \
                   [(t.name, wire_dtype(t.data_type), batch + list(t.dims)) for t in production.input]
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == \
                   [(t.name, wire_dtype(t.data_type), batch + list(t.dims)) for t in production.output]
            assert config.max_batch_size == production.max_batch_size
            assert list(config.input) == list(production.input) and list(config.output) == list(production.output)
            assert config.backend != "python" and not any(k.startswith("raytron_") for k in config.parameters)
            # ...while the replica itself serves the Python-backend twin.
            assert direct.get_model_config(name).config.backend == "python"
            assert client.get_model_metadata(name, model_version="1").platform == production.platform
    finally:
        client.close()
        direct.close()


@pytest.mark.slow
def test_statistics_are_summed_over_replicas(gateway, replicas):
    client = gc.InferenceServerClient(gateway.address)
    directs = [gc.InferenceServerClient(r.address) for r in replicas]
    try:
        x = np.zeros((2, 16), np.float32)
        for _ in range(10):
            client.infer("mlp", [fp32_input("x", x)])
        through = client.get_inference_statistics("mlp").model_stats
        per_replica = [d.get_inference_statistics("mlp").model_stats[0] for d in directs]
    finally:
        client.close()
        for d in directs:
            d.close()
    assert len(through) == 1 and all(s.inference_count > 0 for s in per_replica)  # both replicas served some
    summed = through[0]
    assert summed.inference_count == sum(s.inference_count for s in per_replica)
    assert summed.execution_count == sum(s.execution_count for s in per_replica)
    for part in ("success", "queue", "compute_infer"):
        assert getattr(summed.inference_stats, part).count == sum(getattr(s.inference_stats, part).count for s in per_replica)
        assert getattr(summed.inference_stats, part).ns == sum(getattr(s.inference_stats, part).ns for s in per_replica)
    assert summed.last_inference == max(s.last_inference for s in per_replica)


@pytest.mark.slow
def test_load_and_unload_apply_to_every_replica(gateway, replicas):
    client = gc.InferenceServerClient(gateway.address)
    directs = [gc.InferenceServerClient(r.address) for r in replicas]
    body = infer_body("nobatch", [("x", "FP32", [2, 3])])
    try:
        client.unload_model("nobatch")
        wait_for(lambda: not any(d.is_model_ready("nobatch") for d in directs), timeout_s=30, what="nobatch unloaded on every replica")
        assert not client.is_model_ready("nobatch")
        assert raw_answer(gateway.address, "ModelInfer", body)[:2] == raw_answer(replicas[0].address, "ModelInfer", body)[:2]
        client.load_model("nobatch")
        wait_for(lambda: all(d.is_model_ready("nobatch") for d in directs), timeout_s=60, what="nobatch loaded on every replica")
        assert raw_answer(gateway.address, "ModelInfer", body)[0] == "OK"
    finally:
        client.close()
        for d in directs:
            d.close()


# --- validation and hostile input ------------------------------------------------------------------------------------

def with_contents(body: bytes) -> bytes:
    """The request with explicit `contents` for its first input, beside its raw contents."""
    request = pb.ModelInferRequest.FromString(body)
    request.inputs[0].contents.int_contents.extend([1, 2, 3, 4])
    return request.SerializeToString()


A, B = ("a", "INT32", [1, 4]), ("b", "FP32", [1, 4])
# (label, request body, answered by the gateway itself rather than forwarded)
BAD_REQUESTS = [
    ("unknown model", infer_body("nope", [A, B]), True),
    ("version is not a number", infer_body("multi", [A, B], model_version="x"), True),
    ("negative version", infer_body("multi", [A, B], model_version="-2"), True),
    ("version not loaded", infer_body("multi", [A, B], model_version="7"), False),
    ("missing input", infer_body("multi", [A]), True),
    ("no inputs", infer_body("multi", []), True),
    ("unexpected input", infer_body("multi", [A, ("c", "FP32", [1, 4])]), True),
    ("one input too many", infer_body("multi", [A, B, ("c", "FP32", [1, 4])]), True),
    ("many inputs too many", infer_body("multi", [A, B, *((f"extra_{i}", "FP32", [1, 4]) for i in range(14))]), True),
    ("more inputs than the gateway checks", infer_body("multi", [A, B, *((f"x{i}", "FP32", [1, 1]) for i in range(MAX_CHECKED_INPUTS))]),
     False),
    ("wrong datatype", infer_body("multi", [("a", "FP32", [1, 4]), B]), True),
    ("unknown datatype", infer_body("multi", [("a", "FLOAT", [1, 4]), B]), True),
    ("wrong shape", infer_body("multi", [A, ("b", "FP32", [1, 5])]), True),
    ("request id in the message", infer_body("multi", [A, ("b", "FP32", [1, 5])], id="req-7"), True),
    ("no batch dimension", infer_body("multi", [("a", "INT32", [4]), ("b", "FP32", [4])]), True),
    ("empty shape", infer_body("multi", [("a", "INT32", []), B], raws=[b"", bytes(16)]), True),
    ("batch over max_batch_size", infer_body("multi", [("a", "INT32", [9, 4]), ("b", "FP32", [9, 4])]), True),
    ("batch sizes differ", infer_body("multi", [("a", "INT32", [2, 4]), B]), True),
    ("raw byte size", infer_body("multi", [A, B], raws=[bytes(12), bytes(16)]), True),
    ("fewer raw contents than inputs", infer_body("multi", [A, B], raws=[bytes(16)]), True),
    ("duplicate input", infer_body("multi", [A, A]), True),
    ("unknown output", infer_body("multi", [A, B], outputs=["nope"]), True),
    ("contents beside raw contents", with_contents(infer_body("multi", [A, B])), True),
    ("zero batch", infer_body("mlp", [("x", "FP32", [0, 16])]), True),
    ("negative batch", infer_body("mlp", [("x", "FP32", [-1, 16])], raws=[bytes(64)]), True),
    ("batch 2**31", infer_body("mlp", [("x", "FP32", [2**31, 16])], raws=[bytes(64)]), True),
    ("batch 2**32+1 on two inputs", infer_body("multi", [("a", "INT32", [2**32 + 1, 4]), ("b", "FP32", [2**32 + 1, 4])],
                                               raws=[bytes(16), bytes(16)]), True),
    ("negative dim", infer_body("mlp", [("x", "FP32", [1, -16])], raws=[bytes(64)]), True),
    ("huge dims", infer_body("mlp", [("x", "FP32", [2**40, 2**40])], raws=[bytes(64)]), True),
    ("-1 given for a variable dim", infer_body("nobatch", [("x", "FP32", [-1, 3])], raws=[bytes(12)]), True),
    ("rank without a batch model", infer_body("nobatch", [("x", "FP32", [1, 2, 3])]), True),
    ("byte size product overflows int64", infer_body("nobatch", [("x", "FP32", [2**62, 3])], raws=[bytes(12)]), True),
    ("parameter of the wrong type", infer_body("multi", [A, B], parameters={"priority": pb.InferParameter(bool_param=True)}), False),
    ("more raw contents than inputs", infer_body("multi", [A, B], raws=[bytes(16)] * 3), False),
    ("garbage body", b"\xff\xff\xff", True),
    ("garbage text", b"garbage bytes here", True),
    ("empty body", b"", True),
]


@pytest.mark.slow
def test_bad_requests_get_tritons_code_and_message(gateway, replicas):
    mismatches, not_local = [], []
    for label, body, local in BAD_REQUESTS:
        direct = raw_answer(replicas[0].address, "ModelInfer", body)[:2]
        before = rejected_total(gateway)
        through = raw_answer(gateway.address, "ModelInfer", body)[:2]
        if through != direct:
            mismatches.append((label, direct, through))
        if local and direct[0] != "OK" and rejected_total(gateway) != before + 1:
            not_local.append(label)
    assert mismatches == []
    assert not_local == []  # each was answered by the gateway, without a replica
    assert raw_answer(gateway.address, "ModelInfer", infer_body("multi", [A, B]))[0] == "OK"


@pytest.mark.slow
def test_hostile_input_leaves_the_gateway_serving(gateway, replicas):
    good = infer_body("multi", [A, B], id="good")
    garbage = b"\xff\xff\xff"
    # A stream with garbage in it: the gateway answers it with Triton's unary error text (Triton's stream drops it silently).
    answers = stream_answers(gateway.address, [good, garbage, good])
    assert [a.error_message for a in answers] == ["", raw_answer(replicas[0].address, "ModelInfer", garbage)[1], ""]

    # Clients that vanish mid-stream: one after its first answer, one before reading any.
    release = threading.Event()

    def held(bodies):
        yield from bodies
        release.wait(10)

    with grpc.insecure_channel(gateway.address, options=_CHANNEL_OPTIONS) as channel:
        stream = channel.stream_stream(_METHOD + "ModelStreamInfer")
        call = stream(held([good, good]), timeout=30)
        next(call)
        call.cancel()
        call = stream(held([good] * 20), timeout=30)
        call.cancel()
        release.set()
        # Many absurd requests at once, from several threads.
        bodies = [body for _, body, _ in BAD_REQUESTS] * 3

        unexpected = []

        def send(chunk):
            unary = channel.unary_unary(_METHOD + "ModelInfer")
            for body in chunk:
                try:
                    unary(body, timeout=30)
                except grpc.RpcError as error:
                    if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL):
                        unexpected.append((error.code(), error.details()))

        threads = [threading.Thread(target=send, args=(bodies[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert unexpected == []
    wait_for(lambda: all(r.in_flight == 0 for r in gateway.replicas()), timeout_s=10, what="abandoned requests released")
    assert raw_answer(gateway.address, "ModelInfer", good)[0] == "OK"
    assert all(r.healthy for r in gateway.replicas())


@pytest.mark.slow
def test_deadline_exceeded_stays_deadline_exceeded(gateway):
    client = gc.InferenceServerClient(gateway.address)
    try:
        with pytest.raises(InferenceServerException) as error:
            client.infer("slow", [fp32_input("x", np.zeros((1, 2)))], client_timeout=0.5)
        assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # The gateway's call to the replica ends with the client's deadline, long before the replica's batcher
        # would have answered (SLOW_QUEUE_S): nothing is left in flight.
        wait_for(lambda: all(r.in_flight == 0 for r in gateway.replicas()), timeout_s=SLOW_QUEUE_S / 2, what="replica call cancelled")
        assert client.is_server_ready()
    finally:
        client.close()


# --- security --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bearer_token(replicas):
    config = GatewayConfig(replicas=[r.address for r in replicas], token="s3cret-token", health_interval_s=0.2)
    x = [fp32_input("x", np.zeros((1, 16)))]
    with GatewayThread(config) as running:
        client = gc.InferenceServerClient(running.address)
        try:
            for headers in (None, {"authorization": "Bearer wrong-token"}, {"authorization": "s3cret-token"}):
                with pytest.raises(InferenceServerException) as error:
                    client.infer("mlp", x, headers=headers)
                assert error.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                client.get_model_metadata("mlp")
            assert client.infer("mlp", x, headers={"authorization": "Bearer s3cret-token"}).as_numpy("logits").shape == (1, 4)
            assert client.is_server_ready(headers={"authorization": "bearer s3cret-token"})
        finally:
            client.close()
        with grpc.insecure_channel(running.address) as channel:  # health needs no token (Kubernetes probes send none)
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING


def make_self_signed(directory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("TLS test needs the `cryptography` package or the `openssl` CLI to make a certificate; neither is installed")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key


@pytest.mark.slow
def test_tls(replicas, tmp_path):
    cert, key = make_self_signed(tmp_path)
    config = GatewayConfig(replicas=[r.address for r in replicas], tls_cert_path=cert, tls_key_path=key, response_compression="gzip")
    with GatewayThread(config) as running:
        client = gc.InferenceServerClient(running.address, ssl=True, root_certificates=str(cert))
        plain = gc.InferenceServerClient(running.address)
        try:
            a, b = multi_example(3)
            check_multi(client.infer("multi", multi_inputs(a, b)), a, b)
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=5)
        finally:
            client.close()
            plain.close()


# --- metrics, failover -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_metrics_endpoint(gateway, replicas):
    client = gc.InferenceServerClient(gateway.address)
    try:
        for _ in range(3):
            client.infer("mlp", [fp32_input("x", np.zeros((1, 16)))])
        with pytest.raises(InferenceServerException):
            client.infer("mlp", [fp32_input("x", np.zeros((1, 15)))])
    finally:
        client.close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("raytron_gateway_requests_total", method="ModelInfer", model="mlp", code="OK") >= 3
    assert value("raytron_gateway_errors_total", method="ModelInfer", model="mlp", code="INVALID_ARGUMENT") >= 1
    assert value("raytron_gateway_rejected_total", model="mlp", code="INVALID_ARGUMENT") >= 1
    assert value("raytron_gateway_request_latency_seconds_count", method="ModelInfer", model="mlp") >= 4
    for replica in replicas:
        assert value("raytron_gateway_replica_healthy", replica=replica.address) == 1.0
        assert ("raytron_gateway_replica_in_flight", (("replica", replica.address),)) in samples


@pytest.mark.slow
def test_killed_replica_costs_no_request_and_a_new_replica_gets_traffic(repo, replicas):
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    expected = reference("mlp", x)[0]
    with running_replicas(repo, 1, first_index=10) as (victim,):
        config = GatewayConfig(replicas=[replicas[0].address, victim.address], health_interval_s=0.2)
        with GatewayThread(config) as running:
            failures, done, lock = [], [0], threading.Lock()

            def load(count: int) -> None:
                client = gc.InferenceServerClient(running.address)
                try:
                    for _ in range(count):
                        try:
                            np.testing.assert_allclose(client.infer("mlp", [fp32_input("x", x)]).as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)
                        except Exception as error:  # noqa: BLE001 - every failure is recorded and fails the test below
                            failures.append(repr(error))
                        with lock:
                            done[0] += 1
                finally:
                    client.close()

            def slow() -> None:  # waits SLOW_QUEUE_S in a replica's batcher: certainly in flight when the victim dies
                client = gc.InferenceServerClient(running.address)
                try:
                    np.testing.assert_array_equal(client.infer("slow", [fp32_input("x", np.zeros((1, 2)))], client_timeout=60).as_numpy("y"),
                                                  np.ones((1, 2), np.float32))
                except Exception as error:  # noqa: BLE001 - recorded, fails the test below
                    failures.append(repr(error))
                finally:
                    client.close()

            threads = [threading.Thread(target=slow) for _ in range(2)]  # least outstanding: one on each replica
            for t in threads:
                t.start()
            wait_for(lambda: all(r.in_flight == 1 for r in running.replicas()), timeout_s=30, what="a slow request on each replica")
            threads += [threading.Thread(target=load, args=(120,)) for _ in range(4)]
            for t in threads[2:]:
                t.start()
            wait_for(lambda: done[0] >= 120, timeout_s=60, what="load before the kill")
            leaked = shm_regions(victim.process.pid)
            victim.kill()
            # A SIGKILLed Python-backend stub cannot unlink its shared memory; Replica.kill does it for it.
            assert leaked and not [r for r in leaked if r.exists()]
            for t in threads:
                t.join(120)
            assert failures == [] and done[0] == 480
            retries = running.gateway.metrics.registry.get_sample_value("raytron_gateway_replica_unavailable_total", {"replica": victim.address})
            assert retries >= 1  # at least the slow request was re-sent to the survivor
            wait_for(lambda: not status_of(running, victim.address).healthy, timeout_s=10, what="killed replica out of rotation")
            sent_to_victim = status_of(running, victim.address).requests_total
            load(20)
            assert failures == [] and status_of(running, victim.address).requests_total == sent_to_victim

            with running_replicas(repo, 1, first_index=11) as (fresh,):
                assert running.add_replica(fresh.address)
                load(40)
                assert failures == [] and status_of(running, fresh.address).requests_total > 0
                direct = gc.InferenceServerClient(fresh.address)
                try:
                    assert direct.get_inference_statistics("mlp").model_stats[0].inference_count > 0
                finally:
                    direct.close()
