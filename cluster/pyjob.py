"""The `python` job kind: run a user function `module:function` with keyword arguments on the cluster.

With one worker the function runs inside the job's own process, which Ray starts with the
worker's CPUs and GPUs reserved (no extra Ray task, so a small job starts fast). With
`resources.num_workers > 1` the function runs once per worker as Ray tasks, each with
`RAYTRON_RANK` and `RAYTRON_WORLD_SIZE` set; the job fails if any of them fails.

The return value (one per worker) is printed as `raytron: result = ...` and written, with the
spec, to `<storage.path>/<name>/<submission id>/result.json`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pydantic import Field, field_validator

from raytron.cluster.errors import SpecProblem
from raytron.cluster.spec import JobSpec, SpecModel, import_object, is_object_path
from raytron.cluster.storage import write_json_atomic
from raytron.cluster.runner import JobContext

__all__ = ["PythonJobSpec", "PythonJob", "run_python_job"]


class PythonJob(SpecModel):
    """Body of a `kind: python` spec."""

    function: str
    """`package.module:function` to call; the module is imported on the cluster from the working_dir
    or the installed packages."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the function (JSON-compatible values)."""

    @field_validator("function")
    @classmethod
    def _object_path(cls, value: str) -> str:
        if not is_object_path(value):
            raise ValueError("must be `module:function`, e.g. `my_pkg.jobs:main`")
        return value


class PythonJobSpec(JobSpec):
    """A job that calls one Python function, on one or several workers."""

    KIND = "python"
    RUNNER = "raytron.cluster.pyjob:run_python_job"

    python: PythonJob

    @field_validator("kind")
    @classmethod
    def _is_python(cls, value: str) -> str:
        if value != "python":
            raise ValueError("must be `python` for this spec class")
        return value

    def problems(self) -> list[SpecProblem]:
        problems = []
        for key, value in self.python.kwargs.items():
            bad = _first_non_json(value)
            if bad is not None:
                problems.append(SpecProblem(f"python.kwargs.{key}{bad[0]}", "must be JSON-compatible (string, number, bool, null, list or mapping); quote dates and times", bad[1]))
        return problems

    def entrypoint_resources(self) -> tuple[float, float]:
        if self.resources.num_workers == 1:
            return (self.resources.cpus_per_worker, self.resources.gpus_per_worker)
        return (0.0, 0.0)


def run_python_job(spec: PythonJobSpec, ctx: JobContext) -> Any:
    """Run the job on the cluster (the `RUNNER` of `kind: python`). Returns the result written."""
    n = spec.resources.num_workers
    if n == 1:
        results = [_call(spec.python.function, spec.python.kwargs, rank=0, world_size=1)]
    else:
        import ray

        ray.init(address="auto", log_to_driver=True)
        remote_call = ray.remote(_call).options(
            num_cpus=spec.resources.cpus_per_worker, num_gpus=spec.resources.gpus_per_worker, max_retries=0
        )
        refs = [remote_call.remote(spec.python.function, spec.python.kwargs, rank=r, world_size=n) for r in range(n)]
        results = ray.get(refs)
    result = results[0] if n == 1 else results
    out_dir = ctx.run_dir(spec)
    shown = _jsonable(result)
    payload = {"name": spec.name, "submission_id": ctx.submission_id, "result": shown, "spec": json.loads(spec.to_json())}
    path = write_json_atomic(out_dir / "result.json", payload)
    print(f"raytron: result = {json.dumps(shown)}", flush=True)
    print(f"raytron: wrote {path}", flush=True)
    return result


def _call(function: str, kwargs: dict[str, Any], *, rank: int, world_size: int) -> Any:
    os.environ["RAYTRON_RANK"] = str(rank)
    os.environ["RAYTRON_WORLD_SIZE"] = str(world_size)
    fn = import_object(function)
    return fn(**kwargs)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _first_non_json(value: Any, path: str = "") -> tuple[str, Any] | None:
    """Where in `value` the first non-JSON item is (a sub-path and the item), or None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_json(item, f"{path}.{i}")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{path}.{key}", key)
            found = _first_non_json(item, f"{path}.{key}")
            if found:
                return found
        return None
    return (path, value)
