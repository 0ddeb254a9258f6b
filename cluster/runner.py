"""The process every raytron job runs on the cluster: `python -m raytron.cluster.runner`.

The submitter passes the validated spec and its class through the job's environment
(`RAYTRON_SPEC_JSON`, `RAYTRON_SPEC_CLASS`, `RAYTRON_SUBMISSION_ID`); this module re-validates the
spec and calls the kind's runner. An exception ends the job FAILED: a `RaytronError` (raised on
purpose: its message says what happened and which knob to turn) as one line in the logs, any other
exception (a bug, or the user's own code failing) with its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobContext", "main", "SPEC_JSON_ENV", "SPEC_CLASS_ENV", "SUBMISSION_ID_ENV"]

SPEC_JSON_ENV = "RAYTRON_SPEC_JSON"
SPEC_CLASS_ENV = "RAYTRON_SPEC_CLASS"
SUBMISSION_ID_ENV = "RAYTRON_SUBMISSION_ID"


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """What a kind's runner knows about the job it runs in."""

    submission_id: str
    """The job's submission id on the cluster."""

    def run_dir(self, spec) -> Path:
        """`<storage.path>/<name>/<submission id>`, created, for this run's outputs.

        Only local (or mounted) storage paths are written here; URIs are for the kinds that
        write through fsspec or Ray Train's storage.
        """
        root = Path(os.path.expanduser(spec.storage.path))
        path = root / spec.name / self.submission_id
        path.mkdir(parents=True, exist_ok=True)
        return path


def main() -> int:
    from raytron.cluster.spec import import_object

    missing = [v for v in (SPEC_JSON_ENV, SPEC_CLASS_ENV) if not os.environ.get(v)]
    if missing:
        print(f"raytron runner: {', '.join(missing)} not set; this module runs inside a job submitted by raytron", file=sys.stderr)
        return 2
    # The class comes from the submitter, not from this machine's kind registry: a cluster that only
    # has raytron through the job's py_modules has no entry points to look kinds up in.
    spec_cls = import_object(os.environ[SPEC_CLASS_ENV])
    spec = spec_cls.model_validate(json.loads(os.environ[SPEC_JSON_ENV]))
    ctx = JobContext(submission_id=os.environ.get(SUBMISSION_ID_ENV, "local"))
    print(f"raytron: running {spec.kind} job {spec.name!r} ({ctx.submission_id})", flush=True)
    from raytron.cluster.errors import RaytronError

    try:
        import_object(spec_cls.RUNNER)(spec, ctx)
    except RaytronError as exc:
        # A traceback through our own frames would bury the one line the user has to act on.
        print(f"raytron: {spec.kind} job {spec.name!r} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
