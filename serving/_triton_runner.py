"""Python-backend model that runs an ONNX or TorchScript file as Triton's own backends would.

The `tritonserver` bundled in the nvidia-pytriton wheel has only the Python backend, so the local
launcher (`raytron.serving.triton`) serves each model of a production repository through this file:
it is linked into every version directory as `model.py`, next to a link to the real `model.onnx`
or `model.pt`, under a config.pbtxt that keeps the production config's tensor names, dtypes, dims,
`max_batch_size`, dynamic batching and instance count, with `backend: "python"` and two parameters:

    raytron_platform    onnxruntime_onnx | pytorch_libtorch   (the production platform)
    raytron_model_file  the model file's name in the version directory
    raytron_threads     intra-op threads per instance (default 1)

Triton's Python backend hands a dynamic batch over as a list of requests and leaves merging to the
model; the ONNX Runtime and libtorch backends run the merged batch once. This runner does the same:
it concatenates the requests' inputs along the batch axis, runs once, and splits the outputs.

This file runs inside Triton's Python stub, so it imports nothing from raytron (the stub's Python
does not process the editable install's .pth files); only numpy, onnxruntime or torch.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

_BATCHLESS = 0


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        self.platform = params.get("raytron_platform", "onnxruntime_onnx")
        path = os.path.join(args["model_repository"], args["model_version"], params.get("raytron_model_file", "model.onnx"))
        threads = int(params.get("raytron_threads", "1") or 1)
        self.batched = int(config.get("max_batch_size", 0)) > _BATCHLESS
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        if self.platform == "onnxruntime_onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
            self.run = self._run_onnx
        elif self.platform == "pytorch_libtorch":
            import torch

            torch.set_num_threads(threads)
            self.module = torch.jit.load(path, map_location="cpu")
            self.module.eval()
            self.run = self._run_torchscript
        else:
            raise pb_utils.TritonModelException(f"raytron's local runner serves onnxruntime_onnx and pytorch_libtorch models, not {self.platform!r}")

    def _run_onnx(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run([name for name, _ in self.outputs], feeds)

    def _run_torchscript(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        # libtorch's backend passes inputs positionally in config order; so do we.
        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name, _ in self.inputs))
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[name] for name, _ in self.outputs)
        return [t.detach().cpu().numpy() for t in result]

    def execute(self, requests: list) -> list:
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name, _ in self.inputs] for r in requests]
        if not self.batched or len(requests) == 1:
            return [self._respond(self._infer(a)) for a in arrays]
        sizes = [a[0].shape[0] for a in arrays]
        merged = [np.concatenate([a[i] for a in arrays]) for i in range(len(self.inputs))]
        try:
            outputs = self.run({name: x for (name, _), x in zip(self.inputs, merged)})
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}")) for _ in requests]
        bounds = np.cumsum([0] + sizes)
        return [self._respond([o[bounds[k]:bounds[k + 1]] for o in outputs]) for k in range(len(requests))]

    def _infer(self, arrays: list[np.ndarray]):
        try:
            return self.run({name: x for (name, _), x in zip(self.inputs, arrays)})
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the model stays loaded
            return exc

    def _respond(self, outputs):
        if isinstance(outputs, Exception):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {outputs}"))
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value).astype(dtype, copy=False)) for (name, dtype), value in zip(self.outputs, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.session = self.module = None
