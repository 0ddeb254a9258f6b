"""The `tune` job kind: a train spec, a search space over its fields, a scheduler and a budget.

    kind: tune
    name: digits-pbt
    resources: {num_workers: 1, cpus_per_worker: 1}     # per trial
    train: {...}                                        # exactly a `kind: train` body
    tune:
      search_space:
        optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}     # paths inside `train:`
        model.args.hidden: {choice: [32, 64, 128]}
      num_samples: 8
      metric: val_accuracy
      mode: max
      iteration_steps: 20                               # optimizer steps per Tune iteration
      scheduler: {name: pbt, perturbation_interval: 2}

Every search-space entry is checked before anything runs: the path must name a field of the train
body, and the distribution's bounds (or every choice) must be values that field accepts, so a
trial can never fail validation halfway through a run.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from raytron.cluster.errors import SpecProblem
from raytron.cluster.spec import JobSpec, SpecModel
from raytron.trainers.spec import TrainConfig, TrainJobSpec

__all__ = ["TuneJobSpec", "TuneConfig", "SchedulerConfig", "DISTRIBUTIONS", "METRICS", "set_path", "get_path"]

#: Distribution name -> what its argument must be.
DISTRIBUTIONS = {
    "loguniform": "[low, high] with 0 < low < high",
    "uniform": "[low, high] with low < high",
    "randint": "[low, high] integers with low < high (high excluded)",
    "choice": "a non-empty list of values",
    "grid": "a non-empty list of values, each tried (x num_samples)",
}
#: Metrics a trial reports at every iteration (val_* need `train.data.val_split`).
METRICS = ("loss", "val_loss", "val_accuracy", "samples_per_s", "tokens_per_s")
_CONTINUOUS = ("loguniform", "uniform", "randint")


class SchedulerConfig(SpecModel):
    """How trials are scheduled. Fields that belong to another scheduler are rejected, not ignored."""

    name: Literal["fifo", "pbt", "pb2", "hyperband", "asha"] = "fifo"
    """`fifo`: every trial runs to the end (random or grid search). `pbt`/`pb2`: population-based
    training (PB2 picks new values with a GP bandit). `hyperband`/`asha`: stop weak trials early."""
    perturbation_interval: int = Field(2, ge=1)
    """pbt, pb2: iterations between exploit/explore decisions."""
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    """pbt, pb2: the bottom fraction copies the top fraction."""
    resample_probability: float = Field(0.25, ge=0, le=1)
    """pbt: chance that a mutated value is resampled from its distribution instead of scaled by 0.8/1.2."""
    hyperparam_mutations: dict[str, dict[str, Any]] | None = None
    """pbt: what to mutate (path -> distribution); default: every search-space entry. pb2: bounds
    (path -> {uniform|loguniform: [low, high]}); default: the continuous search-space entries."""
    synch: bool = False
    """pbt: wait for every trial to reach the perturbation point before deciding (reproducible exploits)."""
    compare: Literal["same_iteration", "latest"] = "same_iteration"
    """pbt, pb2 (asynchronous): rank a trial at its perturbation point against the others' results at
    the same iteration (`same_iteration`; with fewer than half the population there, at the furthest
    iteration half of it has reached), or against each one's latest result as Tune does (`latest`),
    which compares a trial that started late with others' later iterations."""
    max_t: int | None = Field(None, ge=1)
    """hyperband, asha: the most iterations a trial runs (default: the train spec's steps / iteration_steps)."""
    grace_period: int = Field(1, ge=1)
    """asha: iterations before a trial can be stopped."""
    reduction_factor: float = Field(3.0, gt=1)
    """hyperband, asha: 1/reduction_factor of the trials go on at each rung."""


_SCHEDULER_FIELDS = {
    "fifo": set(),
    "pbt": {"perturbation_interval", "quantile_fraction", "resample_probability", "hyperparam_mutations", "synch", "compare"},
    "pb2": {"perturbation_interval", "quantile_fraction", "hyperparam_mutations", "synch", "compare"},
    "hyperband": {"max_t", "reduction_factor"},
    "asha": {"max_t", "grace_period", "reduction_factor"},
}


class TuneConfig(SpecModel):
    """Body of a `kind: tune` spec (beside `train:`)."""

    search_space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Path inside `train:` (e.g. `optimizer.lr`) -> one distribution: loguniform, uniform, randint, choice or grid.
    Nested mappings (`optimizer: {lr: {...}}`, what `--set tune.search_space.optimizer.lr=...` gives) are read as dotted paths."""

    @field_validator("search_space", mode="before")
    @classmethod
    def _dotted(cls, value: Any) -> Any:
        return _flatten_space(value) if isinstance(value, dict) else value
    num_samples: int = Field(4, ge=1, le=10_000)
    """Trials to sample (with `grid` entries: per grid point)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """At most this many trials at once (default: as many as the cluster's CPUs allow)."""
    metric: str = "val_accuracy"
    """What trials are compared on: loss, val_loss, val_accuracy, samples_per_s, tokens_per_s."""
    mode: Literal["min", "max"] = "max"
    iteration_steps: int = Field(10, ge=1)
    """Optimizer steps per Tune iteration; each iteration evaluates, checkpoints and reports."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    time_budget_s: float | None = Field(None, gt=0)
    """Stop the whole search after this many seconds (running trials end at their next report)."""
    iteration_budget: int | None = Field(None, ge=1)
    """Stop the whole search once Tune has taken in this many iterations' results in all (a compute
    budget; with `asha` or `hyperband`, sample more trials than it can finish and let the scheduler
    spend it). Every trial stops when it is reached; an iteration then in flight is past the budget:
    it counts in `total_iterations`, but Tune drops its result."""
    max_failures: int = Field(1, ge=0, le=100)
    """Times a failed trial is restarted from its last checkpoint."""
    seed: int | None = 0
    """Seed of the search-space sampling and of PBT's and PB2's random choices (resample or perturb,
    which donor), so a synchronous PBT search is repeatable (None: a different search every run)."""
    table_every_s: float = Field(10.0, gt=0)
    """How often the console table is printed while trials run."""
    tensorboard: bool = False
    """Also write TensorBoard event files per trial (Ray Tune's TBXLoggerCallback) beside the
    result.json and progress.csv Tune always writes. Off by default: the Tune driver writes and
    fsyncs them for every result (about 3 ms each on 2 busy cores, plus 1.5 s to import
    tensorboardX), time taken from the trials on a small cluster; raytron's own history.jsonl,
    results.json and plots hold the same curves."""
    reuse_actors: bool = True
    """Run the next trial in a finished or paused trial's process instead of starting a new one.
    Saves the process start and imports (seconds) at every PBT pause and every new ASHA trial;
    turn it off to give each trial a fresh process (e.g. to rule out state leaking between trials)."""


class TuneJobSpec(JobSpec):
    """Hyperparameter search with Ray Tune over a train spec; `resources` are per trial."""

    KIND = "tune"
    RUNNER = "raytron.trainers.tune:run_tune_job"

    train: TrainConfig
    tune: TuneConfig = Field(default_factory=TuneConfig)

    def problems(self) -> list[SpecProblem]:
        tc, t = self.tune, self.train
        problems = [SpecProblem(p.path, p.message, p.value, p.has_value) for p in self.trial_spec({}, "probe").problems()]
        for path, dist in tc.search_space.items():
            problems += _distribution_problems(f"tune.search_space.{path}", path, dist, t)
        if tc.metric not in METRICS:
            problems.append(SpecProblem("tune.metric", f"must be one of {', '.join(METRICS)} (what every trial reports)", tc.metric))
        elif tc.metric.startswith("val_") and not t.data.val_split:
            problems.append(SpecProblem("tune.metric", "needs `train.data.val_split`: validation metrics come from evaluating that split", tc.metric))
        elif tc.metric == "val_accuracy" and t.loss != "cross_entropy":
            problems.append(SpecProblem("tune.metric", f"val_accuracy needs `train.loss: cross_entropy` (the loss is {t.loss}); use val_loss", tc.metric))
        elif tc.metric == "tokens_per_s" and t.model.recipe != "gpt":
            problems.append(SpecProblem("tune.metric", "tokens_per_s is reported by the gpt recipe only", tc.metric))
        if (tc.metric in ("loss", "val_loss") and tc.mode == "max") or (tc.metric in ("val_accuracy", "samples_per_s", "tokens_per_s") and tc.mode == "min"):
            problems.append(SpecProblem("tune.mode", f"`{tc.mode}` would search for the worst {tc.metric}; use `{'min' if tc.mode == 'max' else 'max'}`", tc.mode))
        problems += self._scheduler_problems()
        grid = [p for p, d in tc.search_space.items() if "grid" in d]
        if tc.scheduler.name in ("pbt", "pb2") and self.num_trials() < 2:
            problems.append(SpecProblem("tune.num_samples", f"{tc.scheduler.name} needs a population of at least 2 trials", tc.num_samples))
        if tc.scheduler.name in ("pbt", "pb2") and tc.max_concurrent_trials and tc.max_concurrent_trials < self.num_trials():
            # Tune's variant generator counts paused trials as live and PBT compares only unfinished
            # trials, so the rest of the population would only start once the first ones had ended.
            problems.append(SpecProblem("tune.max_concurrent_trials", f"{tc.scheduler.name} needs its whole population ({self.num_trials()} trials) "
                                        "running together: raise it to num_samples or leave it unset (the cluster's CPUs then bound how many train at once)",
                                        tc.max_concurrent_trials))
        if grid and tc.scheduler.name == "pb2":
            problems.append(SpecProblem(f"tune.search_space.{grid[0]}", "pb2 explores continuous bounds only: use uniform or loguniform, not grid", tc.search_space[grid[0]]))
        return problems

    def _scheduler_problems(self) -> list[SpecProblem]:
        tc, s = self.tune, self.tune.scheduler
        problems = []
        for field in sorted(s.model_fields_set - {"name"} - _SCHEDULER_FIELDS[s.name]):
            users = [n for n, fields in _SCHEDULER_FIELDS.items() if field in fields]
            problems.append(SpecProblem(f"tune.scheduler.{field}", f"does not apply to scheduler `{s.name}` (it is read by {', '.join(users)}); remove it or change `name`",
                                        getattr(s, field)))
        if s.name in ("hyperband", "asha"):
            max_t = self.max_iterations()
            if max_t is None:
                problems.append(SpecProblem("tune.scheduler.max_t", f"{s.name} needs the most iterations a trial runs: set `max_t`, or `train.steps` (max_t = steps / iteration_steps)", None))
            elif s.name == "asha" and s.grace_period > max_t:
                problems.append(SpecProblem("tune.scheduler.grace_period", f"must be at most `max_t` ({max_t}): a trial cannot be judged after more iterations than it runs", s.grace_period))
        if s.name in ("pbt", "pb2"):
            if s.hyperparam_mutations is None and not tc.search_space:
                problems.append(SpecProblem("tune.scheduler.hyperparam_mutations", f"{s.name} needs something to mutate: a `tune.search_space` or `hyperparam_mutations`", None))
            for path, dist in (s.hyperparam_mutations or {}).items():
                where = f"tune.scheduler.hyperparam_mutations.{path}"
                problems += _distribution_problems(where, path, dist, self.train)
                if s.name == "pb2" and next(iter(dist), None) not in ("uniform", "loguniform"):
                    problems.append(SpecProblem(where, "pb2 needs continuous bounds: {uniform: [low, high]} or {loguniform: [low, high]}", dist))
                if "grid" in dist:
                    problems.append(SpecProblem(where, "a mutation cannot be a grid: use choice, uniform, loguniform or randint", dist))
            if s.name == "pb2" and s.hyperparam_mutations is None and not any(next(iter(d), None) in ("uniform", "loguniform") for d in tc.search_space.values()):
                problems.append(SpecProblem("tune.search_space", "pb2 needs at least one uniform or loguniform entry to explore (or `scheduler.hyperparam_mutations`)", list(tc.search_space)))
            if self.train.checkpoint.model_fields_set & {"every_steps"} and self.train.checkpoint.every_steps != tc.iteration_steps:
                problems.append(SpecProblem("train.checkpoint.every_steps", f"is set by `tune.iteration_steps` ({tc.iteration_steps}) for tuning: every iteration "
                                            "reports a checkpoint, so an exploit always has the donor's weights of that iteration; remove it", self.train.checkpoint.every_steps))
        return problems

    def num_trials(self) -> int:
        """How many trials the search holds: `num_samples`, times every grid's length."""
        return self.tune.num_samples * _grid_size(self.tune)

    def max_iterations(self) -> int | None:
        """`scheduler.max_t`, or the iterations `train.steps` makes (None when only epochs bound training)."""
        if self.tune.scheduler.max_t is not None:
            return self.tune.scheduler.max_t
        if self.train.steps is not None:
            return math.ceil(self.train.steps / self.tune.iteration_steps)
        return None

    def trial_spec(self, config: dict[str, Any], trial_id: str) -> TrainJobSpec:
        """The `kind: train` spec one trial runs: the train body with `config` applied at its paths.

        The trial's run directory is `<run_dir>/trials/<trial_id>`; it checkpoints and evaluates
        every `tune.iteration_steps` steps, so every Tune iteration reports a checkpoint.
        """
        body = self.train.model_dump(mode="json")
        for path, value in config.items():
            set_path(body, path, value)
        body["checkpoint"] = {**body["checkpoint"], "every_steps": self.tune.iteration_steps, "keep": max(2, body["checkpoint"]["keep"])}
        body["eval_every_steps"] = self.tune.iteration_steps
        body["log_every_steps"] = math.gcd(body["log_every_steps"], self.tune.iteration_steps)
        return TrainJobSpec.model_validate({
            "name": _trial_name(self.name, trial_id), "kind": "train", "resources": self.resources.model_dump(mode="json"),
            "runtime": self.runtime.model_dump(mode="json"), "storage": {"path": str(self.run_dir / "trials")}, "train": body,
        })

    def entrypoint_resources(self) -> tuple[float, float]:
        return (0.0, 0.0)  # the Tune driver only coordinates; trials hold the resources

    @property
    def run_dir(self) -> Path:
        """`<storage.path>/<name>`: trials, Ray Tune's experiment, results.json and plots."""
        return Path(os.path.expanduser(self.storage.path)) / self.name

    def resolve_paths(self, base_dir) -> "TuneJobSpec":
        # The train kind's own rule (the manifest relative to the spec file), on the same body object.
        probe = TrainJobSpec.model_construct(name=self.name, kind="train", train=self.train).resolve_paths(base_dir)
        return self.model_copy(update={"train": probe.train})


def _trial_name(name: str, trial_id: str) -> str:
    """A valid job name for the trial (`JobSpec.name` allows 48 characters)."""
    suffix = "".join(c if c.isalnum() else "-" for c in trial_id.lower()).strip("-") or "trial"
    return f"{name[: 47 - len(suffix)].rstrip('-')}-{suffix}"


def _flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{optimizer: {lr: {loguniform: [...]}}}` -> `{"optimizer.lr": {loguniform: [...]}}`."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        # A mapping of mappings is a level of the path; a mapping with other values is a (perhaps wrong) distribution.
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()) and not (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
            flat.update(_flatten_space(value, path + "."))
        else:
            flat[path] = value
    return flat


def _grid_size(tc: TuneConfig) -> int:
    size = 1
    for dist in tc.search_space.values():
        if "grid" in dist and isinstance(dist["grid"], list):
            size *= max(1, len(dist["grid"]))
    return size


def get_path(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for key in path.split("."):
        node = node[key]
    return node


def set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating `args`-style dicts on the way."""
    keys = path.split(".")
    node = body
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _distribution_problems(where: str, path: str, dist: Any, train: TrainConfig) -> list[SpecProblem]:
    """One search-space entry: a known distribution with a well-formed argument whose values the field accepts."""
    if path.startswith("train."):
        return [SpecProblem(where, f"paths are inside `train:` already: write `{path[len('train.'):]}`", dist)]
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        allowed = "; ".join(f"{k}: {v}" for k, v in DISTRIBUTIONS.items())
        return [SpecProblem(where, f"must be one distribution, {{name: argument}}, among {allowed}", dist)]
    name, arg = next(iter(dist.items()))
    if name in _CONTINUOUS:
        if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
            return [SpecProblem(where, f"{name} takes {DISTRIBUTIONS[name]}", arg)]
        low, high = arg
        if name == "randint" and not all(isinstance(v, int) for v in arg):
            return [SpecProblem(where, f"randint takes integers: {DISTRIBUTIONS[name]}", arg)]
        if not low < high or (name == "loguniform" and low <= 0):
            return [SpecProblem(where, f"{name} takes {DISTRIBUTIONS[name]}", arg)]
        samples = [low, high - 1] if name == "randint" else [low, high]
    else:
        if not isinstance(arg, list) or not arg:
            return [SpecProblem(where, f"{name} takes {DISTRIBUTIONS[name]}", arg)]
        samples = arg
    body = train.model_dump(mode="json")
    try:
        get_path(body, path)
    except (KeyError, TypeError):
        if not (path.startswith("model.args.") and path.count(".") == 2):
            return [SpecProblem(where, f"`train.{path}` is not a field of the train spec (model.args.* may be any recipe argument)", dist)]
    for value in samples:
        trial = copy.deepcopy(body)
        set_path(trial, path, value)
        try:
            TrainConfig.model_validate(trial)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            return [SpecProblem(where, f"{name} reaches {value!r}, which `train.{path}` does not accept: {err['msg']}", arg)]
    return []
