"""The runner of `kind: tune` jobs: Ray Tune's driver, on the cluster.

Layout under `<storage.path>/<name>/`:
    spec.json            the validated tune spec (a resubmission must match it to continue)
    trials/<trial id>/   each trial's `kind: train` run directory (checkpoints, metrics.jsonl)
    ray_tune/search/     Ray Tune's experiment (its state, its copies of every reported checkpoint)
    exploits.jsonl       every PBT exploit: donor, iteration, old -> new values, weight hashes
    results.json         per-trial histories, the best trial's config and checkpoint, exploits
    <metric>.png         the metric per trial over iterations, exploits drawn

Every checkpoint a trial reports is kept in Ray Tune's storage until the run ends
(`CheckpointConfig(num_to_keep=None)`), so a donor's checkpoint can never be deleted before a
recipient restores it. A resubmitted spec whose experiment exists continues it
(`Tuner.restore`): finished trials stay finished and unfinished ones resume from their last
checkpoint. SIGTERM (what `raytron stop` sends first) is turned into Tune's own graceful stop,
which saves the experiment state before exiting.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import uuid
from typing import Any

from raytron.cluster.runner import JobContext
from raytron.cluster.storage import write_json_atomic
from raytron.trainers.errors import TrainError
from raytron.trainers.tune_spec import TuneJobSpec

__all__ = ["run_tune_job", "TuneError", "build_param_space", "build_scheduler", "population_fits", "within_bounds"]

_EXPERIMENT = "search"


class TuneError(TrainError):
    """A tune run could not start, continue or finish."""


def build_param_space(spec: TuneJobSpec) -> dict[str, Any]:
    """Ray Tune's param space: one flat key per search-space path."""
    return {path: _domain(dist) for path, dist in spec.tune.search_space.items()}


def _domain(dist: dict[str, Any]):
    from ray import tune

    name, arg = next(iter(dist.items()))
    if name == "loguniform":
        return tune.loguniform(*arg)
    if name == "uniform":
        return tune.uniform(*arg)
    if name == "randint":
        return tune.randint(*arg)
    if name == "choice":
        return tune.choice(arg)
    return tune.grid_search(arg)


def _mutation(dist: dict[str, Any]):
    # A choice mutates by moving to a neighbouring value of its list (Ray's PBT does that for lists);
    # handed over as a Domain it would be multiplied by 0.8/1.2 like a number.
    name, arg = next(iter(dist.items()))
    return list(arg) if name == "choice" else _domain(dist)


def _bounds(mutations: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float, bool]]:
    out = {}
    for path, dist in mutations.items():
        name, arg = next(iter(dist.items()))
        if name in ("uniform", "loguniform"):
            out[path] = (float(arg[0]), float(arg[1]), False)
        elif name == "randint":
            out[path] = (int(arg[0]), int(arg[1]) - 1, True)  # high is excluded
    return out


def within_bounds(config: dict[str, Any], bounds: dict[str, tuple[float, float, bool]]) -> dict[str, Any]:
    """PBT's explore step, second half: clip each perturbed value into its distribution's bounds.

    Ray's PBT multiplies a continuous value by 0.8 or 1.2 with no regard for its distribution, so
    `momentum: {uniform: [0, 0.95]}` can become 1.14 and fail the trial's validation (seen in the
    tune bench); the search space is the contract, so a perturbation stops at its edge.
    """
    for path, (low, high, integer) in bounds.items():
        if path in config and isinstance(config[path], (int, float)):
            value = min(max(config[path], low), high)
            config[path] = int(round(value)) if integer else float(value)
    return config


def population_fits(spec: TuneJobSpec, cluster_resources: dict[str, float]) -> bool:
    """Whether every trial of the search can run at once: within max_concurrent_trials and the cluster's CPUs and GPUs."""
    r, tc = spec.resources, spec.tune
    trials = spec.num_trials()
    if tc.max_concurrent_trials is not None and tc.max_concurrent_trials < trials:
        return False
    return (trials * r.num_workers * r.cpus_per_worker <= cluster_resources.get("CPU", 0.0) + 1e-9
            and trials * r.num_workers * r.gpus_per_worker <= cluster_resources.get("GPU", 0.0) + 1e-9)


def build_scheduler(spec: TuneJobSpec, cluster_resources: dict[str, float] | None = None):
    """The Tune scheduler named by `tune.scheduler` (None for fifo).

    `cluster_resources` (Ray's totals) tells PBT and PB2 whether the population runs at once, in
    which case a trial is never paused just to yield (`raytron.trainers.tune_pbt`); None: unknown, so it yields.
    """
    s, tc = spec.tune.scheduler, spec.tune
    common: dict[str, Any] = {}  # metric and mode come from TuneConfig (Tune refuses them twice)
    if s.name in ("pbt", "pb2"):
        mutations = s.hyperparam_mutations if s.hyperparam_mutations is not None else tc.search_space
        yield_at_perturbation = cluster_resources is None or not population_fits(spec, cluster_resources)
        if s.name == "pbt":
            from raytron.trainers.tune_pbt import PopulationBasedTraining

            return PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction,
                resample_probability=s.resample_probability, synch=s.synch,
                hyperparam_mutations={p: _mutation(d) for p, d in mutations.items() if "grid" not in d},
                custom_explore_fn=functools.partial(within_bounds, bounds=_bounds(mutations)), yield_at_perturbation=yield_at_perturbation,
                last_iteration=spec.max_iterations(), seed=tc.seed, compare=s.compare, **common)
        from raytron.trainers.tune_pbt import PB2

        bounds = {p: next(iter(d.values())) for p, d in mutations.items() if next(iter(d)) in ("uniform", "loguniform")}
        return PB2(time_attr="training_iteration", perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction,
                   synch=s.synch, hyperparam_bounds=bounds, yield_at_perturbation=yield_at_perturbation, last_iteration=spec.max_iterations(),
                   seed=tc.seed, compare=s.compare, **common)
    if s.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="training_iteration", max_t=spec.max_iterations(), grace_period=s.grace_period, reduction_factor=s.reduction_factor, **common)
    if s.name == "hyperband":
        from ray.tune.schedulers import HyperBandScheduler

        return HyperBandScheduler(time_attr="training_iteration", max_t=spec.max_iterations(), reduction_factor=s.reduction_factor, **common)
    return None


def _tune_loggers(tensorboard: bool) -> list:
    """Tune's per-trial loggers, named here instead of Tune's defaults, so TensorBoard is a choice.

    Tune adds JSON, CSV and (when tensorboardX imports) TensorBoard loggers unless
    TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1; this driver process sets it and passes the ones wanted.
    JSON and CSV stay (Tune reads them back for a ResultGrid's metrics_dataframe), as raytron's
    versions that keep a restarted trial's log (`tune_results.JsonLogger`).
    """
    from raytron.trainers.tune_results import CsvLogger, JsonLogger

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    loggers = [CsvLogger(), JsonLogger()]
    if tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        loggers.append(TBXLoggerCallback())
    return loggers


def run_tune_job(spec: TuneJobSpec, ctx: JobContext) -> dict[str, Any]:
    """Run (or continue) the search, then write results.json and the plots in the run directory."""
    import ray
    from ray import tune

    from raytron.trainers.tune_budget import IterationBudget
    from raytron.trainers.tune_results import TableCallback, collect_results, plot_results, render_table
    from raytron.trainers.tune_trial import HISTORY_FILE, run_trial

    run_dir = spec.run_dir
    experiment = run_dir / "ray_tune" / _EXPERIMENT
    spec_file = run_dir / "spec.json"
    ours = json.loads(spec.to_json())
    # Which trial goes with which spec is settled by the first submission: continuing with another
    # search space or scheduler would mix two experiments in one result.
    if spec_file.is_file() and json.loads(spec_file.read_text()) != ours:
        raise TuneError(f"{run_dir} holds a tune run of another spec; a resubmission continues a run only with the same spec: "
                        "use another `name` (or `storage.path`) to start a new search")
    from raytron.datasets.errors import DataError
    from raytron.datasets.manifest import Manifest

    try:  # once here, not once per trial: shards that are not there would fail every trial the same way
        Manifest.load(spec.train.data.manifest)
    except DataError as exc:
        raise TuneError(f"`train.data.manifest`: {exc}") from None
    ray.init(address="auto", log_to_driver=True)
    # Tune stops gracefully on SIGINT (saving its state); `raytron stop` sends SIGTERM first.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    r, tc = spec.resources, spec.tune
    bundle = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
    # This run of the search, named in the trials' history rows (a resubmission is another session).
    session = uuid.uuid4().hex[:12]
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec_json=spec.to_json(), session=session),
                                    tune.PlacementGroupFactory([bundle] * r.num_workers))
    table = TableCallback(spec, every_s=tc.table_every_s)
    run_config = tune.RunConfig(
        name=_EXPERIMENT, storage_path=str(run_dir / "ray_tune"), verbose=0, callbacks=[table, *_tune_loggers(tc.tensorboard)],
        stop=IterationBudget(run_dir / HISTORY_FILE, tc.iteration_budget) if tc.iteration_budget else None,
        failure_config=tune.FailureConfig(max_failures=tc.max_failures),
        # Every checkpoint, in the order registered (no score attribute): donors stay on disk, and
        # results.json ends each trial at the last one (tune_results._latest_checkpoint_metrics).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )
    started = time.time()
    if tune.Tuner.can_restore(str(experiment)):
        print(f"raytron: continuing tune run {spec.name} from {experiment} (finished trials stay finished, the others resume from their last checkpoint)", flush=True)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(spec_file, ours)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        cluster = ray.cluster_resources()  # whether PBT's population runs at once
        tuner = tune.Tuner(
            trainable, param_space=build_param_space(spec), run_config=run_config,
            tune_config=tune.TuneConfig(
                metric=tc.metric, mode=tc.mode, scheduler=build_scheduler(spec, cluster), num_samples=tc.num_samples,
                max_concurrent_trials=tc.max_concurrent_trials, time_budget_s=tc.time_budget_s, reuse_actors=tc.reuse_actors,
                search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=tc.max_concurrent_trials or 0),
            ),
        )
        print(f"raytron: tuning {spec.name}: {tc.num_samples} sample(s) over {', '.join(tc.search_space) or 'no search space'}, "
              f"scheduler {tc.scheduler.name}, {tc.metric} ({tc.mode}), {tc.iteration_steps} steps per iteration, "
              f"{r.num_workers} worker(s) x {r.cpus_per_worker:g} CPU per trial"
              + (f", the search stops after {tc.iteration_budget} iterations in all" if tc.iteration_budget else ""), flush=True)
        if tc.scheduler.name in ("pbt", "pb2"):
            print("raytron: the population runs at once, so a trial pauses only when it is exploited" if population_fits(spec, cluster) else
                  "raytron: the population does not fit the cluster at once (or max_concurrent_trials), so trials take turns: "
                  "each pauses at a perturbation point while another waits", flush=True)
    grid = tuner.fit()
    results = collect_results(spec, grid, wall_s=time.time() - started)
    write_json_atomic(run_dir / "results.json", results)
    plots = plot_results(spec, results)
    print(render_table(spec, results["trials"], final=True), flush=True)
    best = results.get("best")
    if best is None:
        raise TuneError(f"no trial of {spec.name} reported {tc.metric}; see the trials' errors in {run_dir / 'results.json'}")
    print(f"raytron: best trial {best['trial_id']}: {tc.metric} {best['metric']:.4f} at iteration {best['iteration']} with "
          + ", ".join(f"{k}={v!r}" for k, v in best["config"].items()), flush=True)
    print(f"raytron: its checkpoint: {best['checkpoint']}\nraytron: export it with: raytron export {best['checkpoint']} --name {spec.name}", flush=True)
    print(f"raytron: {len(results['exploits'])} exploit(s); wrote {run_dir / 'results.json'}" + "".join(f", {p}" for p in plots), flush=True)
    if results["errored"]:
        print(f"raytron: {len(results['errored'])} trial(s) failed: " + "; ".join(f"{t['trial_id']}: {t['error']}" for t in results["errored"]), flush=True)
    return results

