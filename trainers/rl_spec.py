"""The `rl` job kind: a Gymnasium environment, PPO, rollout workers on Ray, and when to stop.

    kind: rl
    name: cartpole-ppo
    resources: {num_workers: 2, cpus_per_worker: 1}    # rollout workers (Ray actors)
    rl:
      env: {id: CartPole-v1}
      algorithm: ppo
      envs_per_worker: 8                               # a vectorized set per worker
      rollout_steps: 128                               # steps of each env per batch
      ppo: {lr: 3.0e-4, epochs: 10, minibatch_size: 512}
      stop: {mean_return: 450, env_steps: 500000, time_s: 600}

One learner (the job's driver process; it holds `rl.learner.gpus` when the cluster has GPUs) and
`resources.num_workers` rollout workers. A training batch is one fragment of
`envs_per_worker x rollout_steps` transitions from every worker.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from raytron.cluster.errors import SpecProblem
from raytron.cluster.spec import JobSpec, SpecModel

__all__ = ["RLJobSpec", "RLConfig", "EnvConfig", "PolicyConfig", "PPOConfig", "LearnerConfig", "StopConfig", "RLCheckpointConfig", "env_id_problem"]


class EnvConfig(SpecModel):
    """Which Gymnasium environment every rollout worker steps."""

    id: str
    """A registered Gymnasium id, e.g. `CartPole-v1`, `Acrobot-v1`, `Pendulum-v1`."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of `gymnasium.make` (e.g. `max_episode_steps`)."""
    vectorization: Literal["sync", "async"] = "sync"
    """How a worker steps its environments: `sync` in its own process (cheap environments such as
    classic control, where a process per environment costs more than it saves), or `async` with a
    subprocess per environment (expensive environments)."""


class PolicyConfig(SpecModel):
    """The actor and the critic: two separate MLPs over the observation."""

    hidden: int = Field(64, ge=1, le=8192)
    layers: int = Field(2, ge=1, le=8)
    activation: Literal["tanh", "relu"] = "tanh"


class PPOConfig(SpecModel):
    """Proximal policy optimization (clipped surrogate objective, GAE)."""

    lr: float = Field(3e-4, gt=0, le=1)
    lr_anneal: bool = False
    """Decay the learning rate linearly to 0 over `stop.env_steps`."""
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0, le=1)
    """Clip range of the probability ratio."""
    epochs: int = Field(10, ge=1, le=100)
    """Passes over each batch."""
    minibatch_size: int = Field(512, ge=1)
    entropy_coef: float = Field(0.0, ge=0)
    value_coef: float = Field(0.5, ge=0)
    max_grad_norm: float | None = Field(0.5, gt=0)
    normalize_advantages: bool = True
    target_kl: float | None = Field(None, gt=0)
    """Stop a batch's epochs early once the approximate KL to the sampling policy exceeds this."""


class LearnerConfig(SpecModel):
    """Where the learner runs: in the job's driver process, which reserves these resources."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: CUDA when the driver was given a GPU, else CPU."""
    cpus: float = Field(1.0, ge=0, le=1024)
    gpus: float = Field(0.0, ge=0, le=1)
    threads: int = Field(1, ge=1, le=256)
    """torch threads of the learner on CPU (small policies learn fastest on one)."""


class StopConfig(SpecModel):
    """Training stops at whichever comes first; at least one must be set."""

    mean_return: float | None = None
    """Mean return over the last `window_episodes` finished episodes."""
    env_steps: int | None = Field(None, ge=1)
    time_s: float | None = Field(None, gt=0)
    window_episodes: int = Field(100, ge=1, le=100_000)


class RLCheckpointConfig(SpecModel):
    every_iterations: int = Field(10, ge=1)
    """A checkpoint every this many learner iterations, and one at the end."""
    keep: int = Field(3, ge=1)


class RLConfig(SpecModel):
    """Body of a `kind: rl` spec."""

    env: EnvConfig
    algorithm: Literal["ppo"] = "ppo"
    envs_per_worker: int = Field(8, ge=1, le=4096)
    rollout_steps: int = Field(128, ge=1, le=100_000)
    """Steps of each environment per batch fragment."""
    max_policy_lag: int = Field(1, ge=0, le=1)
    """1: workers sample the next batch while the learner learns on this one, so a batch comes from
    the policy one update behind (PPO's ratio is taken against the policy that sampled it). 0: they
    wait for the new weights (no overlap, strictly on-policy)."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    stop: StopConfig = Field(default_factory=lambda: StopConfig(mean_return=None, env_steps=100_000))
    checkpoint: RLCheckpointConfig = Field(default_factory=RLCheckpointConfig)
    seed: int = Field(0, ge=0)
    log_every_s: float = Field(2.0, gt=0)
    """How often the progress line is printed."""
    max_worker_restarts: int = Field(3, ge=0, le=1000)
    """A dead rollout worker is replaced this many times in all before the job fails."""
    worker_start_timeout_s: float = Field(120.0, gt=0)
    """How long rollout workers may wait for the cluster's resources (an autoscaling cluster adds
    nodes in minutes) before the job fails, naming what they need and what the cluster has."""


class RLJobSpec(JobSpec):
    """Reinforcement learning with rollout workers on Ray; `resources` are per rollout worker."""

    KIND = "rl"
    RUNNER = "raytron.trainers.rl:run_rl_job"

    rl: RLConfig

    @property
    def run_dir(self) -> Path:
        """`<storage.path>/<name>`: checkpoints, metrics.jsonl, workers.json and result.json."""
        return Path(os.path.expanduser(self.storage.path)) / self.name

    @property
    def fragment_steps(self) -> int:
        return self.rl.envs_per_worker * self.rl.rollout_steps

    @property
    def batch_steps(self) -> int:
        return self.resources.num_workers * self.fragment_steps

    def entrypoint_resources(self) -> tuple[float, float]:
        return (self.rl.learner.cpus, self.rl.learner.gpus)

    def problems(self) -> list[SpecProblem]:
        rl, problems = self.rl, []
        problem = env_id_problem(rl.env.id)
        if problem:
            problems.append(SpecProblem("rl.env.id", problem, rl.env.id))
        s = rl.stop
        if s.mean_return is None and s.env_steps is None and s.time_s is None:
            problems.append(SpecProblem("rl.stop", "set at least one of `mean_return`, `env_steps` or `time_s`: training would never end", s.model_dump()))
        if rl.ppo.minibatch_size > self.batch_steps:
            problems.append(SpecProblem("rl.ppo.minibatch_size", f"larger than a batch ({self.resources.num_workers} worker(s) x {rl.envs_per_worker} env(s) "
                                        f"x {rl.rollout_steps} steps = {self.batch_steps}); lower it or raise `rl.rollout_steps`", rl.ppo.minibatch_size))
        if rl.ppo.lr_anneal and s.env_steps is None:
            problems.append(SpecProblem("rl.ppo.lr_anneal", "anneals over `rl.stop.env_steps`, which is not set", True))
        if rl.learner.device == "cuda" and rl.learner.gpus == 0:
            problems.append(SpecProblem("rl.learner.device", "`cuda` needs `rl.learner.gpus` > 0 so the driver is given a GPU", "cuda"))
        return problems


def env_id_problem(env_id: str) -> str | None:
    """Why `env_id` cannot be made with `gymnasium.make`, or None when it is registered."""
    try:
        import gymnasium
    except ImportError:
        return "gymnasium is not installed here (`pip install gymnasium`)"
    registry = gymnasium.envs.registry
    if env_id in registry:
        return None
    close = difflib.get_close_matches(env_id, list(registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1"
    return f"not a registered Gymnasium environment id{hint} (ids registered with Gymnasium on this machine are accepted)"
