"""The `serving` theme's Ray Serve baseline: the same ONNX file behind Ray Serve's gRPC ingress,
speaking Triton's `GRPCInferenceService` so that the same tritonclient code loads it unchanged.

Run it only inside a private network namespace (Ray Serve binds its gRPC proxy and every replica's
internal gRPC server to `[::]` whatever it is asked; bench/serving.py starts it that way):

    unshare -n sh -c 'ip link set lo up; exec python bench/_serving_rayserve.py <json config>'

with RAY_TMPDIR, HOME and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set by the caller. It starts a local
Ray (no dashboard) and Serve with `gRPCOptions(grpc_servicer_functions=[tritonclient's
add_GRPCInferenceServiceServicer_to_server])`, deploys one app whose deployment answers
`ModelInfer` (Serve's gRPC proxy calls the deployment method named after the gRPC method; with a
single app no `application` metadata is needed, see ray/serve/_private/proxy_router.py
`match_route`), checks one answer, prints `RAYSERVE_READY {json}` and serves until its stdin closes.

The deployment mirrors the Triton replica's model config: one replica, onnxruntime with 1 intra-op
thread, and (when the Triton config batches dynamically) `@serve.batch` with the same maximum batch
size and the same wait, so both servers may merge concurrent batch-1 requests the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

READY_PREFIX = "RAYSERVE_READY "
SERVICER = "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
APP = "mlp"


def _deployment(max_ongoing_requests: int):
    from ray import serve
    from tritonclient.grpc import service_pb2

    @serve.deployment(num_replicas=1, max_ongoing_requests=max_ongoing_requests, ray_actor_options={"num_cpus": 0})
    class OnnxModel:
        def __init__(self, model_path: str, max_batch_size: int, batch_wait_s: float) -> None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
            self.session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
            self.batching = max_batch_size > 1 and batch_wait_s > 0
            if self.batching:
                self.run_batch.set_max_batch_size(max_batch_size)
                self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0001)
        async def run_batch(self, xs: list[np.ndarray]) -> list[np.ndarray]:
            sizes = [x.shape[0] for x in xs]
            y = self.session.run(["logits"], {"x": np.concatenate(xs)})[0]
            return np.split(y, np.cumsum(sizes)[:-1])

        async def ModelInfer(self, request):  # noqa: N802 - the gRPC method's name, which Serve routes on
            # tritonclient sends tensors as raw_input_contents (little-endian bytes, in input order).
            spec = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(spec.shape))
            y = await self.run_batch(x) if self.batching else self.session.run(["logits"], {"x": x})[0]
            response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
            out = response.outputs.add()
            out.name, out.datatype = "logits", "FP32"
            out.shape.extend(y.shape)
            response.raw_output_contents.append(np.ascontiguousarray(y, dtype=np.float32).tobytes())
            return response

    return OnnxModel


def _alias_triton_protos(folder: Path) -> None:
    """Make tritonclient's request messages picklable in Ray's workers.

    tritonclient's generated `service_pb2` builds its messages under the module name
    `grpc_service_pb2` (`_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'grpc_service_pb2', ...)`),
    which is not importable; Serve's gRPC proxy pickles every request message to send it to the
    replica (`gRPCProxyRequest.serialized_replica_arg`), and that fails with "Can't pickle
    <class 'grpc_service_pb2.ModelInferRequest'>: import of module 'grpc_service_pb2' failed".
    A one-line module of that name re-exporting tritonclient's classes, on the PYTHONPATH that the
    raylet (started by `ray.init` below) passes to every worker, fixes it without touching the client.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grpc_service_pb2.py").write_text("from tritonclient.grpc.service_pb2 import *  # noqa: F403 - see bench/_serving_rayserve.py\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    sys.path.insert(0, str(folder))


def main(config: dict) -> int:
    _alias_triton_protos(Path(config["work_dir"]) / "pyshim")
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions, HTTPOptions

    t0 = time.monotonic()
    ray.init(num_cpus=config["num_cpus"], include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=config["http_port"]),
                    grpc_options=gRPCOptions(port=config["grpc_port"], grpc_servicer_functions=[SERVICER]))
        app = _deployment(config["max_ongoing_requests"]).bind(config["model_path"], config["max_batch_size"], config["batch_wait_s"])
        # An app without a route prefix gets no proxy endpoint and every gRPC call is NOT_FOUND; "/" is the default.
        serve.run(app, name=APP, route_prefix="/")
        address = f"127.0.0.1:{config['grpc_port']}"
        diff = _check(address, config["reference"], timeout_s=60.0)
        sys.stdout.write(READY_PREFIX + json.dumps({"address": address, "startup_s": time.monotonic() - t0, "max_abs_diff": diff}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # serve until the parent closes our stdin (or dies)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def _check(address: str, reference: str, timeout_s: float) -> float:
    """One ModelInfer through the proxy, compared with the reference; retried while the proxy starts."""
    import tritonclient.grpc as grpcclient

    ref = np.load(reference)
    client = grpcclient.InferenceServerClient(address)
    inp = grpcclient.InferInput("x", list(ref["x"].shape), "FP32")
    inp.set_data_from_numpy(ref["x"])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return float(np.abs(client.infer("mlp", [inp], client_timeout=10.0).as_numpy("logits") - ref["logits"]).max())
        except Exception:  # noqa: BLE001 - the gRPC proxy may not listen yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
