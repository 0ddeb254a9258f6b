"""A rollout worker of the `rl` kind: a vectorized set of Gymnasium environments and a CPU copy of the policy.

Run as a Ray actor (`ray.remote(RolloutWorker)`); each `sample` call steps every environment
`rollout_steps` times with the weights it is handed and returns the fragment as NumPy arrays
(time-major, `[rollout_steps, envs, ...]`), which travel through the object store without a copy.
Environments keep running across calls: an episode that is cut by the end of a fragment goes on in
the next one.

Environments reset in the same step that ends an episode (Gymnasium's `SAME_STEP` autoreset), so
every transition of a fragment is a real one; the observation an episode ended on is kept for
truncated episodes, whose value the learner bootstraps from.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

__all__ = ["RolloutWorker", "make_vector_env"]


def make_vector_env(env: dict[str, Any], num_envs: int):
    """`gymnasium.make_vec` with same-step autoreset; `env` is a spec's `rl.env` as a mapping."""
    import gymnasium as gym

    return gym.make_vec(env["id"], num_envs=num_envs, vectorization_mode=env.get("vectorization", "sync"),
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **env.get("kwargs", {}))


class RolloutWorker:
    """Steps `envs_per_worker` environments with a CPU copy of the policy."""

    def __init__(self, spec_json: str, index: int, seed: int):
        import torch

        from raytron.trainers.rl_policy import build_policy, space_info
        from raytron.trainers.rl_spec import RLJobSpec

        torch.set_num_threads(1)  # a small policy on a handful of observations: threads only add overhead
        spec = RLJobSpec.model_validate_json(spec_json)
        rl = spec.rl
        self.index, self.seed = index, seed
        self.rollout_steps, self.num_envs = rl.rollout_steps, rl.envs_per_worker
        self.envs = make_vector_env(rl.env.model_dump(), self.num_envs)
        self.info = space_info(self.envs.single_observation_space, self.envs.single_action_space)
        torch.manual_seed(seed)
        self.policy = build_policy(self.info, rl.policy.model_dump())
        self.policy.eval()
        self.version = -1
        self.obs, _ = self.envs.reset(seed=seed)
        self.episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_length = np.zeros(self.num_envs, dtype=np.int64)
        if self.info["action"] == "continuous":
            self.action_low = np.asarray(self.info["action_low"], dtype=np.float32)
            self.action_high = np.asarray(self.info["action_high"], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Who this worker is (pid, node) and the spaces its environments have."""
        import ray

        return {"index": self.index, "pid": os.getpid(), "node_ip": ray.util.get_node_ip_address(), "seed": self.seed, "space_info": self.info}

    def sample(self, weights: dict[str, np.ndarray], version: int) -> dict[str, Any]:
        """One fragment with the policy of `version` (its weights are loaded once per version)."""
        import torch

        started = time.perf_counter()
        if version != self.version:
            self.policy.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.version = version
        T, N, D = self.rollout_steps, self.num_envs, self.info["obs_dim"]
        discrete = self.info["action"] == "discrete"
        obs = np.empty((T, N, D), dtype=np.float32)
        actions = np.empty((T, N) if discrete else (T, N, self.info["action_dim"]), dtype=np.int64 if discrete else np.float32)
        logp = np.empty((T, N), dtype=np.float32)
        rewards = np.empty((T, N), dtype=np.float32)
        terminated = np.empty((T, N), dtype=bool)
        truncated = np.empty((T, N), dtype=bool)
        final_obs = np.zeros((T, N, D), dtype=np.float32)  # filled where an episode was truncated
        episodes: list[tuple[float, int]] = []
        for t in range(T):
            obs[t] = self.obs
            a, lp = self.policy.act(torch.from_numpy(obs[t]))
            actions[t] = a.numpy()
            logp[t] = lp.numpy()
            step_actions = actions[t] if discrete else np.clip(actions[t], self.action_low, self.action_high)
            self.obs, reward, term, trunc, info = self.envs.step(step_actions)
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            self.episode_return += reward
            self.episode_length += 1
            done = term | trunc
            if done.any():
                cut = trunc & ~term
                if cut.any():
                    final_obs[t, cut] = np.stack(info["final_obs"][cut])
                for i in np.flatnonzero(done):
                    episodes.append((float(self.episode_return[i]), int(self.episode_length[i])))
                self.episode_return[done] = 0.0
                self.episode_length[done] = 0
        return {
            "worker": self.index, "version": version, "obs": obs, "actions": actions, "logp": logp, "rewards": rewards,
            "terminated": terminated, "truncated": truncated, "final_obs": final_obs, "last_obs": np.array(self.obs, dtype=np.float32),
            "episodes": episodes, "sample_s": time.perf_counter() - started,
        }

    def close(self) -> None:
        self.envs.close()
