"""raytron's core: job specs, the Ray connection, the embedded local head, jobs, and errors.

Attributes are imported on first use, so a job's runner process and the CLI start without
importing Ray until they need it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raytron")
except PackageNotFoundError:  # shipped to a cluster as py_modules, not installed there
    __version__ = "0+unknown"

_EXPORTS = {
    "RaytronError": "errors", "ClusterError": "errors", "SpecError": "errors", "SpecProblem": "errors",
    "HeadError": "errors", "ConnectionFailed": "errors", "JobNotFound": "errors",
    "JobSpec": "spec", "Resources": "spec", "Runtime": "spec", "Storage": "spec",
    "load_spec": "spec", "parse_spec": "spec", "available_kinds": "spec",
    "PythonJobSpec": "pyjob",
    "Settings": "settings",
    "LocalHeadConfig": "head", "HeadInfo": "head", "start_local_head": "head", "stop_local_head": "head", "find_local_head": "head",
    "Cluster": "connection", "connect": "connection",
    "JobManager": "jobs", "JobRecord": "jobs", "ClusterResources": "jobs",
    "write_json_atomic": "storage", "write_bytes_atomic": "storage",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raytron.cluster' has no attribute {name!r}")
    value = getattr(import_module(f"raytron.cluster.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
