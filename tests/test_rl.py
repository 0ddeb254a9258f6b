"""Reinforcement learning (`kind: rl`): PPO with real rollout-worker actors stepping real Gymnasium
environments, the policy exported and served through real Triton replicas and the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import RAYTRON, REPO, base_env, interrupt, wait_for
from raytron.cluster import SpecError, parse_spec
from raytron.trainers.rl_ppo import gae
from raytron.trainers.rl_rollout import RolloutWorker


def rl_dict(**rl) -> dict:
    body = {"env": {"id": "CartPole-v1"}, "envs_per_worker": 4, "rollout_steps": 32, "ppo": {"minibatch_size": 64}, "stop": {"env_steps": 1000}}
    body.update(rl)
    return {"name": "cp", "kind": "rl", "resources": {"num_workers": 2, "cpus_per_worker": 1}, "rl": body}


def write(tmp_path: Path, name: str, **rl) -> Path:
    data = {**rl_dict(**rl), "name": name, "storage": {"path": str(tmp_path / "runs")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "runs" / name


# ----------------------------------------------------------------------------- fast


@pytest.mark.parametrize("rl,path,words", [
    ({"env": {"id": "Cartpole-v1"}}, "rl.env.id", "did you mean CartPole-v1"),
    ({"env": {"id": "NoSuchGame-v9"}}, "rl.env.id", "not a registered Gymnasium environment id"),
    ({"stop": {"mean_return": None}}, "rl.stop", "set at least one of"),
    ({"ppo": {"minibatch_size": 1000}}, "rl.ppo.minibatch_size", "larger than a batch (2 worker(s) x 4 env(s) x 32 steps = 256)"),
    ({"algorithm": "a3c"}, "rl.algorithm", "'ppo'"),
    ({"max_policy_lag": 2}, "rl.max_policy_lag", "less than or equal to 1"),
    ({"ppo": {"lr_anneal": True}, "stop": {"time_s": 10}}, "rl.ppo.lr_anneal", "rl.stop.env_steps"),
    ({"learner": {"device": "cuda"}}, "rl.learner.device", "rl.learner.gpus"),
    ({"envs_per_worker": 0}, "rl.envs_per_worker", "greater than or equal to 1"),
])
def test_invalid_rl_specs_name_the_field(rl, path, words):
    with pytest.raises(SpecError) as info:
        parse_spec(rl_dict(**rl))
    assert path in info.value.paths, str(info.value)
    assert words in str(info.value), str(info.value)


def test_gae_matches_a_hand_computation():
    # Two envs, three steps; env 1's episode ends after step 0.
    rewards = torch.tensor([[1.0, 1.0], [1.0, 2.0], [0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2], [0.4, 0.1], [0.3, 0.6]])
    dones = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    last = torch.tensor([0.7, 0.9])
    g, lam = 0.9, 0.8
    expected = np.zeros((3, 2))
    for n in range(2):
        running = 0.0
        for t in reversed(range(3)):
            nxt = last[n].item() if t == 2 else values[t + 1, n].item()
            alive = 1.0 - dones[t, n].item()
            delta = rewards[t, n].item() + g * nxt * alive - values[t, n].item()
            running = delta + g * lam * alive * running
            expected[t, n] = running
    np.testing.assert_allclose(gae(rewards, values, last, dones, g, lam).numpy(), expected, rtol=1e-6)
    assert expected[0, 1] == pytest.approx(1.0 - 0.2)  # an ended episode takes nothing from the next one


def test_a_rollout_worker_steps_real_environments_and_keeps_truncated_observations():
    """The worker class outside Ray: fragments are time-major, episodes counted, time-limit cuts kept."""
    spec = parse_spec(rl_dict(env={"id": "CartPole-v1", "kwargs": {"max_episode_steps": 5}}, envs_per_worker=3, rollout_steps=12))
    worker = RolloutWorker(spec.to_json(), index=0, seed=1)
    weights = {k: v.numpy() for k, v in worker.policy.state_dict().items()}
    frag = worker.sample(weights, version=0)
    assert frag["obs"].shape == (12, 3, 4) and frag["actions"].shape == (12, 3) and frag["logp"].shape == (12, 3)
    assert set(np.unique(frag["actions"])) <= {0, 1} and np.all(frag["logp"] <= 0)
    # Every 5th step of every env is a time-limit cut unless the pole fell first.
    cut = frag["truncated"] & ~frag["terminated"]
    assert cut.any()
    assert np.all(np.abs(frag["final_obs"][cut]).sum(-1) > 0) and np.all(frag["final_obs"][~cut] == 0)
    assert all(length <= 5 for _, length in frag["episodes"]) and len(frag["episodes"]) >= 6
    # The episode goes on across fragments: the next one starts where this one stopped.
    nxt = worker.sample(weights, version=0)
    np.testing.assert_array_equal(nxt["obs"][0], frag["last_obs"])
    worker.close()


# ----------------------------------------------------------------------------- slow: real Ray, Triton, gRPC

SOLVE = {"envs_per_worker": 8, "rollout_steps": 128, "ppo": {"lr": 1.0e-3, "epochs": 10, "minibatch_size": 256, "entropy_coef": 0.0},
         "stop": {"mean_return": 450, "env_steps": 300_000, "window_episodes": 20}, "checkpoint": {"every_iterations": 5}, "seed": 1}


@pytest.fixture(scope="module")
def solved(head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    spec = write(tmp, "cartpole", **SOLVE)
    result = head.cli("submit", str(spec), "--wait", timeout_s=400)
    assert result.returncode == 0, result.output
    return tmp, result.output


@pytest.mark.slow
def test_ppo_solves_cartpole_on_two_rollout_workers(solved):
    tmp, output = solved
    result = json.loads((run_dir(tmp, "cartpole") / "result.json").read_text())
    assert result["episode_return_mean"] >= 450, result
    assert result["reached_target"] and result["env_steps"] <= 300_000, result
    rows = [json.loads(line) for line in (run_dir(tmp, "cartpole") / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] == result["env_steps"] and rows[0]["episode_return_mean"] < 100 < 450 <= rows[-1]["episode_return_mean"]
    assert {r["policy_lag_max"] for r in rows[1:]} == {1}  # sampling overlapped learning, one version behind
    assert "env steps/s" in output and "mean return" in output


@pytest.mark.slow
def test_the_trained_policy_is_exported_served_and_balances_the_pole(solved, tmp_path):
    import gymnasium as gym
    import tritonclient.grpc as grpcclient

    from raytron.serving.export import export_checkpoint
    from raytron.serving.triton import free_port

    tmp, _ = solved
    exported = export_checkpoint(run_dir(tmp, "cartpole"), name="cartpole", repo=tmp_path / "repo", format="onnx")
    assert exported.models[0].parity.passed and exported.sample_source["kind"] == "environment"
    lineage = json.loads(exported.models[0].lineage_path.read_text())
    assert lineage["source"]["kind"] == "rl-checkpoint" and lineage["source"]["env"]["id"] == "CartPole-v1"
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([RAYTRON, "serve", str(tmp_path / "repo"), "--port", str(port)], env=base_env(tmp_path / "home"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    returns = []
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(lambda: _ready(client, "cartpole"), timeout_s=120, what="raytron serve becoming ready")
        env = gym.make("CartPole-v1")
        for episode in range(3):
            obs, _ = env.reset(seed=100 + episode)
            total, done = 0.0, False
            while not done:
                request = grpcclient.InferInput("obs", [1, 4], "FP32")
                request.set_data_from_numpy(np.asarray(obs, dtype=np.float32)[None])
                logits = client.infer("cartpole", [request]).as_numpy("logits")
                obs, reward, terminated, truncated, _ = env.step(int(logits[0].argmax()))
                total += reward
                done = terminated or truncated
            returns.append(total)
        client.close()
    finally:
        interrupt(proc)
    assert np.mean(returns) >= 450, (returns, log.read_text()[-2000:])


def _ready(client, name: str) -> bool:
    try:
        return client.is_server_ready() and client.is_model_ready(name)
    except Exception:
        return False


@pytest.mark.slow
def test_a_killed_rollout_worker_is_replaced_and_training_goes_on(head, tmp_path):
    spec = write(tmp_path, "victim", envs_per_worker=4, rollout_steps=64, stop={"env_steps": 40_000}, ppo={"minibatch_size": 128})
    assert head.cli("submit", str(spec), "--id", "rl-victim-1").returncode == 0
    workers_file = run_dir(tmp_path, "victim") / "workers.json"
    metrics = run_dir(tmp_path, "victim") / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, timeout_s=120, what="victim's first iterations")
    victim = json.loads(workers_file.read_text())["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)

    record = head.wait_ended("rl-victim-1", timeout_s=240, what="rl-victim-1 ending")
    logs = head.cli("logs", "rl-victim-1").stdout
    assert record["status"] == "SUCCEEDED", logs
    assert f"rollout worker 1 (pid {victim}) died" in logs and "replacing it (1 of at most 3)" in logs, logs
    result = json.loads((run_dir(tmp_path, "victim") / "result.json").read_text())
    assert result["worker_restarts"] == 1 and result["env_steps"] >= 40_000
    workers = json.loads(workers_file.read_text())
    assert workers["replaced"] == 1 and workers["workers"][1]["pid"] != victim
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))  # no iteration lost or repeated


@pytest.mark.slow
def test_a_resubmitted_run_resumes_from_its_checkpoint(head, tmp_path):
    from raytron.trainers.checkpoint import list_checkpoints, load_model_state

    spec = write(tmp_path, "resume", stop={"env_steps": 2560}, checkpoint={"every_iterations": 2})
    first = head.cli("submit", str(spec), "--wait", timeout_s=240)
    assert first.returncode == 0, first.output
    ckpts = run_dir(tmp_path, "resume") / "checkpoints"
    assert [c.step for c in list_checkpoints(ckpts)] == [6, 8, 10]  # 256 steps per iteration; keep 3
    before = load_model_state(ckpts / "step-00000010")
    again = head.cli("submit", str(spec), "--wait", timeout_s=240)
    assert again.returncode == 0 and "already stopped at iteration 10" in again.stdout, again.output
    longer = head.cli("submit", str(spec), "--wait", "--set", "rl.stop.env_steps=5120", timeout_s=240)
    assert longer.returncode == 0, longer.output
    assert "resuming resume from step-00000010: iteration 10, 2,560 env steps" in longer.stdout, longer.stdout
    rows = [json.loads(line) for line in (run_dir(tmp_path, "resume") / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 21)) and rows[-1]["env_steps"] == 5120
    meta = json.loads((ckpts / "step-00000020" / "meta.json").read_text())
    assert meta["env_steps"] == 5120 and meta["window"]["total"] >= len(meta["window"]["returns"]) > 0
    after = load_model_state(ckpts / "step-00000020")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on from the checkpoint's weights


@pytest.mark.slow
def test_raytron_stop_checkpoints_the_last_iteration(head, tmp_path):
    spec = write(tmp_path, "stopped", stop={"env_steps": 10_000_000}, checkpoint={"every_iterations": 1000}, max_policy_lag=0)
    assert head.cli("submit", str(spec), "--id", "rl-stopped-1").returncode == 0
    metrics = run_dir(tmp_path, "stopped") / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, timeout_s=120, what="rl-stopped-1's first iterations")
    assert head.cli("stop", "rl-stopped-1", timeout_s=120).returncode == 0
    result = json.loads((run_dir(tmp_path, "stopped") / "result.json").read_text())
    assert result["stop_reason"].startswith("stopped by SIGTERM"), result
    rows = metrics.read_text().splitlines()
    assert result["iterations"] == len(rows) and (run_dir(tmp_path, "stopped") / "checkpoints" / f"step-{len(rows):08d}").is_dir()
    assert {json.loads(r)["policy_lag_max"] for r in rows} == {0}  # max_policy_lag 0: every batch from the newest policy


@pytest.mark.slow
def test_workers_the_cluster_cannot_place_fail_the_job_with_what_they_need(head, tmp_path):
    # Refused at submission: 4 workers x 1 CPU + the learner's 1 CPU do not fit the 4-CPU head.
    spec = write(tmp_path, "toobig", worker_start_timeout_s=3)
    refused = head.cli("submit", str(spec), "--set", "resources.num_workers=4")
    assert refused.returncode == 2, refused.output
    assert "4 workers x 1 CPU + 1 CPU for the job's driver = 5 CPU, but the cluster has 4 in all" in " ".join(refused.stderr.split())
    # Accepted, but another job holds the CPUs its workers need: it fails after the timeout, saying why.
    hog = write(tmp_path, "hog", stop={"env_steps": 10_000_000})
    assert head.cli("submit", str(hog), "--id", "rl-hog-1").returncode == 0
    try:
        metrics = run_dir(tmp_path, "hog") / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text(), timeout_s=120, what="rl-hog-1 training")
        result = head.cli("submit", str(spec), "--wait", timeout_s=180)
        assert result.returncode == 1, result.output
        logs = " ".join(result.output.split())
        assert "2 rollout worker(s) did not start within 3 s" in logs and "each needs 1 CPU; the cluster has 4 CPU (0 free)" in logs, result.output[-3000:]
    finally:
        head.cli("stop", "rl-hog-1", timeout_s=120)
