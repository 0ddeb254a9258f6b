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

    from raytron.trainers.group import run_group

    ray.init(address="auto", log_to_driver=True)
    result = run_group(spec)
    payload = {"name": spec.name, "submission_id": ctx.submission_id, "step": result["step"], "attempts": result["attempts"],
               "metrics": result["metrics"], "spec": json.loads(spec.to_json())}
    path = write_json_atomic(spec.run_dir / "result.json", payload)
    print(f"raytron: trained {spec.name} to step {result['step']} in {result['attempts']} attempt(s); final metrics {json.dumps(result['metrics'])}", flush=True)
    print(f"raytron: wrote {path}", flush=True)
    return payload
