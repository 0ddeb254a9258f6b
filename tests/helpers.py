"""Helpers the tests share: running the raytron CLI as a subprocess with a private RAYTRON_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAYTRON = str(Path(sys.executable).parent / "raytron")
JOBFUNCS = REPO / "tests" / "jobfuncs"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYTRON_"))}
    env["RAYTRON_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # keep rich from wrapping messages the tests read
    return env


def wait_for(condition, *, timeout_s: float, interval_s: float = 0.2, what: str = "the condition"):
    """Poll `condition()` until it returns something truthy (returned) or `timeout_s` passes (AssertionError)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(interval_s)


def interrupt(proc: subprocess.Popen, *, timeout_s: float = 60) -> int:
    """Ctrl-C a server the test started (SIGINT: it drains and stops), SIGKILL if it outlives `timeout_s`; its exit code."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run_cli(*args: str, env: dict[str, str], timeout_s: float = 120, cwd: Path | None = None) -> CliResult:
    proc = subprocess.run([RAYTRON, *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=cwd or REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Head:
    home: Path
    address: str
    env: dict[str, str]

    def cli(self, *args: str, timeout_s: float = 120, extra_env: dict[str, str] | None = None) -> CliResult:
        return run_cli(*args, env={**self.env, **(extra_env or {})}, timeout_s=timeout_s)

    def wait_ended(self, submission_id: str, *, timeout_s: float, what: str | None = None) -> dict:
        """Poll `raytron jobs --json` until the job is SUCCEEDED, FAILED or STOPPED; returns its record."""
        import json

        def ended():
            record = next(r for r in json.loads(self.cli("jobs", "--json").stdout) if r["submission_id"] == submission_id)
            return record if record["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

        return wait_for(ended, timeout_s=timeout_s, interval_s=1, what=what or f"{submission_id} ending")


