"""The `ray_train` launcher: the same training loop inside Ray Train's TorchTrainer.

For users who want their run in Ray Train's own terms: every metrics row goes to
`ray.train.report`, every checkpoint is reported with it (Ray Train copies it into its storage as
`<run_dir>/ray_train/<trial>/step-NNNNNNNN/`), and `Result.metrics` / `Result.checkpoint` describe
the run. Ray Train owns the worker group and the process group (gloo or NCCL, with
`train.collective_timeout_s` as its timeout) and restarts the group up to `train.max_failures`
times; the loop itself still resumes from raytron's own latest checkpoint, so a restart continues
at exactly the next sample as with the lean launcher.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from raytron.trainers.errors import TrainError, first_line
from raytron.trainers.spec import TrainJobSpec

__all__ = ["run_ray_train"]


def run_ray_train(spec: TrainJobSpec) -> dict[str, Any]:
    """Train with `TorchTrainer`; returns the final step and metrics (from raytron's last checkpoint)
    and what Ray Train recorded (its storage path, its last checkpoint, the metrics attached to it)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    r, t = spec.resources, spec.train
    # A RunConfig name that already exists under storage_path makes Ray Train resume its own state
    # silently (shared/environment.md); raytron resumes from its own checkpoints, so every
    # submission gets a fresh Ray Train run.
    name = f"{spec.name}-{secrets.token_hex(4)}"
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec_json": spec.to_json()},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}),
        torch_config=TorchConfig(timeout_s=max(1, int(t.collective_timeout_s))),
        run_config=RunConfig(
            name=name, storage_path=str(spec.run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train's TrainingFailedError wraps the workers' errors
        raise TrainError(f"Ray Train run {name} failed after {t.max_failures} allowed restart(s) (`train.max_failures`): "
                         f"{type(exc).__name__}: {first_line(exc)}") from None
    final = _latest_meta(spec.run_dir / "checkpoints")
    return {
        "step": final.get("step", 0),
        "metrics": final.get("metrics", {}),
        "attempts": None,  # Ray Train restarts the group itself and does not say how often
        "ray_train": {
            "name": name, "path": result.path,
            "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
            "metrics": result.metrics,
        },
    }


def _train_worker(config: dict[str, Any]) -> None:
    """One rank, inside Ray Train's worker group (the process group is already joined)."""
    import ray.train

    from raytron.trainers.loop import new_loop

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        # Every rank calls this the same number of times: `ray.train.report` is a barrier.
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=checkpoint_dir.name if checkpoint_dir is not None else None)

    spec = TrainJobSpec.model_validate_json(config["spec_json"])
    new_loop(spec, rank=rank, world_size=ctx.get_world_size(), report=report).run()


def _latest_meta(root: Path) -> dict[str, Any]:
    steps = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())
    return json.loads((steps[-1] / "meta.json").read_text()) if steps else {}
