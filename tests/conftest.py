"""Shared fixtures: one real local Ray head per test session, and spec files for test jobs.

The head is started by `raytron up` in its own process with a private RAYTRON_HOME, on free
loopback ports, and stopped by `raytron down` when the session ends, whether tests passed or not.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from helpers import JOBFUNCS, Head, base_env, run_cli


@pytest.fixture(scope="session")
def head() -> Head:
    """A local Ray head started by `raytron up` in another process; stopped at the end of the session."""
    home = Path(tempfile.mkdtemp(prefix="rt-test-"))
    env = base_env(home)
    up = run_cli("up", "--num-cpus", "4", "--object-store-memory-bytes", "100000000", env=env, timeout_s=180)
    try:
        assert up.returncode == 0, up.output
        address = up.stdout.strip().splitlines()[-1]
        assert address.startswith("http://127.0.0.1:"), up.output
        yield Head(home=home, address=address, env=env)
    finally:
        down = run_cli("down", env=env, timeout_s=120)
        assert down.returncode == 0, down.output


@pytest.fixture
def write_spec(tmp_path):
    """Write a python-kind spec calling tests/jobfuncs/jobfuncs.py and return its path."""
    import yaml

    def _write(name: str, function: str, kwargs: dict | None = None, **sections) -> Path:
        spec = {
            "name": name,
            "kind": "python",
            "runtime": {"working_dir": str(JOBFUNCS)},
            "storage": {"path": str(tmp_path / "runs")},
            "python": {"function": f"jobfuncs:{function}", "kwargs": kwargs or {}},
        }
        spec.update(sections)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return _write
