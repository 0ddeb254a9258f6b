"""The embedded head's life cycle: started on demand by submit, found again, stopped completely."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import psutil
import pytest

from helpers import JOBFUNCS, base_env, run_cli

pytestmark = pytest.mark.slow


def head_processes(temp_dir: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]


def test_submit_starts_a_head_and_down_stops_every_process(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="rt-auto-"))
    env = base_env(home)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: auto\nkind: python\nruntime: {{working_dir: {JOBFUNCS}}}\nstorage: {{path: {tmp_path}}}\n"
        f"python: {{function: 'jobfuncs:write_file', kwargs: {{path: {tmp_path / 'x'}, text: hi}}}}\n"
    )
    try:
        result = run_cli("submit", str(spec), "--wait", env=env, timeout_s=240)
        assert result.returncode == 0, result.output
        assert "starting one on 127.0.0.1" in result.stderr
        info = json.loads((home / "head.json").read_text())
        assert info["dashboard_url"].startswith("http://127.0.0.1:")
        assert oct((home / "auth_token").stat().st_mode & 0o777) == "0o600"
        assert head_processes(info["temp_dir"])
        again = run_cli("up", env=env)  # idempotent: reports the running head
        assert again.returncode == 0 and "already running" in again.stderr
        assert again.stdout.strip() == info["dashboard_url"]
    finally:
        down = run_cli("down", env=env, timeout_s=120)
    assert down.returncode == 0, down.output
    assert "stopped" in down.stderr
    assert not (home / "head.json").exists()
    assert head_processes(info["temp_dir"]) == []
    assert not Path(info["temp_dir"]).exists()
