"""The checkpoint side of an export: find it, rebuild its module, and read real samples for parity."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raytron.serving.errors import ExportError

#: The output every recipe's model has: one score per class (mlp, cnn) or per vocabulary entry (gpt).
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportSource:
    """A checkpoint's module, ready for `export_module`, with real samples and its lineage."""

    module: nn.Module
    inputs: dict[str, np.ndarray]
    output_names: list[str]
    lineage: dict[str, Any]
    sample_source: dict[str, Any]


class RawImageInput(nn.Module):
    """Takes images as the shards store them (uint8 HWC) and does the cnn recipe's preprocessing inside
    the graph (channels first, scaled by 1/255), so clients send decoded images unchanged and 4x
    fewer bytes than float32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.module(image.permute(0, 3, 1, 2).float() / 255.0)


def find_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """The step directory to export and its run directory (None when it is not under one).

    Raises:
        ExportError: no such path, not a checkpoint, or a checkpoint without meta.json.
    """
    from raytron.trainers.checkpoint import latest_checkpoint

    given = Path(path).expanduser()
    if not given.exists():
        raise ExportError(f"checkpoint {given} does not exist; pass a run directory (`<storage.path>/<name>`) or one of its `checkpoints/step-NNNNNNNN` directories")
    if (given / "model.safetensors").is_file():
        if not (given / "meta.json").is_file():
            raise ExportError(f"checkpoint {given} has no meta.json: the exporter rebuilds the model from the training spec raytron's trainer records there "
                              "(a checkpoint still being written has none yet)")
        return given, (given.parent.parent if given.parent.name == "checkpoints" else None)
    latest = latest_checkpoint(given / "checkpoints") or latest_checkpoint(given)
    if latest is None:
        raise ExportError(f"{given} is not a checkpoint: it has no model.safetensors and no complete checkpoints/step-NNNNNNNN/ (with model.safetensors "
                          "and meta.json) below it")
    return latest.path, (given if latest.path.parent == given / "checkpoints" else None)


def load_for_export(path: str | Path, *, samples: int, manifest: str | None = None) -> ExportSource:
    """Rebuild a checkpoint's module with its weights and read `samples` real samples of its shards.

    Raises:
        ExportError: naming the path or the meta.json field that is missing or wrong.
    """
    from raytron.datasets.errors import DataError
    from raytron.datasets.manifest import Manifest
    from raytron.datasets.reader import ReaderConfig, ShardLoader
    from raytron.trainers.checkpoint import load_model_state
    from raytron.trainers.spec import ModelConfig

    step_dir, run_dir = find_checkpoint(path)
    meta_path = step_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {meta_path}: {exc}") from None
    from raytron.serving._policy import is_rl_meta, load_policy_for_export

    if is_rl_meta(meta):
        return load_policy_for_export(step_dir, run_dir, meta, samples=samples)
    spec = meta.get("spec") if isinstance(meta, dict) else None
    train = spec.get("train") if isinstance(spec, dict) else None
    if not isinstance(train, dict) or not isinstance(train.get("model"), dict) or not isinstance(train.get("data"), dict):
        raise ExportError(f"{meta_path} has no `spec.train.model` and `spec.train.data`: it was not written by raytron's trainer")
    try:
        model_config = ModelConfig.model_validate(train["model"])
    except ValueError as exc:
        raise ExportError(f"`spec.train.model` in {meta_path} is not a valid model config: {exc}") from None
    data = train["data"]
    location = manifest or data.get("manifest")
    if not location:
        raise ExportError(f"`spec.train.data.manifest` is missing in {meta_path}; pass `--manifest` with the run's shards")
    try:
        shards = Manifest.load(location)
    except DataError as exc:
        origin = "`--manifest`" if manifest else f"`spec.train.data.manifest` in {meta_path}"
        raise ExportError(f"the shards the run trained on ({origin}: {location}) cannot be loaded: {exc}. The exporter needs them to size the model "
                          "and for real parity samples; pass `--manifest` with a copy of the same shards") from None
    recorded = meta.get("manifest_sha256")
    if recorded and shards.sha256 != recorded:
        raise ExportError(f"the manifest at {location} has sha256 {shards.sha256[:16]}..., but {step_dir} was trained on shards with {str(recorded)[:16]}...; "
                          "pass `--manifest` with the run's own shards")

    with _import_path(spec.get("runtime", {}).get("working_dir")):
        recipe = _rebuild(model_config, shards, meta_path)
    state = load_model_state(step_dir)
    try:
        recipe.module.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"the weights in {step_dir / 'model.safetensors'} do not fit the model rebuilt from `spec.train.model` in {meta_path}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    recipe.module.eval()

    split = _sample_split(shards, data)
    try:
        loader = ShardLoader(ReaderConfig(manifest=shards.location, split=split, batch_size=samples, shuffle_buffer=0), manifest=shards)
        batch = next(iter(loader))
    except (DataError, StopIteration) as exc:
        raise ExportError(f"cannot read parity samples from the `{split}` split of {shards.location}: {exc or 'no samples'}") from None

    field, module, example, note = _model_input(model_config, recipe, shards, batch)
    count = int(example.shape[0])
    lineage = {
        **checkpoint_lineage("checkpoint", step_dir, run_dir),
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "metrics": meta.get("metrics"),
        "manifest": shards.location,
        "manifest_sha256": shards.sha256,
        "model": model_config.model_dump(mode="json", exclude_none=True),
        "input_preprocessing": {field: note},
    }
    sample_source = {"kind": "shards", "manifest": shards.location, "split": split, "samples": count}
    return ExportSource(module=module, inputs={field: example}, output_names=[OUTPUT_NAME], lineage=lineage, sample_source=sample_source)


def checkpoint_lineage(kind: str, step_dir: Path, run_dir: Path | None) -> dict[str, Any]:
    """Where an exported model came from: the checkpoint kind, its run and folder, and its weights' hash."""
    from raytron.serving._repository import file_sha256

    return {"kind": kind, "run_dir": str(run_dir.resolve()) if run_dir else None, "checkpoint": str(step_dir.resolve()),
            "model_safetensors_sha256": file_sha256(step_dir / "model.safetensors")}


def _rebuild(model_config, shards, meta_path: Path):
    from raytron.trainers.errors import TrainError
    from raytron.trainers.recipes import build_model

    torch.manual_seed(0)  # the weights are replaced by the checkpoint's; the seed only keeps this deterministic
    try:
        return build_model(model_config, shards)
    except TrainError as exc:
        raise ExportError(f"cannot rebuild the model from `spec.train.model` in {meta_path}: {exc}") from None
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"`spec.train.model.function` ({model_config.function}) in {meta_path} cannot be imported here: {exc}; its module must be "
                          "importable (the spec's `runtime.working_dir` is added to the import path when it exists on this machine)") from None


def _sample_split(shards, data: dict) -> str:
    """The run's validation split when it has samples, else its training split."""
    for split in (data.get("val_split"), data.get("split", "train")):
        if split and split in shards.splits and shards.num_samples(split) > 0:
            return split
    raise ExportError(f"the shards at {shards.location} have no samples in `val_split` ({data.get('val_split')!r}) nor `split` ({data.get('split', 'train')!r}); "
                      f"they have: {', '.join(shards.splits) or 'none'}")


def _model_input(model_config, recipe, shards, batch: dict) -> tuple[str, nn.Module, np.ndarray, str]:
    """The exported input's name, the module to export, the parity samples, and what the input is."""
    if model_config.recipe == "cnn":
        image = batch["image"].permute(0, 2, 3, 1).contiguous()  # the reader yields NCHW; the shards store HWC
        return "image", RawImageInput(recipe.module), image.numpy(), "uint8 HWC image as stored in the shards; scaled by 1/255 and made channels-first inside the model"
    if model_config.recipe == "gpt":
        return "tokens", recipe.module, recipe.inputs(batch).numpy(), "int64 token ids: the shards' `tokens` without the last one (the training input)"
    field = "x" if model_config.recipe == "mlp" else next(f.name for f in shards.schema if f.name != "y")
    example = recipe.inputs(batch)
    dtype = str(example.dtype).removeprefix("torch.")
    return field, recipe.module, example.numpy(), f"{dtype} `{field}` from the shards, as the trainer fed it (the recipe's inputs)"


@contextlib.contextmanager
def _import_path(working_dir: str | None) -> Iterator[None]:
    """Put the job's working_dir on sys.path while the model is built, so `function` models import."""
    path = Path(working_dir).expanduser() if working_dir and "://" not in working_dir else None
    if path is None or not path.is_dir():
        yield
        return
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path))
