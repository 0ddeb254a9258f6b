"""RLlib's PPO on CartPole-v1 until a mean return, as a driver of an existing Ray head (bench/rl.py runs this).

    python bench/_rl_rllib.py --address 127.0.0.1:6379 --workers 2 --seed 0 --target 450 --max-env-steps 400000 --max-s 300

The configuration is RLlib's own tuned CartPole example (rllib/examples/algorithms/ppo/cartpole_ppo.py
in Ray 2.60: lr 3e-4, 6 epochs, vf_loss_coeff 0.01, one hidden layer of 32 with a shared value
branch, everything else RLlib's PPO defaults: train batch 4000, minibatch 128), with
`num_env_runners` set to the worker count. Prints one JSON line: time and env steps to the
target, env steps/s, and the curve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=450.0)
    p.add_argument("--max-env-steps", type=int, default=400_000)
    p.add_argument("--max-s", type=float, default=300.0)
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    ray.init(address=args.address, log_to_driver=False)
    started = time.perf_counter()
    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=args.workers)
        .training(lr=0.0003, num_epochs=6, vf_loss_coeff=0.01)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="linear", vf_share_layers=True))
        .debugging(seed=args.seed)
    )
    algo = config.build_algo()
    built = time.perf_counter()
    curve, reached, train_s, steps = [], None, 0.0, 0
    try:
        while True:
            t0 = time.perf_counter()
            result = algo.train()
            train_s += time.perf_counter() - t0
            runners = result.get("env_runners", {})
            steps = int(result.get("num_env_steps_sampled_lifetime") or runners.get("num_env_steps_sampled_lifetime") or 0)
            ret = runners.get("episode_return_mean")
            curve.append({"env_steps": steps, "since_start_s": time.perf_counter() - started, "train_s": train_s, "return_mean": ret})
            if ret is not None and ret >= args.target:
                reached = curve[-1]
                break
            if steps >= args.max_env_steps or time.perf_counter() - started >= args.max_s:
                break
    finally:
        algo.stop()
        ray.shutdown()
    print(json.dumps({"tool": "rllib", "workers": args.workers, "seed": args.seed, "build_s": built - started,
                      "reached": reached is not None, "time_to_target_s": reached["since_start_s"] if reached else None,
                      "train_time_to_target_s": reached["train_s"] if reached else None,
                      "env_steps_to_target": reached["env_steps"] if reached else None,
                      "env_steps": steps, "env_steps_per_s": steps / train_s if train_s else None, "curve": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
