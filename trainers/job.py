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
