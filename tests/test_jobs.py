"""Jobs on a real local Ray head, through the CLI in separate processes, as a user runs them."""

from __future__ import annotations

import json
import time

import psutil
import pytest

from helpers import REPO, run_cli, wait_for

pytestmark = pytest.mark.slow


def job_id_from(result) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, result.output
    return lines[-1].strip()


def job_status(head, job_id: str) -> str:
    result = head.cli("jobs", "--json")
    assert result.returncode == 0, result.output
    records = {r["submission_id"]: r for r in json.loads(result.stdout)}
    return records[job_id]["status"]


def test_python_job_that_writes_a_file_succeeds(head, write_spec, tmp_path):
    target = tmp_path / "out.txt"
    spec = write_spec("writer", "write_file", {"path": str(target), "text": "written on the cluster"})
    result = head.cli("submit", str(spec), "--wait", "--id", "writer-1")
    assert result.returncode == 0, result.output
    assert target.read_text() == "written on the cluster"
    assert "SUCCEEDED" in result.stderr
    assert f"wrote {target}" in result.stdout  # the job's own output, streamed
    assert job_status(head, "writer-1") == "SUCCEEDED"
    # the result file lands under storage.path/<name>/<id>/
    result_file = tmp_path / "runs" / "writer" / "writer-1" / "result.json"
    assert result_file.stat().st_mode & 0o044 == 0o044  # readable like any file the user writes
    payload = json.loads(result_file.read_text())
    assert payload["result"] == {"path": str(target), "bytes": len("written on the cluster")}
    assert payload["spec"]["python"]["function"] == "jobfuncs:write_file"


def test_failing_job_exits_1_and_logs_show_the_traceback(head, write_spec):
    spec = write_spec("failer", "fail", {"message": "boom-42"})
    result = head.cli("submit", str(spec), "--wait", "--id", "failer-1")
    assert result.returncode == 1, result.output
    assert "FAILED" in result.stderr
    logs = head.cli("logs", "failer-1")
    assert logs.returncode == 0
    assert "Traceback (most recent call last)" in logs.stdout
    assert "ValueError: job failed on purpose: boom-42" in logs.stdout
    assert job_status(head, "failer-1") == "FAILED"


def test_stop_ends_a_sleeping_job_and_its_process(head, write_spec, tmp_path):
    pid_file = tmp_path / "pid"
    spec = write_spec("sleeper", "sleep_forever", {"pid_file": str(pid_file)})
    submitted = head.cli("submit", str(spec), "--id", "sleeper-1")
    assert submitted.returncode == 0, submitted.output
    assert job_id_from(submitted) == "sleeper-1"
    wait_for(pid_file.exists, timeout_s=60, what="the sleeping job writing its pid")
    pid = int(pid_file.read_text())
    assert psutil.pid_exists(pid)
    started = time.monotonic()
    stopped = head.cli("stop", "sleeper-1")
    assert stopped.returncode == 0, stopped.output
    assert time.monotonic() - started < 10
    assert "STOPPED" in stopped.stderr
    assert job_status(head, "sleeper-1") == "STOPPED"
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             timeout_s=10, interval_s=0.1, what=f"the job's process {pid} ending")


def test_submit_with_address_reaches_a_head_started_by_up_elsewhere(head, write_spec, tmp_path):
    """`head` was started by `raytron up` in another process; a client with an empty RAYTRON_HOME
    reaches it by --address alone (token auth is on, so the token comes through RAY_AUTH_*)."""
    other_home = tmp_path / "client-home"
    env = {k: v for k, v in head.env.items()}
    env["RAYTRON_HOME"] = str(other_home)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(head.home / "auth_token")
    target = tmp_path / "via-address.txt"
    spec = write_spec("remote", "write_file", {"path": str(target), "text": "x"})
    result = run_cli("submit", str(spec), "--address", head.address, "--wait", env=env)
    assert result.returncode == 0, result.output
    assert target.read_text() == "x"
    assert not (other_home / "head.json").exists()  # no second head was started


def test_unauthenticated_client_is_refused(head, write_spec, tmp_path):
    env = dict(head.env)
    env["RAYTRON_HOME"] = str(tmp_path / "stranger")
    spec = write_spec("stranger", "write_file", {"path": str(tmp_path / "never"), "text": "x"})
    result = run_cli("submit", str(spec), "--address", head.address, env=env)
    assert result.returncode == 1, result.output
    assert "requires an auth token" in result.stderr and "RAY_AUTH_TOKEN_PATH" in result.stderr
    assert not (tmp_path / "never").exists()


def test_multi_worker_python_job_runs_every_rank(head, write_spec, tmp_path):
    spec = write_spec("ranks", "rank_info", resources={"num_workers": 2, "cpus_per_worker": 1})
    result = head.cli("submit", str(spec), "--wait", "--id", "ranks-1")
    assert result.returncode == 0, result.output
    payload = json.loads((tmp_path / "runs" / "ranks" / "ranks-1" / "result.json").read_text())
    assert sorted(r["rank"] for r in payload["result"]) == [0, 1]
    assert {r["world_size"] for r in payload["result"]} == {2}


def test_impossible_resources_are_rejected_before_submission(head, write_spec, tmp_path):
    before = json.loads(head.cli("jobs", "--json").stdout)
    spec = write_spec("toobig", "rank_info", resources={"num_workers": 1, "cpus_per_worker": 64})
    result = head.cli("submit", str(spec), "--wait")
    assert result.returncode == 2, result.output
    assert "`resources.cpus_per_worker`" in result.stderr and "largest has 4" in result.stderr
    spec = write_spec("toomany", "rank_info", resources={"num_workers": 5, "cpus_per_worker": 1})
    result = head.cli("submit", str(spec))
    assert result.returncode == 2, result.output
    assert "`resources.num_workers`" in result.stderr
    after = json.loads(head.cli("jobs", "--json").stdout)
    assert len(after) == len(before)


def test_status_shows_nodes_resources_and_running_jobs(head, write_spec, tmp_path):
    pid_file = tmp_path / "pid"
    spec = write_spec("busy", "sleep_forever", {"pid_file": str(pid_file)})
    assert head.cli("submit", str(spec), "--id", "busy-1").returncode == 0
    try:
        wait_for(pid_file.exists, timeout_s=60, what="the busy job starting")

        def status_seeing_the_job():
            result = head.cli("status")
            assert result.returncode == 0, result.output
            cpu_row = next(line for line in result.stdout.splitlines() if line.strip().startswith("CPU"))
            return result if cpu_row.split()[1:] == ["1", "3", "4"] else None  # used, free, total: the job holds 1 CPU

        # Ray's monitor refreshes resource use every few seconds: wait for a report that sees the job.
        result = wait_for(status_seeing_the_job, timeout_s=30, interval_s=1, what="`raytron status` showing 1 of 4 CPUs used")
        assert "127.0.0.1" in result.stdout and "head" in result.stdout
        assert "busy-1" in result.stdout and "RUNNING" in result.stdout
    finally:
        head.cli("stop", "busy-1")


def test_logs_and_stop_of_unknown_job_exit_2(head):
    for command in ("logs", "stop"):
        result = head.cli(command, "no-such-job")
        assert result.returncode == 2, result.output
        assert "no job 'no-such-job'" in result.stderr


def test_the_demo_spec_runs(head):
    result = head.cli("submit", str(REPO / "examples" / "hello.yaml"), "--wait", "--set", "storage.path=" + str(head.home / "runs"))
    assert result.returncode == 0, result.output
    assert "hello from rank 0" in result.stdout
    assert 'raytron: result = {"rank": 0, "n": 1000, "sum_of_squares": 332833500' in result.stdout


def test_every_ray_listener_of_the_head_is_on_loopback(head):
    info = json.loads((head.home / "head.json").read_text())
    procs = [p for p in psutil.process_iter(["cmdline"]) if info["temp_dir"] in " ".join(p.info["cmdline"] or [])]
    assert procs
    listening = []
    for proc in procs:
        try:
            listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert listening, "the head listens somewhere"
    assert all(_is_loopback(addr.ip) for addr in listening), listening


def _is_loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback seen by a dual-stack socket
    return (mapped or addr).is_loopback
