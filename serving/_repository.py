"""The repository side of an export: version numbers, config.pbtxt, and publishing a version atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from raytron.serving.errors import ExportError
from raytron.serving.modelconfig import ModelConfig, RepoModel, read_model_config, triton_dtype, write_model_config

CONFIG_FILE = "config.pbtxt"
#: Serving settings of a new config.pbtxt when the export does not set them.
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_DELAY_US = 100


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, dtype, and the shape of one sample (the batch axis excluded)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def existing_versions(model_dir: Path) -> list[int]:
    """Version directories of a model directory (Triton's: names that are integers)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def choose_version(model_dirs: Iterable[Path], requested: int | None) -> int:
    """`requested` if no model directory has it yet; else one more than the highest in any of them.

    Raises:
        ExportError: `requested` exists already (names the directory).
    """
    found = {d: existing_versions(d) for d in model_dirs}
    following = max((v for versions in found.values() for v in versions), default=0) + 1
    if requested is None:
        return following
    for model_dir, versions in found.items():
        if requested in versions:
            raise ExportError(f"version {requested} of model `{model_dir.name}` already exists at {model_dir / str(requested)}; versions are never "
                              f"overwritten: omit `--version` to create the next one ({following}), or remove that directory first")
    return requested


def model_config(name: str, platform: str, input_names: Sequence[str], inputs: Sequence[TensorSpec], output_names: Sequence[str],
                 outputs: Sequence[TensorSpec]) -> ModelConfig:
    """The tensors' part of a config.pbtxt (no serving settings yet; see `merge_config`)."""
    config = ModelConfig(name=name, platform=platform)
    for field, names, specs in ((config.input, input_names, inputs), (config.output, output_names, outputs)):
        for tensor_name, spec in zip(names, specs):
            io = field.add()
            io.name = tensor_name
            io.data_type = mc.DataType.Value(triton_dtype(spec.dtype))
            if spec.shape:
                io.dims.extend(spec.shape)
            else:
                # One scalar per sample: Triton rejects empty `dims`, and reads `dims: [1]` with an
                # empty `reshape` as exactly that (core, model_config_utils.cc ValidateIOShape).
                io.dims.append(1)
                io.reshape.SetInParent()
    return config


def merge_config(model_dir: Path, new: ModelConfig, settings: Any) -> tuple[ModelConfig, str]:
    """The config to write for a new version, and whether it is `created`, `updated` or `unchanged`.

    An existing config.pbtxt is kept (hand-made additions included) and must describe the same
    platform, inputs and outputs: a model's versions share one config. Only the serving settings
    that `settings` (an ExportConfig) sets explicitly are changed in it.

    Raises:
        ExportError: the existing config describes another model.
    """
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        config = ModelConfig()
        config.CopyFrom(new)
        _apply_settings(config, settings, defaults=True)
        return config, "created"
    existing = read_model_config(path)
    problems = _differences(existing, new)
    if problems:
        raise ExportError(f"{path} describes a different model: {'; '.join(problems)}. A model's versions share one config.pbtxt, so export under another "
                          f"`--name`, or move {model_dir} away first")
    config = ModelConfig()
    config.CopyFrom(existing)
    _apply_settings(config, settings, defaults=False)
    return config, ("unchanged" if config == existing else "updated")


def write_config(model_dir: Path, config: ModelConfig, status: str) -> Path:
    path = model_dir / CONFIG_FILE
    if status != "unchanged":
        write_model_config(path, config)
    return path


def publish_version(model_dir: Path, version: int, files: Mapping[str, Path], json_files: Mapping[str, Any]) -> Path:
    """Copy `files` and write `json_files` into REPO/NAME/<version>, which appears whole or not at all.

    The directory is assembled under a hidden name beside its final one (Triton ignores names that
    are not integers), fsynced, and renamed into place.

    Raises:
        ExportError: the version directory appeared meanwhile (another export).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=model_dir))
    try:
        # mkdtemp makes the directory 0700; a Triton container running as another user must read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for name, source in files.items():
            shutil.copyfile(source, tmp / name)
        for name, payload in json_files.items():
            (tmp / name).write_text(json.dumps(payload, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            raise ExportError(f"version {version} of model `{model_dir.name}` appeared at {final} during the export (another export?); nothing was overwritten")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    return final


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _apply_settings(config: ModelConfig, settings: Any, *, defaults: bool) -> None:
    if settings.max_batch_size is not None or defaults:
        config.max_batch_size = settings.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    if settings.max_queue_delay_us is not None or defaults:
        config.dynamic_batching.SetInParent()  # present even with a delay of 0, which protobuf would not print
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us if settings.max_queue_delay_us is not None else DEFAULT_MAX_QUEUE_DELAY_US
    if settings.instance_count is not None or settings.kind is not None or defaults:
        first = config.instance_group[0] if len(config.instance_group) else None
        count = settings.instance_count or (first.count if first is not None and first.count else 1)
        kind = f"KIND_{settings.kind.upper()}" if settings.kind else (mc.ModelInstanceGroup.Kind.Name(first.kind) if first is not None else "KIND_CPU")
        del config.instance_group[:]
        group = config.instance_group.add()
        group.count = count
        group.kind = mc.ModelInstanceGroup.Kind.Value(kind)


def _differences(existing: ModelConfig, new: ModelConfig) -> list[str]:
    problems = []
    platform = RepoModel(existing.name, Path(), existing, ()).platform
    if platform != new.platform:
        problems.append(f"platform {platform or '(none)'} (this export: {new.platform})")
    if existing.max_batch_size == 0:
        problems.append("max_batch_size 0, a model without a batch axis (this export batches on axis 0)")
    for kind in ("input", "output"):
        old, ours = _tensors(getattr(existing, kind)), _tensors(getattr(new, kind))
        if sorted(old) != sorted(ours):
            problems.append(f"{kind}s {', '.join(old) or '(none)'} (this export: {', '.join(ours)})")
    return problems


def _tensors(ios) -> list[str]:
    rendered = []
    for io in ios:
        reshape = f" reshape {list(io.reshape.shape)}" if io.HasField("reshape") else ""
        rendered.append(f"{io.name} {mc.DataType.Name(io.data_type)} {list(io.dims)}{reshape}")
    return rendered


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
