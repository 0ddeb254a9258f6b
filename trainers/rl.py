"""The runner of `kind: rl` jobs: the learner in the driver, rollout workers as Ray actors.

Each iteration every rollout worker returns one fragment (`envs_per_worker x rollout_steps`
transitions); the fragments form the batch the learner updates on. With `max_policy_lag: 1` the
next fragments are requested, with the weights just used, *before* the learner starts, so sampling
overlaps learning and every batch comes from the policy one update behind; with 0 they are
requested after the update. New weights go to the workers through the object store once per
iteration (`ray.put`, then every worker reads the same object).

Layout under `<storage.path>/<name>/`:
    checkpoints/step-NNNNNNNN/   NNNNNNNN is the learner iteration: model.safetensors (actor and
                                 critic), optimizer.safetensors, meta.json (counters, spaces, spec,
                                 the episode window the stop condition reads)
    metrics.jsonl                one row per iteration: returns, lengths, env steps/s, losses
    workers.json                 the live rollout workers (pid, node) and how many were replaced
    result.json                  why training stopped, env steps, wall time, time to the target

A rollout worker that dies is replaced (up to `rl.max_worker_restarts` times in all) and its fragment
is sampled again by the new one; the other workers' fragments are kept. A resubmitted job resumes
from the newest checkpoint: weights, optimizer, counters and the episode window.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from raytron.cluster.runner import JobContext
from raytron.cluster.storage import write_json_atomic
from raytron.trainers.errors import CheckpointError, TrainError, WorkerFailed, first_line
from raytron.trainers.rl_spec import RLJobSpec

__all__ = ["run_rl_job", "RLError", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "raytron-rl-1"


class RLError(TrainError):
    """An rl run could not start, continue or finish."""


class EpisodeWindow:
    """The last `size` finished episodes (return, length), and the best return ever seen."""

    def __init__(self, size: int, returns: list[float] | None = None, lengths: list[int] | None = None, total: int = 0, best: float = -math.inf):
        self.returns: deque[float] = deque(returns or [], maxlen=size)
        self.lengths: deque[int] = deque(lengths or [], maxlen=size)
        self.total, self.best = total, best

    def add(self, episodes: list[tuple[float, int]]) -> None:
        for ret, length in episodes:
            self.returns.append(ret)
            self.lengths.append(length)
            self.best = max(self.best, ret)
        self.total += len(episodes)

    @property
    def mean_return(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    @property
    def full(self) -> bool:
        return len(self.returns) == self.returns.maxlen

    def summary(self) -> dict[str, Any]:
        n = len(self.returns)
        return {"episode_return_mean": self.mean_return, "episode_return_max": max(self.returns) if n else None,
                "episode_len_mean": sum(self.lengths) / n if n else None, "episodes_in_window": n, "episodes_total": self.total,
                "episode_return_best": self.best if self.total else None}

    def state(self) -> dict[str, Any]:
        return {"returns": list(self.returns), "lengths": list(self.lengths), "total": self.total, "best": self.best if self.total else None}


class RolloutPool:
    """The rollout worker actors; replaces a dead one and re-requests its fragment."""

    def __init__(self, spec: RLJobSpec, restarts: int = 0, seed_offset: int = 0):
        import ray

        from raytron.trainers.rl_rollout import RolloutWorker

        self.spec, self.restarts = spec, restarts
        self._cls = ray.remote(RolloutWorker)
        self.workers: list[Any] = []
        self.described: list[dict[str, Any]] = []
        # A resumed run's workers start from other seeds than the first attempt's did.
        self._created = seed_offset
        for i in range(spec.resources.num_workers):
            self.workers.append(self._new(i))
        self.described = self._describe(self.workers)
        self._write()

    def _describe(self, workers: list[Any]) -> list[dict[str, Any]]:
        """Wait for the workers to start; a cluster without room for them fails the job instead of hanging."""
        import ray

        refs = [w.describe.remote() for w in workers]
        timeout_s = self.spec.rl.worker_start_timeout_s
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            r, rl = self.spec.resources, self.spec.rl
            total, free = ray.cluster_resources(), ray.available_resources()
            raise RLError(
                f"{len(pending)} of {len(refs)} rollout worker(s) did not start within {timeout_s:g} s (`rl.worker_start_timeout_s`): "
                f"each needs {r.cpus_per_worker:g} CPU" + (f" and {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "")
                + f"; the cluster has {total.get('CPU', 0):g} CPU ({free.get('CPU', 0):g} free) and the learner holds {rl.learner.cpus:g}. "
                "Lower `resources.num_workers`, `resources.cpus_per_worker` or `rl.learner.cpus`, or give the cluster more CPUs "
                "(`raytron up --num-cpus N`)")
        return ray.get(refs)

    def _new(self, index: int):
        r = self.spec.resources
        # Every worker ever created gets its own seed, so a replacement does not replay its predecessor's episodes.
        seed = self.spec.rl.seed * 1_000_003 + 1 + self._created
        self._created += 1
        return self._cls.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0).remote(self.spec.to_json(), index, seed)

    @property
    def space_info(self) -> dict[str, Any]:
        return self.described[0]["space_info"]

    def request(self, weights_ref, version: int) -> list[Any]:
        return [w.sample.remote(weights_ref, version) for w in self.workers]

    def gather(self, refs: list[Any], weights_ref, version: int) -> list[dict[str, Any]]:
        """Every worker's fragment; a dead worker is replaced and its fragment sampled with `version`."""
        import ray
        from ray.exceptions import RayActorError

        fragments: list[dict[str, Any] | None] = [None] * len(refs)
        pending = dict(enumerate(refs))
        while pending:
            index, ref = next(iter(pending.items()))
            try:
                fragments[index] = ray.get(ref)
                del pending[index]
            except RayActorError as exc:
                self.restarts += 1
                if self.restarts > self.spec.rl.max_worker_restarts:
                    raise WorkerFailed(f"rollout worker {index} died ({first_line(exc)}) and {self.restarts - 1} worker(s) were replaced already; "
                                       f"`rl.max_worker_restarts` is {self.spec.rl.max_worker_restarts}") from None
                print(f"raytron: rollout worker {index} (pid {self.described[index]['pid']}) died: {first_line(exc)}; "
                      f"replacing it ({self.restarts} of at most {self.spec.rl.max_worker_restarts})", flush=True)
                self.workers[index] = self._new(index)
                self.described[index] = self._describe([self.workers[index]])[0]
                self._write()
                pending[index] = self.workers[index].sample.remote(weights_ref, version)
        return fragments  # type: ignore[return-value]

    def _write(self) -> None:
        write_json_atomic(self.spec.run_dir / "workers.json", {"workers": self.described, "replaced": self.restarts})

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)


def run_rl_job(spec: RLJobSpec, ctx: JobContext) -> dict[str, Any]:
    """Train until the stop condition, checkpointing on the way; resume from the newest checkpoint."""
    import ray
    import torch

    from raytron.trainers.checkpoint import latest_checkpoint, load_optimizer_state, save_checkpoint
    from raytron.trainers.rl_policy import build_policy
    from raytron.trainers.rl_ppo import PPOLearner

    started = time.time()
    rl, run_dir = spec.rl, spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ray.init(address="auto", log_to_driver=True)
    torch.set_num_threads(rl.learner.threads)
    device = _device(rl.learner.device)
    ckpt_root = run_dir / "checkpoints"
    resume = latest_checkpoint(ckpt_root)
    state = _resume_state(spec, resume) if resume else None
    reason = _stop_reason(spec, state["window"], state["env_steps"], state["train_s"]) if state else None
    if reason:
        print(f"raytron: {spec.name} already stopped at iteration {state['iteration']} ({reason}); nothing to do. "
              "Raise the stop condition (`rl.stop`) to train on", flush=True)
        return json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {"stop_reason": reason}

    pool = RolloutPool(spec, restarts=state["worker_restarts"] if state else 0, seed_offset=state["iteration"] * 1000 if state else 0)
    try:
        info = pool.space_info
        torch.manual_seed(rl.seed)
        policy = build_policy(info, rl.policy.model_dump())
        learner = PPOLearner(policy, rl.ppo, device, seed=rl.seed)
        iteration, env_steps, train_s = 0, 0, 0.0
        window = EpisodeWindow(rl.stop.window_episodes)
        if state:
            if state["space_info"] != info:
                raise CheckpointError(f"{resume.path} was trained on spaces {state['space_info']}, but {rl.env.id} now has {info}; "
                                      "use another `name` (or `storage.path`) for a new run")
            from raytron.trainers.checkpoint import load_model_state

            policy.load_state_dict(load_model_state(resume))
            opt_state = load_optimizer_state(resume)
            if opt_state is not None:
                learner.optimizer.load_state_dict(opt_state)
            iteration, env_steps, train_s, window = state["iteration"], state["env_steps"], state["train_s"], state["window"]
            print(f"raytron: resuming {spec.name} from {resume.path.name}: iteration {iteration}, {env_steps:,} env steps, "
                  f"mean return {_fmt(window.mean_return)} over the last {len(window.returns)} episodes", flush=True)
        print(f"raytron: {rl.algorithm} on {rl.env.id}: {spec.resources.num_workers} rollout worker(s) x {rl.envs_per_worker} env(s), "
              f"{rl.rollout_steps} steps per fragment, batch {spec.batch_steps:,} steps, learner on {device.type}, "
              f"policy lag {'<= 1 (sampling overlaps learning)' if rl.max_policy_lag else '0 (no overlap)'}", flush=True)
        result = _train(spec, ctx, pool, learner, iteration, env_steps, train_s, window, save_checkpoint, started)
    finally:
        pool.shutdown()
    return result


def _train(spec: RLJobSpec, ctx: JobContext, pool: RolloutPool, learner, iteration: int, env_steps: int, train_s: float,
           window: EpisodeWindow, save_checkpoint, started: float) -> dict[str, Any]:
    import ray

    import signal

    rl, run_dir = spec.rl, spec.run_dir
    metrics_file = run_dir / "metrics.jsonl"
    # `raytron stop` sends SIGTERM first: finish the iteration, checkpoint it, and end, so that a
    # resubmission resumes from exactly there.
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("stopped by SIGTERM (raytron stop); resubmit the spec to resume"))
    version = iteration
    weights_ref = ray.put(learner.weights())
    loop_started = time.perf_counter() - train_s  # time trained by earlier attempts counts toward `stop.time_s`
    refs = pool.request(weights_ref, version)
    last_log = 0.0
    reason = None
    first_target: dict[str, Any] | None = None
    steps_at_start = env_steps

    def checkpoint() -> None:
        meta = {"kind": "rl", "format": CHECKPOINT_FORMAT, "spec": json.loads(spec.to_json()), "space_info": pool.space_info,
                "iteration": iteration, "env_steps": env_steps, "train_s": time.perf_counter() - loop_started,
                "window": window.state(), "worker_restarts": pool.restarts, "metrics": window.summary()}
        save_checkpoint(run_dir / "checkpoints", step=iteration, model_state=learner.policy.state_dict(),
                        optimizer_state=learner.optimizer.state_dict(), meta=meta, keep=rl.checkpoint.keep)

    while True:
        t0 = time.perf_counter()
        fragments = pool.gather(refs, weights_ref, version)
        wait_s = time.perf_counter() - t0
        lags = [version - f["version"] for f in fragments]
        if max(lags) > rl.max_policy_lag:  # cannot happen by construction; the bound is checked, not assumed
            raise RLError(f"a fragment of policy version {min(f['version'] for f in fragments)} reached the learner at version {version}, "
                          f"beyond `rl.max_policy_lag` {rl.max_policy_lag}")
        if rl.max_policy_lag >= 1:
            refs = pool.request(weights_ref, version)  # sampled while the learner learns on `fragments`
        if rl.ppo.lr_anneal:
            learner.set_lr(rl.ppo.lr * max(0.0, 1.0 - env_steps / rl.stop.env_steps))
        t1 = time.perf_counter()
        losses = learner.update(fragments)
        learn_s = time.perf_counter() - t1
        iteration += 1
        version += 1
        weights_ref = ray.put(learner.weights())
        if rl.max_policy_lag == 0:
            refs = pool.request(weights_ref, version)
        batch = sum(f["obs"].shape[0] * f["obs"].shape[1] for f in fragments)
        env_steps += batch
        for f in fragments:
            window.add(f["episodes"])
        elapsed = time.perf_counter() - loop_started
        row = {"iteration": iteration, "env_steps": env_steps, "time_s": round(elapsed, 4), "unix_time": time.time(),
               **window.summary(), "episodes_this_iter": sum(len(f["episodes"]) for f in fragments),
               "env_steps_per_s": (env_steps - steps_at_start) / max(elapsed - train_s, 1e-9),
               "sample_s": max(f["sample_s"] for f in fragments), "wait_s": wait_s, "learn_s": learn_s,
               "policy_lag_max": max(lags), "worker_restarts": pool.restarts, **losses}
        _append_jsonl(metrics_file, row)
        target = rl.stop.mean_return
        if first_target is None and target is not None and window.full and (window.mean_return or -math.inf) >= target:
            first_target = {"iteration": iteration, "env_steps": env_steps, "time_s": elapsed, "since_start_s": time.time() - started}
        reason = _stop_reason(spec, window, env_steps, elapsed) or (stopping[0] if stopping else None)
        if time.perf_counter() - last_log >= rl.log_every_s or reason:
            last_log = time.perf_counter()
            print(f"raytron: iter {iteration} env_steps {env_steps:,} return mean {_fmt(window.mean_return)} max {_fmt(row['episode_return_max'])} "
                  f"len {_fmt(row['episode_len_mean'])} episodes {window.total:,} | {row['env_steps_per_s']:,.0f} env steps/s "
                  f"(sample {row['sample_s']:.2f} s, learn {learn_s:.2f} s) lag {max(lags)} | kl {losses['approx_kl']:.4f} "
                  f"entropy {losses['entropy']:.3f}", flush=True)
        if reason or iteration % rl.checkpoint.every_iterations == 0:
            checkpoint()
        if reason:
            break

    result = {
        "name": spec.name, "submission_id": ctx.submission_id, "stop_reason": reason, "iterations": iteration, "env_steps": env_steps,
        "train_s": time.perf_counter() - loop_started, "wall_s": time.time() - started, **window.summary(),
        "target_mean_return": rl.stop.mean_return, "reached_target": first_target, "worker_restarts": pool.restarts,
        "checkpoint": str(run_dir / "checkpoints" / f"step-{iteration:08d}"),
    }
    write_json_atomic(run_dir / "result.json", result)
    print(f"raytron: stopped after {iteration} iterations, {env_steps:,} env steps, {result['train_s']:.1f} s: {reason}; "
          f"mean return {_fmt(window.mean_return)} over the last {len(window.returns)} episodes", flush=True)
    print(f"raytron: policy checkpoint {result['checkpoint']}\nraytron: export it with: raytron export {result['checkpoint']} --name {spec.name}", flush=True)
    return result


def _stop_reason(spec: RLJobSpec, window: EpisodeWindow, env_steps: int, elapsed_s: float) -> str | None:
    s = spec.rl.stop
    if s.mean_return is not None and window.full and window.mean_return is not None and window.mean_return >= s.mean_return:
        return f"mean return {window.mean_return:.1f} over the last {len(window.returns)} episodes >= {s.mean_return:g}"
    if s.env_steps is not None and env_steps >= s.env_steps:
        return f"{env_steps:,} env steps >= {s.env_steps:,}"
    if s.time_s is not None and elapsed_s >= s.time_s:
        return f"{elapsed_s:.0f} s of training >= {s.time_s:g} s"
    return None


def _resume_state(spec: RLJobSpec, ckpt) -> dict[str, Any]:
    try:
        meta = ckpt.meta
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {ckpt.path / 'meta.json'}: {exc}") from None
    if meta.get("kind") != "rl":
        raise CheckpointError(f"{ckpt.path} is not an rl checkpoint (meta.json kind {meta.get('kind')!r}); use another `name` (or `storage.path`)")
    theirs, ours = meta["spec"]["rl"], json.loads(spec.to_json())["rl"]
    for key in ("env", "policy", "algorithm"):
        if theirs.get(key) != ours.get(key):
            raise CheckpointError(f"{ckpt.path} was trained with rl.{key} {theirs.get(key)!r}, this spec has {ours.get(key)!r}; a resubmission resumes only "
                                  "the same environment and policy: use another `name` (or `storage.path`) for a new run")
    w = meta["window"]
    window = EpisodeWindow(spec.rl.stop.window_episodes, w["returns"], w["lengths"], w["total"], w["best"] if w["best"] is not None else -math.inf)
    return {"iteration": int(meta["iteration"]), "env_steps": int(meta["env_steps"]), "train_s": float(meta["train_s"]), "window": window,
            "space_info": meta["space_info"], "worker_restarts": int(meta.get("worker_restarts", 0))}


def _device(name: str):
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RLError("`rl.learner.device` is cuda but this driver sees no GPU; set `rl.learner.gpus: 1` on a cluster with GPUs, or use `auto`")
        return torch.device("cuda")
    return torch.device("cpu")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
