"""The gateway's `inference.GRPCInferenceService`: every method as a raw-bytes gRPC handler.

Requests and responses stay bytes end to end. ModelInfer bodies are parsed (upb, microseconds) only
to validate them and to label metrics; the bytes the client sent go to the replica, and the bytes
the replica answered go back, never re-serialized. A ModelStreamInfer response is the replica's
ModelInferResponse bytes behind a two-field protobuf header (field 2, length-delimited).

Method by method:
    ServerLive          the gateway itself is live
    ServerReady         at least one replica is in rotation
    ServerMetadata, ModelReady, RepositoryIndex     forwarded to one replica in rotation
    ModelMetadata, ModelConfig      from the catalog (production view), else forwarded and rewritten
    ModelStatistics     every replica in rotation, counts and durations added per model and version
    ModelInfer          validated, then forwarded with retries on UNAVAILABLE
    ModelStreamInfer    each request forwarded as a ModelInfer; answers in request order
    RepositoryModelLoad/Unload      applied to every replica in rotation, then the catalog is refreshed
    shared memory, TraceSetting, LogSettings        UNIMPLEMENTED (see `_NOT_PROXIED`)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from time import perf_counter
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from raytron.serving.balancer import HealthChecker, ReplicaPool, ReplicaSlot
from raytron.serving.gateway_metrics import UNKNOWN_MODEL, GatewayMetrics
from raytron.serving.model_catalog import ModelCatalog
from raytron.serving.validation import UNPARSABLE, TritonStatus, check_model_infer

__all__ = ["InferenceService", "forward_metadata", "merge_statistics", "SERVICE"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
_OK = "OK"
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Headers that belong to the client's own HTTP/2 call, not to the request: never forwarded.
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "host", "accept-encoding"})
_NOT_PROXIED = {
    **{name: "shared-memory regions live inside one Triton process, and the gateway sends each request to whichever replica is "
             "least busy; send tensors in the request (raw_input_contents) or call a replica directly"
       for name in ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")},
    "TraceSetting": "trace settings are per Triton process; set them on each replica (tritonserver --trace-config)",
    "LogSettings": "log settings are per Triton process; set them on each replica (tritonserver --log-verbose, --log-info)",
}


def forward_metadata(metadata, *, strip_authorization: bool) -> tuple | None:
    """The request headers to pass to the replica: all but HTTP/2 and gRPC's own, and the gateway's `authorization`."""
    kept = [(k, v) for k, v in metadata
            if not (k.startswith((":", "grpc-")) or k in _HOP_HEADERS or (strip_authorization and k == "authorization"))]
    return tuple(kept) or None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# Triton's stream handler marks each response final: parameters {key: "triton_final_response" value {bool_param: true}}
# (field 4 of ModelInferResponse, one map entry). A unary ModelInfer answer lacks it; the gateway appends it
# (protobuf merges fields in any order, so appending to the serialized message is a valid encoding).
_FINAL_RESPONSE = pb.ModelInferResponse(parameters={"triton_final_response": pb.InferParameter(bool_param=True)}).SerializeToString()


def _stream_ok(response: bytes) -> bytes:
    """A ModelStreamInferResponse holding `response` (field 2, `infer_response`), as Triton's stream sends it, without parsing it."""
    return b"\x12" + _varint(len(response) + len(_FINAL_RESPONSE)) + response + _FINAL_RESPONSE


def _stream_error(message: str, request_id: str) -> bytes:
    # As Triton's stream handler: the error text, and an infer_response carrying only the request id.
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(id=request_id)).SerializeToString()


_KEYS = {"batch_stats": lambda s: s.batch_size, "memory_usage": lambda s: (s.type, s.id)}
_KEY_FIELDS = frozenset({"batch_size", "id"})


def _add_statistics(into, other) -> None:
    """Add `other`'s counts and durations to `into` (same message type); keys are kept, `last_inference` is the latest."""
    for field, value in other.ListFields():
        name = field.name
        target = getattr(into, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if key in target:
                    _add_statistics(target[key], item)
                else:
                    target[key].CopyFrom(item)
        elif field.is_repeated:
            key_of = _KEYS.get(name)
            existing = {key_of(x): x for x in target} if key_of else {}
            for item in value:
                if key_of and key_of(item) in existing:
                    _add_statistics(existing[key_of(item)], item)
                else:
                    target.add().CopyFrom(item)
        elif field.message_type is not None:
            _add_statistics(target, value)
        elif name == "last_inference":
            setattr(into, name, max(target, value))
        elif isinstance(value, int) and name not in _KEY_FIELDS:
            setattr(into, name, target + value)


def merge_statistics(responses: list[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """One ModelStatisticsResponse summing several replicas' (per model name and version)."""
    merged: dict[tuple[str, str], object] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            if key in merged:
                _add_statistics(merged[key], stats)
            else:
                merged[key] = pb.ModelStatistics()
                merged[key].CopyFrom(stats)
    return pb.ModelStatisticsResponse(model_stats=list(merged.values()))


class InferenceService:
    """Handlers of `inference.GRPCInferenceService` over a replica pool.

    Args:
        pool, health, catalog, metrics: the gateway's collaborators.
        token: the bearer token clients must send, or None.
        refresh_models: refreshes the catalog (single flight; the gateway's).
        health_interval_s: for messages.
        stream_window: requests of one stream in flight at once; reading pauses beyond it.
    """

    def __init__(self, *, pool: ReplicaPool, health: HealthChecker, catalog: ModelCatalog, metrics: GatewayMetrics, token: str | None,
                 refresh_models: Callable[[], Awaitable[None]], health_interval_s: float, stream_window: int = 64):
        self.pool, self.health, self.catalog, self.metrics = pool, health, catalog, metrics
        self._token = token.encode() if token is not None else None
        self._refresh_models = refresh_models
        self._health_interval_s = health_interval_s
        self._stream_window = stream_window

    def handler(self) -> grpc.GenericRpcHandler:
        """One generic handler for every method; all take and return bytes."""
        unary = {
            "ServerLive": self.server_live, "ServerReady": self.server_ready, "ModelReady": self.forward_any("ModelReady"),
            "ServerMetadata": self.forward_any("ServerMetadata"), "RepositoryIndex": self.forward_any("RepositoryIndex"),
            "ModelMetadata": self.model_view("ModelMetadata", pb.ModelMetadataRequest),
            "ModelConfig": self.model_view("ModelConfig", pb.ModelConfigRequest),
            "ModelStatistics": self.model_statistics, "ModelInfer": self.model_infer,
            "RepositoryModelLoad": self.repository_change("RepositoryModelLoad", pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": self.repository_change("RepositoryModelUnload", pb.RepositoryModelUnloadRequest),
            **{name: self.not_proxied(name) for name in _NOT_PROXIED},
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in unary.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self.model_stream_infer)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- admission ---------------------------------------------------------------------------------------------------

    def _authorized(self, metadata) -> bool:
        if self._token is None:
            return True
        for key, value in metadata:
            if key == "authorization":
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                scheme, _, token = text.strip().partition(" ")
                # compare_digest: the time taken does not depend on how much of the token matched.
                return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._token) and scheme.lower() == "bearer"
        return False

    async def _admit(self, context, model: str = UNKNOWN_MODEL) -> tuple | None:
        """Check the bearer token (aborting with UNAUTHENTICATED); return the headers to forward."""
        metadata = context.invocation_metadata() or ()
        if not self._authorized(metadata):
            self.metrics.reject(model, "UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong bearer token: send the metadata `authorization: Bearer <token>` with the gateway's `token`")
        return forward_metadata(metadata, strip_authorization=self._token is not None)

    @staticmethod
    def _parse(message_type, body: bytes):
        try:
            return message_type.FromString(body)
        except DecodeError:
            return None

    # -- forwarding --------------------------------------------------------------------------------------------------

    def _no_replica(self) -> TritonStatus:
        slots = list(self.pool)
        if not slots:
            return TritonStatus(_UNAVAILABLE, "the gateway has no Triton replicas; add one (`replicas`, or Gateway.add_replica)")
        detail = "; ".join(f"{s.address}: {s.last_error or 'not probed yet'}" for s in slots)
        return TritonStatus(_UNAVAILABLE, f"no Triton replica is ready ({detail}); the gateway probes them every "
                                          f"{self._health_interval_s:g} s (`health_interval_s`) and resumes when one answers ServerReady")

    async def _forward(self, method: str, body: bytes, metadata, context) -> bytes | TritonStatus:
        """Send to the least busy replica; on UNAVAILABLE, take it out of rotation and try the next, within the deadline."""
        tried: list[ReplicaSlot] = []
        answers: list[str] = []
        while True:
            slot = self.pool.pick(tried)
            if slot is None:
                break
            timeout = context.time_remaining()
            if timeout is not None and timeout <= 0:
                return TritonStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            slot.outstanding += 1
            slot.requests_total += 1
            try:
                return await slot.method(method)(body, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code is not _UNAVAILABLE:
                    return TritonStatus(code, details)
                tried.append(slot)
                answers.append(details)
                self.metrics.unavailable_answer(slot.address)
                if self.pool.mark_down(slot, f"{method} answered UNAVAILABLE: {details}"):
                    self.health.wake()  # probe now: a replica that is fine comes straight back
            finally:
                slot.outstanding -= 1
        if not tried:
            return self._no_replica()
        if len(set(answers)) == 1:  # one answer everywhere, e.g. Triton's own "version 2 is not at ready state": pass it on as is
            return TritonStatus(_UNAVAILABLE, answers[0])
        return TritonStatus(_UNAVAILABLE, f"every replica in rotation was UNAVAILABLE ({', '.join(s.address for s in tried)}); "
                                          f"last: {tried[-1].address}: {answers[-1]}")

    async def _call(self, slot: ReplicaSlot, method: str, body: bytes, metadata, timeout) -> bytes | TritonStatus:
        slot.outstanding += 1
        slot.requests_total += 1
        try:
            return await slot.method(method)(body, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return TritonStatus(exc.code(), exc.details() or "")
        finally:
            slot.outstanding -= 1

    async def _fan_out(self, method: str, body: bytes, metadata, context) -> list[tuple[ReplicaSlot, bytes | TritonStatus]]:
        slots = self.pool.healthy()
        timeout = context.time_remaining()
        answers = await asyncio.gather(*(self._call(s, method, body, metadata, timeout) for s in slots))
        return list(zip(slots, answers))

    @staticmethod
    async def _answer(context, answer: bytes | TritonStatus) -> bytes:
        if isinstance(answer, TritonStatus):
            await context.abort(answer.code, answer.message)
        return answer

    # -- inference ---------------------------------------------------------------------------------------------------

    async def _infer(self, body: bytes, metadata, context):
        """(answer, model label, answered locally, parsed request or None)."""
        request = self._parse(pb.ModelInferRequest, body)
        if request is None:
            return UNPARSABLE, UNKNOWN_MODEL, True, None
        catalog = self.catalog
        if catalog.refreshed_at is None:  # no replica has been ready yet: let the forwarding answer (UNAVAILABLE, or Triton)
            return await self._forward("ModelInfer", body, metadata, context), UNKNOWN_MODEL, False, request
        status = check_model_infer(request, catalog.specs, catalog.known)
        if status is not None and status.code is grpc.StatusCode.NOT_FOUND and catalog.stale(1.0):
            try:
                await self._refresh_models()  # loaded on the replicas behind the gateway's back?
            except Exception as exc:  # noqa: BLE001 - answer from what the catalog knows
                log.debug("model catalog refresh failed: %s", exc)
            status = check_model_infer(request, catalog.specs, catalog.known)
        label = request.model_name if request.model_name in catalog.known else UNKNOWN_MODEL
        if status is not None:
            return status, label, True, request
        return await self._forward("ModelInfer", body, metadata, context), label, False, request

    async def model_infer(self, body: bytes, context) -> bytes:
        started = perf_counter()
        metadata = await self._admit(context)
        label, code = UNKNOWN_MODEL, "CANCELLED"
        try:
            answer, label, local, _ = await self._infer(body, metadata, context)
            if isinstance(answer, TritonStatus):
                code = answer.code.name
                if local:
                    self.metrics.reject(label, code)
                await context.abort(answer.code, answer.message)
            code = _OK
            return answer
        finally:
            self.metrics.observe("ModelInfer", label, code, perf_counter() - started)

    async def _stream_one(self, body: bytes, metadata, context) -> bytes:
        started = perf_counter()
        label, code = UNKNOWN_MODEL, "CANCELLED"
        try:
            answer, label, local, request = await self._infer(body, metadata, context)
            if isinstance(answer, TritonStatus):
                code = answer.code.name
                if local:
                    self.metrics.reject(label, code)
                return _stream_error(answer.message, request.id if request is not None else "")
            code = _OK
            return _stream_ok(answer)
        finally:
            self.metrics.observe("ModelStreamInfer", label, code, perf_counter() - started)

    async def model_stream_infer(self, request_iterator, context):
        """Each request is forwarded as it arrives; answers go back in request order, as Triton's non-decoupled streams do.

        A request that is not a ModelInferRequest gets an `error_message` ("Unable to parse request")
        rather than Triton's silence, so that every request still gets exactly one answer.
        """
        metadata = await self._admit(context)
        pending: asyncio.Queue = asyncio.Queue(self._stream_window)

        async def read() -> None:
            try:
                async for body in request_iterator:
                    await pending.put(asyncio.ensure_future(self._stream_one(body, metadata, context)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the client broke the stream: answer what was read, then end
                log.debug("stream read ended: %s", exc)
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                task = await pending.get()
                if task is None:
                    break
                yield await task
        finally:
            reader.cancel()
            while not pending.empty():
                task = pending.get_nowait()
                if task is not None:
                    task.cancel()

    # -- everything else ---------------------------------------------------------------------------------------------

    async def server_live(self, body: bytes, context) -> bytes:
        await self._admit(context)
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, body: bytes, context) -> bytes:
        await self._admit(context)
        return pb.ServerReadyResponse(ready=self.pool.any_healthy()).SerializeToString()

    def forward_any(self, method: str):
        async def handle(body: bytes, context) -> bytes:
            metadata = await self._admit(context)
            answer = await self._forward(method, body, metadata, context)
            if method == "ModelReady" and isinstance(answer, TritonStatus) and answer.code is _UNAVAILABLE:
                return pb.ModelReadyResponse(ready=False).SerializeToString()  # no replica: the model is not ready anywhere
            return await self._answer(context, answer)
        return handle

    def model_view(self, method: str, request_type):
        async def handle(body: bytes, context) -> bytes:
            metadata = await self._admit(context)
            request = self._parse(request_type, body)
            if request is None:
                return await self._answer(context, UNPARSABLE)
            cached = self.catalog.cached(method, request.name, request.version)
            if cached is not None:
                return cached
            answer = await self._forward(method, body, metadata, context)
            if isinstance(answer, bytes):
                answer = self.catalog.store(method, request.name, request.version, answer)
            return await self._answer(context, answer)
        return handle

    async def model_statistics(self, body: bytes, context) -> bytes:
        metadata = await self._admit(context)
        if self._parse(pb.ModelStatisticsRequest, body) is None:
            return await self._answer(context, UNPARSABLE)
        answers = await self._fan_out("ModelStatistics", body, metadata, context)
        if not answers:
            return await self._answer(context, self._no_replica())
        good = [pb.ModelStatisticsResponse.FromString(a) for _, a in answers if isinstance(a, bytes)]
        if not good:
            return await self._answer(context, answers[0][1])  # e.g. Triton's "requested model 'x' is not available"
        return merge_statistics(good).SerializeToString()

    def repository_change(self, method: str, request_type):
        async def handle(body: bytes, context) -> bytes:
            metadata = await self._admit(context)
            if self._parse(request_type, body) is None:
                return await self._answer(context, UNPARSABLE)
            answers = await self._fan_out(method, body, metadata, context)
            if not answers:
                return await self._answer(context, self._no_replica())
            try:
                await self._refresh_models()
            except Exception as exc:  # noqa: BLE001 - the change itself is done; the next refresh catches up
                log.warning("model catalog refresh after %s failed: %s", method, exc)
            failed = [(s, a) for s, a in answers if isinstance(a, TritonStatus)]
            if not failed:
                return answers[0][1]
            if len(failed) == len(answers) and len({a for _, a in failed}) == 1:
                return await self._answer(context, failed[0][1])  # every replica said the same: Triton's own answer
            done = [s.address for s, a in answers if isinstance(a, bytes)]
            detail = "; ".join(f"{s.address}: {a.code.name}: {a.message}" for s, a in failed)
            return await self._answer(context, TritonStatus(failed[0][1].code, f"{method} failed on {len(failed)} of {len(answers)} "
                                                                                f"replicas ({detail}); it succeeded on {', '.join(done) or 'none'}"))
        return handle

    def not_proxied(self, method: str):
        async def handle(body: bytes, context) -> bytes:
            await self._admit(context)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the raytron gateway does not proxy {method}: {_NOT_PROXIED[method]}")
        return handle
