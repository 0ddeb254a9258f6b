"""The `serving` theme's model: a seeded 784-256-10 MLP exported once to ONNX, written as a Triton
production repository (`mlp/config.pbtxt` + `mlp/1/model.onnx`) that every target serves, plus a
reference input and the logits onnxruntime computes for it (every target's answer is checked
against them before it is timed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODEL_NAME", "INPUT", "OUTPUT", "ServingModel", "build_model"]

MODEL_NAME, INPUT, OUTPUT = "mlp", "x", "logits"
FEATURES, HIDDEN, CLASSES = 784, 256, 10


@dataclass(frozen=True)
class ServingModel:
    """Where the exported model lives."""

    repo: Path
    """Production repository (ONNX Runtime platform) for the Triton replica."""
    onnx_path: Path
    reference_path: Path
    """npz with `x` [1, 784] float32 and the `logits` onnxruntime gives for it."""
    max_batch_size: int
    batch_delay_us: int


def build_model(work: Path, *, max_batch_size: int, batch_delay_us: int) -> ServingModel:
    """Export the MLP (legacy exporter: fast, no onnxscript) and write its repository under `work`.

    Triton's config: max_batch_size `max_batch_size`, dynamic batching with
    `max_queue_delay_microseconds` = `batch_delay_us` (0: batching off), one CPU instance.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from tritonclient.grpc import model_config_pb2 as mc

    from raytron.serving.modelconfig import ModelConfig, write_model_config

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)).eval()
    repo = work / "repo"
    version = repo / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path = version / "model.onnx"
    torch.onnx.export(module, torch.randn(2, FEATURES), str(onnx_path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False)
    config = ModelConfig(name=MODEL_NAME, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for collection, name, dims in ((config.input, INPUT, FEATURES), (config.output, OUTPUT, CLASSES)):
        tensor = collection.add()
        tensor.name, tensor.data_type = name, mc.TYPE_FP32
        tensor.dims.extend([dims])
    if batch_delay_us > 0:
        config.dynamic_batching.max_queue_delay_microseconds = batch_delay_us
    group = config.instance_group.add()
    group.count, group.kind = 1, group.KIND_CPU
    write_model_config(repo / MODEL_NAME / "config.pbtxt", config)

    x = np.random.default_rng(0).random((1, FEATURES), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run([OUTPUT], {INPUT: x})[0]
    reference = work / "reference.npz"
    np.savez(reference, x=x, logits=logits)
    return ServingModel(repo=repo, onnx_path=onnx_path, reference_path=reference, max_batch_size=max_batch_size, batch_delay_us=batch_delay_us)
