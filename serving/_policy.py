"""The export side of an `rl` checkpoint: rebuild the policy, and observations of its own environment for parity.

The exported model takes `obs` (float32 `[batch, obs_dim]`) and returns `logits` (one score per
action; the greedy action is their argmax) for discrete actions, or `action_mean` for continuous
ones. Parity samples are real observations: the environment is stepped with the checkpoint's own
greedy policy from a fixed seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytron.serving.errors import ExportError

__all__ = ["is_rl_meta", "load_policy_for_export", "rollout_observations"]


def is_rl_meta(meta: Any) -> bool:
    return isinstance(meta, dict) and meta.get("kind") == "rl"


def rollout_observations(env: dict[str, Any], policy, count: int, seed: int = 0) -> np.ndarray:
    """`count` observations met by stepping one environment with the policy's greedy actions."""
    import gymnasium as gym

    made = gym.make(env["id"], **env.get("kwargs", {}))
    try:
        obs, _ = made.reset(seed=seed)
        seen = []
        while len(seen) < count:
            seen.append(np.asarray(obs, dtype=np.float32))
            with torch.no_grad():
                out = policy(torch.from_numpy(seen[-1]).unsqueeze(0))[0]
            action = int(out.argmax()) if policy.discrete else np.clip(out.numpy(), made.action_space.low, made.action_space.high)
            obs, _, terminated, truncated, _ = made.step(action)
            if terminated or truncated:
                obs, _ = made.reset()
        return np.stack(seen)
    finally:
        made.close()


class _Greedy(torch.nn.Module):
    """The actor with the flag `rollout_observations` needs; not what is exported."""

    def __init__(self, actor_critic):
        super().__init__()
        self.actor, self.discrete = actor_critic.actor, actor_critic.discrete

    def forward(self, obs):
        return self.actor(obs)


def load_policy_for_export(step_dir: Path, run_dir: Path | None, meta: dict[str, Any], *, samples: int):
    """The checkpoint's policy output module, `samples` real observations, and its lineage."""
    from raytron.serving._checkpoint import ExportSource, checkpoint_lineage
    from raytron.trainers.checkpoint import load_model_state
    from raytron.trainers.rl_policy import build_policy

    meta_path = step_dir / "meta.json"
    try:
        info, rl = meta["space_info"], meta["spec"]["rl"]
        env, policy_cfg = rl["env"], rl["policy"]
    except (KeyError, TypeError) as exc:
        raise ExportError(f"{meta_path} is an rl checkpoint without {exc}: it was not written by raytron's rl trainer") from None
    policy = build_policy(info, policy_cfg)
    try:
        policy.load_state_dict(load_model_state(step_dir))
    except RuntimeError as exc:
        raise ExportError(f"the weights in {step_dir / 'model.safetensors'} do not fit the policy described in {meta_path}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    policy.eval()
    try:
        obs = rollout_observations(env, _Greedy(policy), samples)
    except Exception as exc:  # gymnasium raises many kinds (missing env, missing extra)
        raise ExportError(f"cannot step {env.get('id')!r} for parity samples: {exc}; the exporter needs the run's environment installed") from None
    output = "logits" if policy.discrete else "action_mean"
    lineage = {
        **checkpoint_lineage("rl-checkpoint", step_dir, run_dir),
        "iteration": meta.get("iteration"),
        "env_steps": meta.get("env_steps"),
        "metrics": meta.get("metrics"),
        "env": env,
        "space_info": info,
        "policy": policy_cfg,
        "input_preprocessing": {"obs": "float32 observations as the environment returns them"},
        "output": f"{output}: " + ("one score per action; the greedy action is the argmax" if policy.discrete else "the mean action (before clipping to the bounds)"),
    }
    sample_source = {"kind": "environment", "env": env.get("id"), "policy": "greedy", "seed": 0, "samples": int(obs.shape[0])}
    return ExportSource(module=policy.output_module(), inputs={"obs": obs}, output_names=[output], lineage=lineage, sample_source=sample_source)
