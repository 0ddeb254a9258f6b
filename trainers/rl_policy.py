"""The policy of the `rl` kind: an actor and a critic sized from the environment's spaces.

The same module is built by the learner, by every rollout worker (a CPU copy) and by the exporter,
from a plain description of the spaces (`space_info`, JSON in every checkpoint's meta.json), so a
checkpoint can be loaded and exported without the environment being installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raytron.trainers.errors import TrainError

__all__ = ["ActorCritic", "PolicyOutput", "space_info", "build_policy"]


def space_info(observation_space, action_space) -> dict[str, Any]:
    """JSON description of the spaces the policy needs: a flat Box of observations; Discrete or Box actions."""
    from gymnasium import spaces

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise TrainError(f"the environment's observation space is {observation_space}; the rl kind supports flat Box observations "
                         "(wrap image or dict observations into a vector, e.g. with gymnasium.wrappers.FlattenObservation)")
    info: dict[str, Any] = {"obs_dim": int(observation_space.shape[0])}
    if isinstance(action_space, spaces.Discrete):
        info.update(action="discrete", num_actions=int(action_space.n))
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        info.update(action="continuous", action_dim=int(action_space.shape[0]),
                    action_low=[float(v) for v in action_space.low], action_high=[float(v) for v in action_space.high])
    else:
        raise TrainError(f"the environment's action space is {action_space}; the rl kind supports Discrete and flat Box actions")
    return info


def _mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        # Orthogonal init with a small gain on the last layer: the standard PPO recipe, which starts
        # with near-uniform action probabilities and a near-zero value estimate.
        nn.init.orthogonal_(linear.weight, out_gain if last else 2**0.5)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(act())
    return nn.Sequential(*layers)


class PolicyOutput(nn.Module):
    """What is exported and served: observations in, `logits` (discrete) or the action mean (continuous) out."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs; a state-independent log std for continuous actions."""

    def __init__(self, info: dict[str, Any], hidden: int = 64, layers: int = 2, activation: str = "tanh"):
        super().__init__()
        self.info = dict(info)
        self.discrete = info["action"] == "discrete"
        out = info["num_actions"] if self.discrete else info["action_dim"]
        self.actor = _mlp([info["obs_dim"], *[hidden] * layers, out], activation, 0.01)
        self.critic = _mlp([info["obs_dim"], *[hidden] * layers, 1], activation, 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(out))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def log_prob(self, dist: torch.distributions.Distribution, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        e = dist.entropy()
        return e if self.discrete else e.sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample actions for a batch of observations; returns (actions, their log-probabilities)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max sampling: one op chain instead of Categorical's validation and bookkeeping,
            # which dominates a rollout step of a small policy.
            logp_all = torch.log_softmax(out, -1)
            actions = torch.argmax(logp_all - torch.log(-torch.log(torch.rand_like(logp_all))), -1)
            return actions, logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        std = self.log_std.exp()
        actions = out + std * torch.randn_like(out)
        logp = (-0.5 * ((actions - out) / std) ** 2 - self.log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)
        return actions, logp

    def output_module(self) -> PolicyOutput:
        return PolicyOutput(self.actor)


def build_policy(info: dict[str, Any], policy: dict[str, Any]) -> ActorCritic:
    """The policy of a spec's `rl.policy` (hidden, layers, activation) for the spaces in `info`."""
    return ActorCritic(info, hidden=int(policy.get("hidden", 64)), layers=int(policy.get("layers", 2)), activation=str(policy.get("activation", "tanh")))
