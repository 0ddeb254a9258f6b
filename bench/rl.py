"""Theme `rl`: raytron's PPO against RLlib's PPO on CartPole-v1, 1 and 2 rollout workers, several seeds, in one run.

Both run on the same embedded Ray head (started and stopped here), one after the other, order
rotated per seed:

    raytron  a `kind: rl` job submitted through the Jobs API: the learner in the job's driver,
             `resources.num_workers` rollout-worker actors, each stepping `envs_per_worker`
             CartPole environments (Gymnasium sync vectorization) with a CPU copy of the policy;
             sampling of the next batch overlaps learning (policy lag 1).
    rllib    RLlib 2.60's PPO (new API stack) with its own tuned CartPole configuration
             (bench/_rl_rllib.py), `num_env_runners` = the worker count, the learner in its driver.

Measured per run: wall time and env steps until the mean return over the last 100 finished
episodes (RLlib's smoothing window) reaches `--target`, and env steps/s over the training loop
(env steps sampled / time inside the loop: RLlib's `train()` calls, raytron's learner loop). Time
to target counts from the algorithm's start (RLlib: before `build_algo`, which creates its env
runners; raytron: the job driver's start, before its rollout workers are created) and does not
count the job submission, which is reported apart (`job_wall_s`).

    raytron bench rl [--quick]
    python bench/rl.py --workers 1,2 --repeats 3
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import BenchArgs, option, parse_args, summarize, write_results

HERE = Path(__file__).resolve().parent
TOOLS = ("raytron", "rllib")
COLORS = {"raytron": "#1f77b4", "rllib": "#ff7f0e"}


@dataclass(kw_only=True)
class RLArgs(BenchArgs):
    """Options of the `rl` theme (`--repeats` is the number of seeds: --quick 1, full 3)."""

    workers: str = option("1,2", "Rollout worker counts to compare (comma-separated).")
    target: float = option(450.0, "Mean return over the last 100 episodes that counts as solved.")
    max_env_steps: int = option(400_000, "Give up on a run after this many env steps.")
    max_s: float = option(300.0, "Give up on a run after this many seconds.")
    envs_per_worker: int = option(8, "raytron: CartPole environments per rollout worker.")
    rollout_steps: int = option(128, "raytron: steps of each environment per batch fragment.")
    head_cpus: int = option(4, "CPUs the embedded head offers (workers + the learner must fit).")


def raytron_spec(args: RLArgs, workers: int, seed: int, runs: Path) -> dict[str, Any]:
    # The batch does not change with the worker count: more workers, fewer steps each (as RLlib's
    # train batch is split across its env runners).
    steps = max(16, args.rollout_steps // workers)
    return {
        "name": f"bench-rl-w{workers}-s{seed}", "kind": "rl", "storage": {"path": str(runs)},
        "resources": {"num_workers": workers, "cpus_per_worker": 1},
        "rl": {
            "env": {"id": "CartPole-v1"}, "envs_per_worker": args.envs_per_worker, "rollout_steps": steps,
            "ppo": {"lr": 1.0e-3, "epochs": 10, "minibatch_size": 256},
            "stop": {"mean_return": args.target, "env_steps": args.max_env_steps, "time_s": args.max_s, "window_episodes": 100},
            "checkpoint": {"every_iterations": 50}, "seed": seed, "log_every_s": 5.0,
        },
    }


def run_raytron(manager, args: RLArgs, workers: int, seed: int, runs: Path) -> dict[str, Any]:
    from raytron.cluster import parse_spec

    spec = parse_spec(raytron_spec(args, workers, seed, runs), source="bench rl")
    t0 = time.monotonic()
    sid = manager.submit(spec)
    record = manager.wait(sid, timeout_s=args.max_s + 180)
    if not record.terminal:
        record = manager.stop(sid)
    job_wall = time.monotonic() - t0
    result_file = spec.run_dir / "result.json"
    if record.status != "SUCCEEDED" or not result_file.is_file():
        return {"status": record.status, "error_tail": manager.logs(sid)[-1500:]}
    result = json.loads(result_file.read_text())
    rows = [json.loads(line) for line in (spec.run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = result.get("reached_target")
    setup_s = result["wall_s"] - result["train_s"]  # driver start to the first sample request (workers created)
    return {
        "status": "SUCCEEDED", "reached": reached is not None,
        "time_to_target_s": reached["since_start_s"] if reached else None,
        "train_time_to_target_s": reached["time_s"] if reached else None,
        "env_steps_to_target": reached["env_steps"] if reached else None,
        "env_steps": result["env_steps"], "env_steps_per_s": result["env_steps"] / result["train_s"],
        "setup_s": setup_s, "job_wall_s": job_wall,
        "curve": [{"env_steps": r["env_steps"], "since_start_s": r["time_s"] + setup_s, "return_mean": r["episode_return_mean"]} for r in rows],
    }


def run_rllib(head, args: RLArgs, workers: int, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "_rl_rllib.py"), "--address", head.gcs_address, "--workers", str(workers), "--seed", str(seed),
           "--target", str(args.target), "--max-env-steps", str(args.max_env_steps), "--max-s", str(args.max_s)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_s + 240, env={**os.environ, "PYTHONWARNINGS": "ignore", **{k: v for k, v in head.env().items() if k != "RAY_ADDRESS"}})
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"status": f"FAILED (exit {out.returncode})", "error_tail": (out.stdout + out.stderr)[-1500:]}
    data = json.loads(lines[-1])
    data.update(status="SUCCEEDED", job_wall_s=time.monotonic() - t0, setup_s=data.pop("build_s"))
    return data


def measure(args: RLArgs, worker_counts: list[int], seeds: int, manager, head, work: Path) -> list[dict[str, Any]]:
    rows = []
    for seed in range(seeds):
        for workers in worker_counts:
            order = TOOLS if (seed + workers) % 2 == 0 else TOOLS[::-1]
            for tool in order:
                print(f"seed {seed}, {workers} worker(s): {tool} ...", file=sys.stderr, flush=True)
                got = run_raytron(manager, args, workers, seed, work / "runs") if tool == "raytron" else run_rllib(head, args, workers, seed)
                row = {"tool": tool, "workers": workers, "seed": seed, **got}
                rows.append(row)
                print(f"  {tool}: {_line(row)}", file=sys.stderr, flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "SUCCEEDED":
        return row["status"]
    if not row["reached"]:
        return f"did not reach the target ({row['env_steps']:,} env steps, {row['env_steps_per_s']:,.0f} env steps/s)"
    return (f"target at {row['time_to_target_s']:.1f} s, {row['env_steps_to_target']:,} env steps; {row['env_steps_per_s']:,.0f} env steps/s; "
            f"setup {row['setup_s']:.1f} s")


def _median(values: list[float | None]) -> float:
    return statistics.median([math.inf if v is None else v for v in values]) if values else math.inf


def report(args: RLArgs, worker_counts: list[int], seeds: int, rows: list[dict[str, Any]]) -> int:
    ok = [r for r in rows if r["status"] == "SUCCEEDED"]
    summary: dict[str, Any] = {}
    ratios: dict[str, float | None] = {}
    for w in worker_counts:
        per = {t: [r for r in ok if r["tool"] == t and r["workers"] == w] for t in TOOLS}
        for metric in ("time_to_target_s", "env_steps_to_target", "env_steps_per_s", "setup_s", "job_wall_s"):
            summary[f"{metric}_w{w}"] = {t: summarize([r[metric] for r in runs if r.get(metric) is not None]) for t, runs in per.items()}
        mine, theirs = _median([r["time_to_target_s"] for r in per["raytron"]]), _median([r["time_to_target_s"] for r in per["rllib"]])
        ratios[f"time_to_target_w{w}_rllib_over_raytron"] = theirs / mine if math.isfinite(mine) and math.isfinite(theirs) else None
        sps = [statistics.median([r["env_steps_per_s"] for r in per[t]]) if per[t] else None for t in TOOLS]
        ratios[f"env_steps_per_s_w{w}_raytron_over_rllib"] = sps[0] / sps[1] if all(sps) else None
    notes = [
        f"CartPole-v1, target: mean return over the last 100 episodes >= {args.target:g}; {seeds} seed(s) per tool and worker count; "
        f"{args.head_cpus}-CPU embedded head on this machine ({os.cpu_count()} cores); runs stop at {args.max_env_steps:,} env steps or {args.max_s:g} s.",
        "raytron: PPO (clip 0.2, GAE 0.95, gamma 0.99, 10 epochs, minibatch 256, lr 1e-3, Adam), separate actor and critic MLPs 64x64 tanh, "
        f"{args.envs_per_worker} envs per worker, batch {args.envs_per_worker * args.rollout_steps} steps split across the workers, "
        "sampling overlapping learning (policy lag 1). rllib: its tuned CartPole example (lr 3e-4, 6 epochs, vf_loss_coeff 0.01, "
        "one shared hidden layer of 32, train batch 4000, minibatch 128). Each tool with its own recommended settings: the comparison is "
        "what a user gets from each, not the same hyperparameters.",
        "Time to target from the algorithm's start: RLlib from before `build_algo` (creates its env runners), raytron from the job driver's "
        "start (creates its rollout workers); the job submission itself is in job_wall_s. env steps/s: env steps / time inside the training loop.",
        "Goals: time to target <= 0.5x RLlib's (ratio >= 2) and env steps/s >= 3x RLlib's, for every worker count.",
        f"On {os.cpu_count()} cores a second raytron worker adds little: the learner (10 epochs over each batch) is the slower half of "
        "the overlapped loop, so sampling waits for it (see `sample_s`/`learn_s` in the run's metrics.jsonl).",
    ]
    met = all((ratios.get(f"time_to_target_w{w}_rllib_over_raytron") or 0) >= 2 and (ratios.get(f"env_steps_per_s_w{w}_raytron_over_rllib") or 0) >= 3
              for w in worker_counts)
    notes.append(f"Goals {'met' if met else 'NOT met'}" + (" (one seed: a smoke result)." if seeds == 1 else "."))
    notes += [f"{r['tool']} w{r['workers']} seed {r['seed']} FAILED: {r.get('error_tail', '')[-300:]}" for r in rows if r["status"] != "SUCCEEDED"]
    config = {**asdict(args), "seeds": seeds, "worker_counts": worker_counts}
    table = [{k: v for k, v in r.items() if k not in ("curve", "error_tail")} for r in rows]
    write_results("rl", config, {"summary": summary, "runs": table, "curves": {f"{r['tool']}-w{r['workers']}-s{r['seed']}": r.get("curve") for r in rows}},
                  ratios, notes, lambda plt: _plot(plt, rows, args.target), out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    for k, v in ratios.items():
        print(f"{k}: {'-' if v is None else f'{v:.2f}x'}", file=sys.stderr)
    return 0 if len(ok) == len(rows) else 1


def _plot(plt, rows: list[dict[str, Any]], target: float):
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {1: "-", 2: "--", 4: ":"}
    labelled = set()
    for r in rows:
        curve = [p for p in r.get("curve") or [] if p.get("return_mean") is not None]
        if not curve:
            continue
        label = f"{r['tool']} {r['workers']} worker(s)"
        style = dict(color=COLORS[r["tool"]], linestyle=styles.get(r["workers"], "-."), alpha=0.8, label=None if label in labelled else label)
        labelled.add(label)
        a.plot([p["since_start_s"] for p in curve], [p["return_mean"] for p in curve], **style)
        b.plot([p["env_steps"] for p in curve], [p["return_mean"] for p in curve], **style)
    for ax in (a, b):
        ax.axhline(target, color="black", linewidth=0.8, alpha=0.6)
        ax.set_ylabel("mean return (last 100 episodes)")
        ax.legend(fontsize=8, loc="lower right")
    a.set_xlabel("seconds since the algorithm started")
    b.set_xlabel("env steps")
    a.set_title("PPO on CartPole-v1: return over wall time")
    b.set_title("return over env steps")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(RLArgs, "raytron's PPO against RLlib's on CartPole-v1: time and env steps to a mean return, env steps/s.", argv)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    seeds = args.pick_repeats(quick=1, full=3)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from raytron.cluster import JobManager, LocalHeadConfig, Settings, connect, start_local_head, stop_local_head

    if args.address:
        raise SystemExit("bench rl starts its own head: RLlib's driver joins it by its GCS address, which a Jobs API address does not give")
    with tempfile.TemporaryDirectory(prefix="rt-bench-rl-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", address=None)
        info, started = start_local_head(LocalHeadConfig(home=settings.home, num_cpus=args.head_cpus, object_store_memory_bytes=256 * 2**20))
        try:
            manager = JobManager(connect(None, settings=settings, start=False), settings=settings)
            rows = measure(args, worker_counts, seeds, manager, info, work)
        finally:
            if started:
                stop_local_head(settings.home)
    return report(args, worker_counts, seeds, rows)


if __name__ == "__main__":
    sys.exit(main())
