"""Tiny production model repositories for gateway tests: real ONNX files and config.pbtxt, built in a temp dir.

`build_repository(root)` writes four models, each small enough to export in well under a second:

    mlp      x FP32 [-1, 16] -> logits FP32 [-1, 4]                           max_batch_size 8, dynamic batching
    multi    a INT32 [-1, 4], b FP32 [-1, 4] -> sum FP32 [-1, 4], doubled INT32 [-1, 4]   max_batch_size 8
    nobatch  x FP32 [-1, 3] -> y FP32 [-1, 3]                                 max_batch_size 0 (no batch dim, a variable dim)
    slow     x FP32 [-1, 2] -> y FP32 [-1, 2]                                 max_batch_size 8; a lone request waits
             SLOW_QUEUE_S in the dynamic batcher for a batch of 8 (a slow model without burning CPU)

`reference(name, inputs)` computes what each model must answer, with torch, for comparisons.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from raytron.serving.modelconfig import ModelConfig, write_model_config

MAX_BATCH = 8
SLOW_QUEUE_S = 4.0


def _modules():
    import torch

    torch.manual_seed(0)

    class Multi(torch.nn.Module):
        def forward(self, a, b):
            return a.to(torch.float32) + b, a * 2

    class NoBatch(torch.nn.Module):
        def forward(self, x):
            return x * 3.0 - 1.0

    class Slow(torch.nn.Module):
        def forward(self, x):
            return x + 1.0

    mlp = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    return {"mlp": mlp, "multi": Multi().eval(), "nobatch": NoBatch().eval(), "slow": Slow().eval()}


_MODULES: dict | None = None


def modules() -> dict:
    global _MODULES
    if _MODULES is None:
        _MODULES = _modules()
    return _MODULES


def _tensor(collection, name: str, dtype: str, dims: list[int]) -> None:
    t = collection.add()
    t.name, t.data_type = name, _DTYPES[dtype]
    t.dims.extend(dims)


_DTYPES = {name: mc.DataType.Value(name) for name in ("TYPE_FP32", "TYPE_INT32")}


def _config(name: str, max_batch: int, inputs, outputs, *, batching: bool | float) -> ModelConfig:
    config = ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch)
    for tname, dtype, dims in inputs:
        _tensor(config.input, tname, dtype, dims)
    for tname, dtype, dims in outputs:
        _tensor(config.output, tname, dtype, dims)
    if batching is True:
        config.dynamic_batching.max_queue_delay_microseconds = 100
    elif batching:
        config.dynamic_batching.preferred_batch_size.append(max_batch)
        config.dynamic_batching.max_queue_delay_microseconds = int(batching * 1e6)
    group = config.instance_group.add()
    group.count, group.kind = 1, group.KIND_CPU
    return config


def build_repository(root: Path) -> Path:
    """Export the models under `root/repo` (ONNX, legacy exporter) and return the repository path."""
    import torch

    repo = Path(root) / "repo"
    mods = modules()
    specs = {
        "mlp": (MAX_BATCH, [("x", "TYPE_FP32", [16])], [("logits", "TYPE_FP32", [4])], (torch.randn(2, 16),), True),
        "multi": (MAX_BATCH, [("a", "TYPE_INT32", [4]), ("b", "TYPE_FP32", [4])],
                  [("sum", "TYPE_FP32", [4]), ("doubled", "TYPE_INT32", [4])],
                  (torch.ones(2, 4, dtype=torch.int32), torch.randn(2, 4)), True),
        "nobatch": (0, [("x", "TYPE_FP32", [-1, 3])], [("y", "TYPE_FP32", [-1, 3])], (torch.randn(2, 3),), False),
        "slow": (MAX_BATCH, [("x", "TYPE_FP32", [2])], [("y", "TYPE_FP32", [2])], (torch.randn(2, 2),), SLOW_QUEUE_S),
    }
    for name, (max_batch, inputs, outputs, example, batching) in specs.items():
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        in_names, out_names = [i[0] for i in inputs], [o[0] for o in outputs]
        # Every model here has a variable first axis: the batch, or nobatch's variable dim.
        dynamic = {n: {0: "batch"} for n in in_names + out_names}
        with warnings.catch_warnings():  # the legacy exporter (dynamo=False: no onnxscript needed, 7x faster) warns that it is legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(mods[name], example, str(version / "model.onnx"), input_names=in_names, output_names=out_names,
                              dynamic_axes=dynamic, dynamo=False)
        write_model_config(repo / name / "config.pbtxt", _config(name, max_batch, inputs, outputs, batching=batching))
    return repo


def reference(name: str, *inputs: np.ndarray) -> list[np.ndarray]:
    """The eager model's outputs for `inputs` (numpy in, numpy out)."""
    import torch

    with torch.inference_mode():
        out = modules()[name](*(torch.from_numpy(x) for x in inputs))
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [t.numpy() for t in out]


@contextmanager
def running_replicas(repo: Path, count: int, *, first_index: int = 0):
    """`count` real tritonserver replicas of `repo` on free loopback ports, started together; stopped on exit, whatever happened."""
    from raytron.serving.triton import ReplicaConfig, make_work_dir, remove_work_dir, start_replica

    work = make_work_dir("raytron-gwtest-")
    config = ReplicaConfig(repo=repo, work_dir=work, stop_timeout_s=5)
    replicas = []
    try:
        for i in range(count):
            replicas.append(start_replica(config, first_index + i, wait=False))
        for replica in replicas:
            replica.wait_ready(config.startup_timeout_s)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop(timeout_s=5)
        remove_work_dir(work)
