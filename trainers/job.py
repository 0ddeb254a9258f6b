"""The runner of `kind: train` jobs: the job's driver process on the cluster."""

from __future__ import annotations

import json
from typing import Any

from raytron.cluster.runner import JobContext
from raytron.cluster.storage import write_json_atomic
from raytron.trainers.spec import TrainJobSpec

__all__ = ["run_train_job"]


def run_train_job(spec: TrainJobSpec, ctx: JobContext) -> dict[str, Any]:
    """Train, then write `result.json` (final metrics, steps, attempts) in the run directory."""
    import ray

    done = _finished_checkpoint(spec)
    if done is not None:
        # The same spec already ran to its end: say so without starting (and importing torch in) workers.
        print(f"raytron: {spec.name} already trained to step {done['step']} with this exact spec ({done['path']}); nothing to do. "
              "Change `train.steps`/`train.epochs` to train further, or `name` to start afresh.", flush=True)
        return json.loads((spec.run_dir / "result.json").read_text())
    ray.init(address="auto", log_to_driver=True)
    if spec.train.launcher == "ray_train":
        from raytron.trainers.ray_train import run_ray_train

        result = run_ray_train(spec)
    else:
        from raytron.trainers.group import run_group

        result = run_group(spec)
    payload = {"name": spec.name, "submission_id": ctx.submission_id, "launcher": spec.train.launcher, "step": result["step"],
               "attempts": result["attempts"], "metrics": result["metrics"], "spec": json.loads(spec.to_json())}
    if "ray_train" in result:
        payload["ray_train"] = result["ray_train"]
    path = write_json_atomic(spec.run_dir / "result.json", payload)
    attempts = f" in {result['attempts']} attempt(s)" if result["attempts"] else ""
    print(f"raytron: trained {spec.name} to step {result['step']}{attempts}; final metrics {json.dumps(result['metrics'])}", flush=True)
    print(f"raytron: wrote {path}", flush=True)
    return payload


def _finished_checkpoint(spec: TrainJobSpec) -> dict[str, Any] | None:
    """The latest checkpoint's step and path if it is the final one of this very spec (and result.json exists)."""
    root = spec.run_dir / "checkpoints"
    steps = sorted(root.glob("step-*/meta.json")) if root.is_dir() else []
    if not steps or not (spec.run_dir / "result.json").is_file():
        return None
    try:
        meta = json.loads(steps[-1].read_text())
    except (OSError, ValueError):
        return None
    if meta.get("spec") != json.loads(spec.to_json()) or meta.get("total_steps") is None or meta.get("step") != meta["total_steps"]:
        return None
    return {"step": meta["step"], "path": str(steps[-1].parent)}
