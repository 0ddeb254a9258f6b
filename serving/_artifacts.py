"""Writing a module as an ONNX or TorchScript file, and running such a file for the parity check.

Both exporters see the module through `PositionalModule`: positional tensor inputs in a fixed order,
a tuple of tensors out. Every input and output has a dynamic batch axis (dim 0).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raytron.serving.errors import ExportError
from raytron.serving.parity import Runner

#: The model file Triton loads for each export format, and the platform that names its backend.
FORMAT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
FORMAT_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}


@dataclass(frozen=True)
class Artifact:
    """One exported file and what tracing reported while writing it."""

    format: str
    path: Path
    tracer_warnings: tuple[str, ...]
    fixed_devices: tuple[str, ...] = ()
    """TorchScript: devices the trace hard-codes for tensors created inside forward(), with where
    (`cpu at recipes.py:77`). Such a file runs only on that device, whatever Triton's instance kind."""


class PositionalModule(nn.Module):
    """`module(*inputs)` with its outputs as a tuple in `output_names` order.

    A module may return a tensor, a tuple or list of tensors, or a dict keyed by output name; the
    exporters and the parity check all see the same flat tuple.
    """

    def __init__(self, module: nn.Module, output_names: Sequence[str]):
        super().__init__()
        self.module = module
        self.output_names = tuple(output_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, Mapping):
            missing = [n for n in self.output_names if n not in out]
            if missing:
                raise ExportError(f"the model returned a dict with keys {sorted(out)}, which lacks the output(s) {missing} named in `output_names`")
            return tuple(out[n] for n in self.output_names)
        if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
            return tuple(out)
        raise ExportError(f"the model returned {type(out).__name__}; export needs a tensor, a tuple or list of tensors, or a dict of tensors")


def module_device(module: nn.Module) -> torch.device:
    """Where the module's weights live (CPU for a module without any)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def eager_runner(module: PositionalModule) -> Runner:
    """The reference: the module itself, in inference mode, on its own device."""
    device = module_device(module)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in inputs))
        return [to_numpy(t, name) for t, name in zip(out, module.output_names)]

    return run


def to_numpy(t: torch.Tensor, name: str) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        raise ExportError(f"output `{name}` is bfloat16, which numpy (and so the parity check and Triton's ONNX backend clients) cannot hold; return `.float()` from forward")
    return t.detach().cpu().numpy()


def _traced(record: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The tracer's own warnings (data-dependent control flow frozen into the graph), deduplicated."""
    seen: dict[str, None] = {}
    for w in record:
        if issubclass(w.category, torch.jit.TracerWarning):
            first_sentence = str(w.message).strip().splitlines()[0].split(". ")[0].rstrip(".")
            seen.setdefault(first_sentence, None)
    return tuple(seen)


def write_onnx(module: PositionalModule, example: Sequence[torch.Tensor], input_names: Sequence[str], output_names: Sequence[str], path: Path, *, opset: int) -> Artifact:
    """Export with the legacy TorchScript-based exporter and a dynamic axis 0 on every tensor.

    `dynamo=False`: torch 2.13's default (dynamo) exporter needs onnxscript, which raytron does not
    install; the legacy one is also ~7x faster to export here (shared/environment.md).
    """
    dynamic_axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(module, tuple(example), str(path), input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ExportError(f"the ONNX exporter failed (opset {opset}): {str(exc).strip().splitlines()[0]}; try `--format torchscript`, or another `opset`") from None
    return Artifact("onnx", path, _traced(record))


def onnx_runner(path: Path, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """onnxruntime on the written file, checked to expose exactly the inputs and outputs exported."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_inputs = [i.name for i in session.get_inputs()]
    if got_inputs != list(input_names):
        unused = [n for n in input_names if n not in got_inputs]
        why = (f"; forward() does not use {unused} and the ONNX exporter drops unused inputs: leave them out of the example inputs, or use "
               "`format=\"torchscript\"`") if unused else ""
        raise ExportError(f"the ONNX graph's inputs are {got_inputs}, expected {list(input_names)}{why}")
    got_outputs = [o.name for o in session.get_outputs()]
    if got_outputs != list(output_names):
        raise ExportError(f"the ONNX graph's outputs are {got_outputs}, expected {list(output_names)}")

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(session.run(list(output_names), {n: np.ascontiguousarray(a) for n, a in zip(input_names, inputs)}))

    return run


def write_torchscript(module: PositionalModule, example: Sequence[torch.Tensor], path: Path) -> Artifact:
    """Trace (not script) the module: tracing accepts any module whose forward runs on tensors; what
    tracing cannot capture (data-dependent Python control flow) the parity check catches."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            # check_trace re-runs the trace on the same inputs, which proves nothing the parity
            # check (other samples, other batch sizes) does not.
            traced = torch.jit.trace(module, tuple(example), check_trace=False)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ExportError(f"torch.jit.trace failed: {str(exc).strip().splitlines()[0]}; try `--format onnx`") from None
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export, but TorchScript is what
        # Triton's pytorch_libtorch platform loads.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(path))
    return Artifact("torchscript", path, _traced(record), fixed_devices=_fixed_devices(traced))


_DEVICE_CONSTANT = re.compile(r'Device = prim::Constant\[value="([^"]+)"\]\(\)[^#\n]*(?:#\s*(\S+))?')


def _fixed_devices(traced: torch.jit.ScriptModule) -> tuple[str, ...]:
    """Tracing turns `torch.arange(n, device=x.device)` into a constant device (the one traced on)."""
    found: dict[str, None] = {}
    for match in _DEVICE_CONSTANT.finditer(str(traced.inlined_graph)):
        device, where = match.group(1), match.group(2)
        found.setdefault(f"{device} at {Path(where).name.rsplit(':', 1)[0]}" if where else device, None)
    return tuple(found)


def torchscript_runner(path: Path, output_names: Sequence[str]) -> Runner:
    """The written file loaded back with torch.jit.load, as Triton's libtorch backend loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see write_torchscript
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = loaded(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return [to_numpy(t, name) for t, name in zip(out, output_names)]

    return run


def write_and_load(format: str, module: PositionalModule, example: Sequence[torch.Tensor], input_names: Sequence[str], output_names: Sequence[str],
                   directory: Path, *, opset: int) -> tuple[Artifact, Runner]:
    """Write `module` in `format` into `directory` and load the file back for the parity check."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FORMAT_FILES[format]
    with torch.no_grad():
        if format == "onnx":
            return write_onnx(module, example, input_names, output_names, path, opset=opset), onnx_runner(path, input_names, output_names)
        return write_torchscript(module, example, path), torchscript_runner(path, output_names)
