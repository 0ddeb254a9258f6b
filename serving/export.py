"""Export a PyTorch module (or a training checkpoint) into a Triton model repository, with a parity check.

    export_module(policy, {"obs": obs_int32, "feat": feat_fp32}, ["action", "value"], repo="model_repository", name="policy", format="both")
    export_checkpoint("runs/digits-mlp", name="digits")           # or `raytron export runs/digits-mlp --name digits`

What lands in the repository (Triton's layout)::

    REPO/NAME/config.pbtxt                    platform onnxruntime_onnx, batch axis, dynamic batching, instances
    REPO/NAME/N/model.onnx
    REPO/NAME/N/raytron-lineage.json          source checkpoint, parity result, library versions
    REPO/NAME-torchscript/config.pbtxt        with `format="both"`: platform pytorch_libtorch
    REPO/NAME-torchscript/N/model.pt

Nothing is written unless every exported file passes the parity check. Each version directory is
assembled under a hidden name inside REPO/NAME and renamed into place, so Triton (which polls the
repository) never sees half a version; config.pbtxt is written atomically after it.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raytron.serving.errors import ExportError
from raytron.serving.parity import ParityReport

__all__ = ["ExportConfig", "ExportedModel", "ExportResult", "export_module", "export_checkpoint", "LINEAGE_FILE", "TORCHSCRIPT_SUFFIX", "tensor_name"]

#: Written next to each model file: where the model came from and how well it matched.
LINEAGE_FILE = "raytron-lineage.json"
#: With `format="both"` the TorchScript model is a second model directory, `NAME-torchscript`: a
#: Triton model directory has one platform, so two formats cannot be two versions of one model.
TORCHSCRIPT_SUFFIX = "-torchscript"
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TENSOR_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")


class ExportConfig(BaseModel):
    """How to export a model into a Triton model repository (the SDK's and `raytron export`'s settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Model name: the directory under `repo` (letters, digits, '_', '.', '-')."""
    repo: Path = Path("model_repository")
    """The Triton model repository (created if missing)."""
    format: Literal["onnx", "torchscript", "both"] = "onnx"
    """`onnx` (platform onnxruntime_onnx), `torchscript` (pytorch_libtorch), or `both`: ONNX under `name`
    and TorchScript under `name`-torchscript, with the same version number."""
    version: int | None = Field(None, ge=1)
    """Version directory to create; None: one more than the highest existing (1 for a new model)."""
    max_batch_size: int | None = Field(None, ge=1)
    """Largest batch Triton may send; None: keep an existing config's value, else 64."""
    max_queue_delay_us: int | None = Field(None, ge=0)
    """How long Triton's dynamic batcher waits to fill a batch; None: keep an existing config's value, else 100."""
    instance_count: int | None = Field(None, ge=1)
    """Model instances (copies executing in parallel); None: keep an existing config's value, else 1."""
    kind: Literal["cpu", "gpu"] | None = None
    """Where the instances run; None: keep an existing config's value, else cpu."""
    atol: float | None = Field(None, gt=0)
    """Largest absolute difference allowed between exported and eager float outputs; None: 1e-4 for
    fp32 (see `raytron.serving.parity.DEFAULT_ATOL`). Integer outputs must always be equal."""
    samples: int = Field(64, ge=1)
    """`export_checkpoint`: real samples taken from the run's shards for the parity check."""
    opset: int = Field(17, ge=9, le=20)
    """ONNX opset of the export. 20 is the highest torch's TorchScript-based exporter writes; 17 is read
    by every ONNX Runtime since 1.12 (Triton 22.08 and later)."""

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not _MODEL_NAME_RE.match(value):
            raise ValueError("must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit (it names a directory)")
        return value

    @property
    def formats(self) -> tuple[str, ...]:
        return ("onnx", "torchscript") if self.format == "both" else (self.format,)

    def model_name(self, format: str) -> str:
        """The model directory a format goes to."""
        return self.name + TORCHSCRIPT_SUFFIX if (self.format == "both" and format == "torchscript") else self.name


@dataclass(frozen=True)
class ExportedModel:
    """One model version written to the repository."""

    name: str
    version: int
    format: str
    platform: str
    path: Path
    """The version directory, REPO/NAME/N."""
    model_file: Path
    config_path: Path
    config_status: Literal["created", "updated", "unchanged"]
    lineage_path: Path
    parity: ParityReport


@dataclass(frozen=True)
class ExportResult:
    """Everything one export wrote (one model, or two with `format="both"`)."""

    models: tuple[ExportedModel, ...]
    config: ExportConfig
    sample_source: dict[str, Any]
    """Where the parity samples came from (`kind`, and for a checkpoint `manifest`, `split`, `samples`)."""


def tensor_name(format: str, name: str, index: int) -> str:
    """The tensor's name in config.pbtxt: its own name for ONNX; `<name>__<index>` for TorchScript.

    A TorchScript file records no output names, so Triton's libtorch backend maps config outputs to
    the module's outputs by the `<name>__<index>` convention (or, failing that, by config order with a
    warning); inputs may instead use forward()'s argument names. We use `<name>__<index>` for both:
    every libtorch backend release accepts it, and it does not depend on what tracing keeps of
    forward()'s signature. Source: triton-inference-server/pytorch_backend, GetNamingConvention and
    ValidateOutputs in src/libtorch.cc (r24.10, Triton 2.51) and src/pt/model_instance_state.cc (main).
    """
    return name if format == "onnx" else f"{name}__{index}"


def export_module(
    module: Any, example_inputs: Mapping[str, Any], output_names: Sequence[str], config: ExportConfig | None = None, *,
    lineage: Mapping[str, Any] | None = None, sample_source: Mapping[str, Any] | None = None, **fields: Any,
) -> ExportResult:
    """Export any `torch.nn.Module` with named inputs and outputs, check parity, and write it to a repository.

    The module is called as `module(*example_inputs.values())` (positionally, in the mapping's order)
    and may return a tensor, a tuple or list of tensors, or a dict keyed by `output_names`. Axis 0
    of every input and output is the batch axis and is exported as dynamic; dtypes and the other
    dims come from the example inputs and from running the module on them.

    Args:
        module: The model; exported in eval mode (its mode is restored afterwards).
        example_inputs: Input name -> array (numpy, or a torch tensor), samples along axis 0. These
            are also the parity samples: pass real ones.
        output_names: One name per output, in the order the module returns them.
        config: The export settings; or give them as keyword arguments (`repo=`, `name=`, `format=`...).
        lineage: Where the model came from, recorded under `source` in the lineage file.
        sample_source: Where the example inputs came from (e.g. a split), recorded with the parity result.
        **fields: `ExportConfig` fields, overriding `config`'s.

    Returns:
        The model versions written.

    Raises:
        ExportError: bad inputs or settings, an export that fails, an existing version, or a
            config.pbtxt of the same model that describes other tensors.
        ParityError: an exported file's outputs differ from the eager model's; nothing was written.

    Example:
        >>> export_module(policy, {"obs": obs, "feat": feat}, ["action", "value"], repo="repo", name="policy", format="both")
    """
    import torch

    from raytron.serving import _artifacts as art
    from raytron.serving import _repository as rep
    from raytron.serving.parity import check_parity, raise_for_parity

    cfg = resolve_config(config, fields)
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"`module` must be a torch.nn.Module, not {type(module).__name__}")
    names, arrays = _example_arrays(example_inputs)
    output_names = _output_names(output_names, names)
    targets = [(fmt, cfg.model_name(fmt)) for fmt in cfg.formats]
    version = rep.choose_version([cfg.repo / model for _, model in targets], cfg.version)

    wrapped = art.PositionalModule(module, output_names)
    was_training = module.training
    module.eval()
    try:
        eager = art.eager_runner(wrapped)
        outputs = eager(arrays)
        input_specs = [rep.TensorSpec(n, a.dtype, tuple(a.shape[1:])) for n, a in zip(names, arrays)]
        output_specs = _output_specs(outputs, output_names, batch=int(arrays[0].shape[0]))
        configs = {fmt: rep.model_config(model, art.FORMAT_PLATFORMS[fmt], [tensor_name(fmt, t.name, i) for i, t in enumerate(input_specs)], input_specs,
                                         [tensor_name(fmt, t.name, i) for i, t in enumerate(output_specs)], output_specs)
                   for fmt, model in targets}
        sample_source = dict(sample_source or {"kind": "example_inputs", "samples": int(arrays[0].shape[0])})
        # Refuse an incompatible existing config before spending time on the export.
        merged = {fmt: rep.merge_config(cfg.repo / model, configs[fmt], cfg) for fmt, model in targets}
        device = art.module_device(module)
        example = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
        with tempfile.TemporaryDirectory(prefix="raytron-export-") as stage:
            staged = []
            for fmt, model in targets:
                artifact, runner = art.write_and_load(fmt, wrapped, example, names, output_names, Path(stage) / fmt, opset=cfg.opset)
                _check_devices(artifact, model, merged[fmt][0])
                report = check_parity(fmt, eager, runner, arrays, output_names, atol=cfg.atol)
                raise_for_parity(report, model=model, tracer_warnings=artifact.tracer_warnings)
                staged.append((fmt, model, artifact, report))
            # Every format passed: only now does anything go into the repository.
            exported_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            written = []
            for fmt, model, artifact, report in staged:
                model_dir = cfg.repo / model
                record = _lineage(cfg, model, version, artifact.path, configs[fmt], input_specs, output_specs, report,
                                  lineage=lineage, sample_source=sample_source, exported_at=exported_at, siblings=[m for _, m in targets])
                version_dir = rep.publish_version(model_dir, version, {artifact.path.name: artifact.path}, {LINEAGE_FILE: record})
                model_config, status = merged[fmt]
                written.append(ExportedModel(name=model, version=version, format=fmt, platform=art.FORMAT_PLATFORMS[fmt], path=version_dir,
                                             model_file=version_dir / artifact.path.name, config_path=rep.write_config(model_dir, model_config, status),
                                             config_status=status, lineage_path=version_dir / LINEAGE_FILE, parity=report))
    finally:
        module.train(was_training)
    return ExportResult(models=tuple(written), config=cfg, sample_source=sample_source)


def export_checkpoint(checkpoint: str | Path, config: ExportConfig | None = None, *, manifest: str | None = None, **fields: Any) -> ExportResult:
    """Export a training checkpoint, checked against real samples of the run's own shards.

    The module is rebuilt from the spec recorded in the checkpoint's meta.json (`train.model`,
    sized from the shards' manifest) and loaded with its weights. Up to `samples` real samples are
    read from the run's `val_split` (the train split if there is none) for the parity check.

    Tensor names: one input named after the shards' field the model reads (`x` for mlp, `image` for
    cnn, `tokens` for gpt, the first non-label field for a `function` model) and one output, `logits`.
    The input is what the model consumes, except that cnn models take the image as the shards store
    it, uint8 HWC, and scale it by 1/255 and move channels first inside the exported graph; gpt
    models take int64 token ids of the training sequence length (the shards' `tokens` minus the last).

    Args:
        checkpoint: A run directory (`<storage.path>/<name>`: its latest checkpoint) or one
            `checkpoints/step-NNNNNNNN` directory.
        config: Export settings, or give them as keyword arguments (`name=` at least).
        manifest: The shards to use instead of the manifest the run recorded (e.g. a copy on this
            machine); its content must be the same (same manifest sha256).
        **fields: `ExportConfig` fields, overriding `config`'s.

    Raises:
        ExportError: the path is not a checkpoint, has no meta.json, its shards or model function
            cannot be found, or any `export_module` error.
        ParityError: the exported model does not match the checkpoint's eager model.
    """
    from raytron.serving._checkpoint import load_for_export

    cfg = resolve_config(config, fields)
    source = load_for_export(checkpoint, samples=cfg.samples, manifest=manifest)
    return export_module(source.module, source.inputs, source.output_names, cfg, lineage=source.lineage, sample_source=source.sample_source)


def resolve_config(config: ExportConfig | None, fields: Mapping[str, Any]) -> ExportConfig:
    """`config` with `fields` applied, validated once; problems become one ExportError."""
    try:
        if config is None:
            return ExportConfig(**fields)
        return ExportConfig.model_validate({**config.model_dump(), **fields}) if fields else config
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            where = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                problems.append(f"`{where}` is not an export setting (allowed: {', '.join(ExportConfig.model_fields)})")
            elif e["type"] == "missing":
                problems.append(f"`{where}` is required")
            else:
                problems.append(f"`{where}` ({e.get('input')!r}): {e['msg'].removeprefix('Value error, ')}")
        raise ExportError("invalid export settings: " + "; ".join(problems)) from None


# --------------------------------------------------------------------------- internals


def _example_arrays(example_inputs: Mapping[str, Any]) -> tuple[list[str], list[np.ndarray]]:
    if not isinstance(example_inputs, Mapping) or not example_inputs:
        raise ExportError("`example_inputs` must be a non-empty mapping of input name -> array (samples along axis 0)")
    names, arrays = [], []
    for name, value in example_inputs.items():
        _check_tensor_name(name, "input")
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if array.ndim == 0:
            raise ExportError(f"input `{name}` is a scalar; example inputs carry samples along axis 0 (shape [batch, ...])")
        if array.dtype.kind not in "biuf":
            raise ExportError(f"input `{name}` has dtype {array.dtype}; export supports bool, integer and float tensors")
        if arrays and array.shape[0] != arrays[0].shape[0]:
            raise ExportError(f"input `{name}` has {array.shape[0]} samples (axis 0) but `{names[0]}` has {arrays[0].shape[0]}; all inputs need the same batch")
        if array.shape[0] == 0:
            raise ExportError(f"input `{name}` has no samples (axis 0 is empty); the parity check needs real ones")
        names.append(name)
        arrays.append(array)
    return names, arrays


def _output_names(output_names: Sequence[str], input_names: Sequence[str]) -> list[str]:
    if isinstance(output_names, str) or not output_names:
        raise ExportError("`output_names` must be a non-empty list of names, one per output")
    names = list(output_names)
    for name in names:
        _check_tensor_name(name, "output")
    duplicated = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(input_names)))
    if duplicated:
        raise ExportError(f"tensor names must be unique across inputs and outputs; repeated: {duplicated}")
    return names


def _check_tensor_name(name: Any, role: str) -> None:
    if not isinstance(name, str) or not _TENSOR_NAME_RE.match(name) or "__" in name:
        raise ExportError(f"{role} name {name!r}: tensor names are 1-100 letters, digits, '_', '.' or '-', start with a letter and contain no '__' "
                          "(TorchScript's `<name>__<index>` convention reserves it)")


def _output_specs(outputs: Sequence[np.ndarray], output_names: Sequence[str], *, batch: int) -> list:
    from raytron.serving._repository import TensorSpec

    if len(outputs) != len(output_names):
        raise ExportError(f"the model returned {len(outputs)} output(s), but `output_names` names {len(output_names)}: {list(output_names)}")
    specs = []
    for name, out in zip(output_names, outputs):
        if out.ndim == 0 or out.shape[0] != batch:
            raise ExportError(f"output `{name}` has shape {list(out.shape)} for a batch of {batch}; every output needs the batch on axis 0, "
                              "which is how Triton's dynamic batcher splits a batch's results between requests")
        specs.append(TensorSpec(name, out.dtype, tuple(out.shape[1:])))
    return specs


def _check_devices(artifact, model: str, config) -> None:
    """A traced file that hard-codes the CPU fails on GPU instances at the first request; refuse it now."""
    from tritonclient.grpc import model_config_pb2 as mc

    gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group)
    cpu_bound = [d for d in artifact.fixed_devices if d.startswith("cpu")]
    if gpu and cpu_bound:
        raise ExportError(f"the TorchScript trace of `{model}` creates tensors on a fixed device ({', '.join(cpu_bound)}): tracing records "
                          "`device=x.device` as the device it ran on, so this file cannot serve on GPU instances (`kind` gpu). Export it with "
                          "`--format onnx` for GPUs, or with `--kind cpu`")


def _lineage(cfg: ExportConfig, model: str, version: int, artifact: Path, config, inputs, outputs, report: ParityReport, *,
             lineage: Mapping[str, Any] | None, sample_source: dict[str, Any], exported_at: str, siblings: list[str]) -> dict[str, Any]:
    from raytron.serving._repository import file_sha256
    from raytron.serving.modelconfig import triton_dtype

    def tensors(specs, ios):
        return [{"name": t.name, "tensor": io.name, "data_type": triton_dtype(t.dtype), "shape": ["batch", *t.shape]} for t, io in zip(specs, ios)]

    return {
        "format": "raytron-lineage-1",
        "model": model, "version": version, "platform": config.platform, "model_file": artifact.name, "model_sha256": file_sha256(artifact),
        "exported_at": exported_at,
        "inputs": tensors(inputs, config.input), "outputs": tensors(outputs, config.output),
        "source": dict(lineage or {}),
        "parity": {**report.to_json(), "sample_source": sample_source},
        "export": {**cfg.model_dump(mode="json"), "repo": str(cfg.repo.resolve()), "models": siblings},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in ("raytron", "torch", "onnx", "onnxruntime", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found

