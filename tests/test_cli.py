"""The CLI without a cluster: help for every command, and bad input rejected with exit code 2
before anything connects or is submitted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, base_env, run_cli

COMMANDS = ["up", "down", "status", "submit", "jobs", "logs", "stop", "export", "serve", "bench", "gateway", "autoscaler", "k8s"]
# A port nothing listens on: if validation let a spec through, the command would fail to connect
# with exit 1 and a connection message instead of exit 2 and the field.
CLOSED = "http://127.0.0.1:9"


@pytest.fixture
def env(tmp_path):
    return base_env(tmp_path / "home")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, env):
    result = run_cli(command, "--help", env=env)
    assert result.returncode == 0, result.output
    assert "Usage: raytron " + command in result.stdout


def test_top_level_help_lists_every_command(env):
    result = run_cli("--help", env=env)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_submit_help_explains_every_option(env):
    out = run_cli("submit", "--help", env=env).stdout
    for option in ("--address", "--set", "--wait", "--id"):
        assert option in out


def bad_spec(tmp_path, **changes) -> Path:
    spec = {"name": "bad", "kind": "python", "python": {"function": "m:f"}}
    spec.update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_invalid_spec_exits_2_naming_the_field(tmp_path, env):
    path = bad_spec(tmp_path, resources={"num_workers": 0})
    result = run_cli("submit", str(path), "--address", CLOSED, env=env)
    assert result.returncode == 2, result.output
    assert "`resources.num_workers`" in result.stderr
    assert "nothing was submitted" in result.stderr


def test_invalid_override_exits_2(tmp_path, env):
    path = bad_spec(tmp_path)
    result = run_cli("submit", str(path), "--address", CLOSED, "--set", "resources.cpus_per_worker=abc", env=env)
    assert result.returncode == 2, result.output
    assert "`resources.cpus_per_worker`" in result.stderr and "set by --set" in result.stderr


def test_missing_spec_file_exits_2(tmp_path, env):
    result = run_cli("submit", str(tmp_path / "nope.yaml"), "--address", CLOSED, env=env)
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_bad_flag_exits_2(env):
    result = run_cli("up", "--num-cpus", "0", env=env)
    assert result.returncode == 2
    assert "--num-cpus" in result.output


def test_valid_spec_against_an_unreachable_cluster_is_a_connection_error(tmp_path, env):
    path = bad_spec(tmp_path)
    result = run_cli("submit", str(path), "--address", CLOSED, env=env)
    assert result.returncode == 1, result.output
    assert "could not reach a Ray Jobs API at http://127.0.0.1:9" in result.stderr


def test_commands_that_need_a_running_head_say_how_to_start_one(env):
    result = run_cli("jobs", env=env)
    assert result.returncode == 1
    assert "raytron up" in result.stderr


def test_down_without_a_head_is_a_no_op(env):
    result = run_cli("down", env=env)
    assert result.returncode == 0
    assert "no local Ray head is running" in result.stderr


def test_unknown_bench_theme_lists_the_themes(env):
    result = run_cli("bench", "no-such-theme", env=env)
    assert result.returncode == 2
    assert "available:" in result.stderr and "submit" in result.stderr


def test_bench_passes_the_options_it_does_not_know_to_the_theme(env):
    """`raytron bench tune --repeats 3` reaches bench/tune.py; what the theme refuses, it says."""
    result = run_cli("bench", "tune", "--repeats", "three", env=env)
    assert result.returncode == 2
    assert "tune.py: error: argument --repeats: invalid int value: 'three'" in result.stderr, result.stderr
    result = run_cli("bench", "tune", "--no-such-option", env=env)
    assert result.returncode == 2 and "unrecognized arguments: --no-such-option" in result.stderr, result.stderr


def test_import_datasets_from_the_repo_root_is_never_ours():
    """Hugging Face's `datasets` must not be shadowed by our datasets/ folder."""
    code = "import datasets, sys; print(getattr(datasets, '__file__', None)); print(list(getattr(datasets, '__path__', [])))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    file_line, path_line = proc.stdout.strip().splitlines()
    assert file_line != "None", "`import datasets` resolved to a namespace package (our folder?)"
    assert not Path(file_line).resolve().is_relative_to(REPO.resolve()) or ".venv" in Path(file_line).parts, file_line
    assert str(REPO / "datasets") not in path_line


def test_our_subpackages_import_as_raytron():
    code = "import raytron.cluster, raytron.datasets, raytron.trainers, raytron.serving; print(raytron.cluster.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_step_lines_drive_the_bar_even_split_across_log_chunks():
    import io

    from rich.console import Console

    from raytron.cluster.cli._progress import JobLine, parse_step_line

    assert parse_step_line("(TrainWorker pid=123) raytron: step 40/130 epoch 0: loss 0.3100, 2,000 samples/s") == (40, 130, "epoch 0: loss 0.3100, 2,000 samples/s")
    assert parse_step_line("\x1b[36m(RayTrainWorker pid=7, ip=127.0.0.1)\x1b[0m raytron: step 5/5") == (5, 5, "")
    for not_a_step in ("raytron: step 3 epoch 0: loss 1", "raytron: stepping 1/2", "raytron: step 1/0", "step 1/2"):
        assert parse_step_line(not_a_step) is None, not_a_step
    screen = io.StringIO()
    with JobLine(Console(file=screen, force_terminal=True, force_interactive=False, width=160), "job-1") as line:
        line.status("RUNNING", "3.0s")
        log = "(TrainWorker pid=1) raytron: training...\n(TrainWorker pid=1) raytron: step 10/20 epoch 0: loss 0.50\n(TrainWorker pid=1) raytron: ste"
        line.feed(log[:50])
        line.feed(log[50:])  # a chunk boundary inside a line
        line.feed("p 20/20 epoch 1: loss 0.25\n")
    assert "job-1 RUNNING 3.0s" in screen.getvalue() and "step 20/20 epoch 1: loss 0.25" in screen.getvalue(), screen.getvalue()
