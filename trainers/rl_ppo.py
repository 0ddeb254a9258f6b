"""The PPO learner of the `rl` kind: GAE over rollout fragments, then clipped-surrogate updates.

Values are computed by the learner with its current critic for every observation of the batch
(not taken from the rollout workers), so a batch sampled one policy version behind still gets
advantages from the newest value estimate; the probability ratio is taken against the log-probs
of the policy that actually sampled the actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raytron.trainers.rl_policy import ActorCritic
from raytron.trainers.rl_spec import PPOConfig

__all__ = ["PPOLearner", "gae"]


def gae(rewards: torch.Tensor, values: torch.Tensor, last_values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalized advantage estimates, time-major `[T, N]`; `dones[t]` ends the episode after step t."""
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values)
    for t in reversed(range(T)):
        next_values = last_values if t == T - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
    return advantages


class PPOLearner:
    """Holds the policy and its optimizer; `update` learns on one batch of fragments."""

    def __init__(self, policy: ActorCritic, cfg: PPOConfig, device: torch.device, seed: int):
        self.policy, self.cfg, self.device = policy.to(device), cfg, device
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)

    def weights(self) -> dict[str, np.ndarray]:
        """The policy's weights as NumPy arrays, for the rollout workers (through the object store)."""
        return {k: v.detach().cpu().numpy() for k, v in self.policy.state_dict().items()}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def update(self, fragments: list[dict[str, Any]]) -> dict[str, float]:
        """GAE and `epochs` passes of minibatch updates over the fragments (one per worker)."""
        cfg, policy, dev = self.cfg, self.policy, self.device

        def cat(key: str, axis: int = 1) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([f[key] for f in fragments], axis=axis)).to(dev)

        obs, actions, old_logp = cat("obs"), cat("actions"), cat("logp")
        rewards, terminated, truncated = cat("rewards"), cat("terminated"), cat("truncated")
        last_obs = cat("last_obs", axis=0)
        with torch.no_grad():
            values = policy.value(obs)
            last_values = policy.value(last_obs)
            cut = truncated & ~terminated
            if cut.any():
                # A time limit is not a failure: the return goes on beyond the cut, so bootstrap from
                # the value of the observation the episode was cut at.
                rewards = rewards.clone()
                rewards[cut] += cfg.gamma * policy.value(cat("final_obs")[cut])
            dones = (terminated | truncated).float()
            advantages = gae(rewards, values, last_values, dones, cfg.gamma, cfg.gae_lambda)
            returns = advantages + values

        n = obs.shape[0] * obs.shape[1]
        flat = {"obs": obs.reshape(n, -1), "actions": actions.reshape(n, *actions.shape[2:]), "old_logp": old_logp.reshape(n),
                "advantages": advantages.reshape(n), "returns": returns.reshape(n)}
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
        updates, epochs_done = 0, 0
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.generator).to(dev)
            kl_sum, kl_count = 0.0, 0
            for start in range(0, n, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                adv = flat["advantages"][idx]
                if cfg.normalize_advantages and idx.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                dist = policy.distribution(flat["obs"][idx])
                logp = policy.log_prob(dist, flat["actions"][idx])
                log_ratio = logp - flat["old_logp"][idx]
                ratio = log_ratio.exp()
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                value_loss = 0.5 * (policy.value(flat["obs"][idx]) - flat["returns"][idx]).pow(2).mean()
                entropy = policy.entropy(dist).mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    kl = ((ratio - 1) - log_ratio).mean().item()  # the low-variance estimator of KL(old || new)
                    stats["clip_fraction"] += ((ratio - 1).abs() > cfg.clip).float().mean().item()
                stats["policy_loss"] += policy_loss.item()
                stats["value_loss"] += value_loss.item()
                stats["entropy"] += entropy.item()
                stats["approx_kl"] += kl
                kl_sum, kl_count = kl_sum + kl, kl_count + 1
                updates += 1
            epochs_done += 1
            if cfg.target_kl is not None and kl_sum / max(kl_count, 1) > cfg.target_kl:
                break
        out = {k: v / max(updates, 1) for k, v in stats.items()}
        out.update(updates=updates, epochs=epochs_done, batch_steps=n)
        return out
