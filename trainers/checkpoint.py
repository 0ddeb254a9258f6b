"""Training checkpoints: safetensors for tensors, JSON for the rest, written atomically.

Layout, under `<storage.path>/<name>/checkpoints/`::

    step-00000120/
      model.safetensors       the plain (non-DDP) state dict, fp32, loadable without Ray or raytron
      optimizer.safetensors   the optimizer's tensors, flattened as state.<param index>.<key>
      meta.json               step, epoch, the resolved spec, the data reader's state, metrics,
                              the shard manifest's sha256, the optimizer's param groups, scheduler
                              and loss-scaler state
      deepspeed/              (`strategy: deepspeed` only) DeepSpeed's own per-rank shards, written by
                              `engine.save_checkpoint`: its private resume state (torch.save files,
                              i.e. pickle), read back only by DeepSpeed when the same run resumes.
                              model.safetensors beside it is the consolidated fp32 model to exchange.

A checkpoint is written into a hidden temporary directory and renamed into place when complete,
so `latest_checkpoint` never returns a partial one. Nothing raytron writes here is pickle; DeepSpeed's
own shards under `deepspeed/` are the one exception, kept private as described above.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raytron.trainers.errors import CheckpointError

__all__ = ["Checkpoint", "save_checkpoint", "latest_checkpoint", "list_checkpoints", "load_model_state", "load_optimizer_state"]

_DIR_RE = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())


def save_checkpoint(
    root: Path, *, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None, meta: dict[str, Any], keep: int,
    staging: Path | None = None,
) -> Checkpoint:
    """Write `step-<step>/` under `root` atomically and delete all but the newest `keep`.

    `staging`: a hidden directory under `root` that already holds other files of this checkpoint
    (DeepSpeed's shards, written by every rank); it is completed and renamed into place.
    """
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = staging if staging is not None else Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=root))
    try:
        # Tied weights share storage, which safetensors refuses; each key gets its own copy.
        save_file({k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous() for k, v in model_state.items()},
                  str(tmp / "model.safetensors"))
        full_meta = dict(meta, step=step, format="raytron-checkpoint-1")
        if optimizer_state is not None:
            tensors, opt_meta = _flatten_optimizer(optimizer_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            full_meta["optimizer"] = opt_meta
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=_json_default) + "\n")
        for f in tmp.rglob("*"):
            if not f.is_file():
                continue
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = root / f"step-{step:08d}"
        if final.exists():  # a re-run reached the same step: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _DIR_RE.match(p.name)
        if m and (p / "meta.json").is_file() and (p / "model.safetensors").is_file():
            found.append(Checkpoint(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_model_state(checkpoint: str | Path | Checkpoint) -> dict[str, torch.Tensor]:
    """The model's plain state dict from a checkpoint directory (or the run directory's latest).

    Works outside Ray and without raytron's trainers: it is safetensors.
    """
    from safetensors.torch import load_file

    path = checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)
    if not (path / "model.safetensors").is_file():
        latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint at {path} (expected model.safetensors, or checkpoints/step-*/ below it)")
        path = latest.path
    return load_file(str(path / "model.safetensors"))


def load_optimizer_state(checkpoint: Checkpoint) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    f = checkpoint.path / "optimizer.safetensors"
    if not f.is_file():
        return None
    meta = checkpoint.meta["optimizer"]
    tensors = load_file(str(f))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, extras in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extras)
    return {"state": state, "param_groups": meta["param_groups"]}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
