"""Theme `tune`: PBT and ASHA against random search on the digits recipe, same compute budget, in one run.

Four `kind: tune` jobs per seed, submitted to the same embedded Ray head (started and stopped by
this theme) on the same digits shards: the `mlp` recipe trained with SGD over the same search space
(`optimizer.lr` loguniform [1e-4, 1], `optimizer.momentum` uniform [0, 0.99], `optimizer.weight_decay`
loguniform [1e-6, 0.1]: a bad draw barely moves, diverges or is held down by weight decay, so stopping
or replacing it early is worth something), 30% of the digits held out as the val split (540 samples), the same
`iteration_steps`, the same most iterations per trial and the same number of trials at once:

    random search  scheduler fifo: 8 trials, every one runs to the end;
    PBT            scheduler pbt, the same 8 trials: every `perturbation_interval` iterations the
                   bottom quarter copies the top quarter's weights and perturbs its hyperparameters;
    random-wide    scheduler fifo: 32 trials (4 waves of 8), every one runs to the end;
    ASHA           scheduler asha, random-wide's budget: weak trials stop at rungs (grace period,
                   reduction factor) and new samples take their places.

Each scheduler is compared with random search in the setting it is for. PBT improves a population
that trains at once, so its baseline is that population without exploits (`random`); ASHA decides
which of more samples than fit at once deserve the budget, so its baseline is random search over
several waves (`random-wide`): with a single wave every random trial starts at once and ASHA can
only replace the trials it stops with later, shorter ones (on one wave it tied random search).

Trials run 8 at once for every method (0.25 CPU each on the 2-CPU head), and a trial's training budget (27 iterations of 4
steps) is short of what the digits need to saturate, so how the compute is spent shows in the
result. With 270 steps a trial every reasonable draw ends near 0.98 and the methods tie on accuracy
(run with `--iteration-steps 10 --target-accuracy 0.97`); with fewer slots than trials
(`--cpus-per-trial 1`) asynchronous PBT's population takes turns and reaches any target later than
random search, whose first trials run to the end undisturbed.

The budget is trial iterations (each `iteration_steps` SGD steps ending in an evaluation on the
val split): what the method's random search spends, `num_samples x max_iterations` (x `waves` for
ASHA). Every search is held to it by `tune.iteration_budget` (the search stops once Tune has taken in
that many results; iterations then in flight are past it, trained but their results dropped). ASHA stops most trials early,
so it is given as many samples as could ever start within the budget (`budget / grace_period`) and
the budget, not the sample count, ends its search. Every method's best accuracy is taken over its
first `budget` iterations (in the order they were
reported), and so is reaching the target, so no method is credited with more compute than random
search had. Measured per job: best val_accuracy, the tune job's wall time,
iterations spent, and time / iterations to reach `--target-accuracy` (first history row of any
trial at or above it, timed from the search's first result; see `job_metrics`). Ratios are stated
so that higher is better for the schedulers (accuracy: scheduler / random; times: random /
scheduler), seed by seed against random search on the same initial draws, and their median over
seeds is the headline (`paired`, `ratios_of`).

The goal's time is the time to reach the accuracy random search reached with the whole budget, on
the same seed: how much sooner a scheduler gets what random search gets (the speed-up over random
search that the Hyperband and BOHB papers report). A fixed target is measured too, but a scheduler
cannot win it when random search's first trials reach it: both searches start those same draws
together and nothing makes them train faster (`target_sample` records which sample got there). On
the digits about one draw in five reaches 0.95 within 27 iterations, so the first 8 usually hold
one: replaying 3,200 recorded trials (10 seeds x 320 draws, each trial's curve is the same in every
search) through Tune's ASHA rule with no cost at all for starting a trial gave 1.02x random search's
time to 0.95 at the median over seeds, against 1.38x to random search's best with a trial start
costing what it does here (1.2 iterations); `bench/_tune_replay.py` records the curves and replays them.

    raytron bench tune [--quick]
    python bench/tune.py --repeats 5                     # 8 trials x 27 iterations of 4 steps, 8 at once; random-wide 32, ASHA up to 864
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import BenchArgs, option, parse_args, summarize, write_results

METHODS = ("random", "pbt", "random-wide", "asha")
#: Each scheduler against random search in the setting it is for: PBT against the same population
#: run without exploits; ASHA against random search over a budget of several waves of trials.
BASELINE_OF = {"pbt": "random", "asha": "random-wide"}
SEARCH_SPACE = {"optimizer.lr": {"loguniform": [1.0e-4, 1.0]}, "optimizer.momentum": {"uniform": [0.0, 0.99]}, "optimizer.weight_decay": {"loguniform": [1.0e-6, 0.1]}}
COLORS = {"random": "#7f7f7f", "pbt": "#1f77b4", "random-wide": "#2ca02c", "asha": "#d62728"}


@dataclass(kw_only=True)
class TuneArgs(BenchArgs):
    """Options of the `tune` theme (`--repeats` is the number of seeds per method: --quick 1, full 3)."""

    num_samples: int | None = option(None, "Trials of random search and PBT (default: --quick 4, full 8).")
    max_iterations: int | None = option(None, "Most iterations a trial runs (train.steps / iteration_steps; default: 27, ASHA's max_t).")
    iteration_steps: int = option(4, "SGD steps per Tune iteration (each ends in an evaluation on the val split); 4 x 27 iterations = 108 steps a trial, short of saturating the digits.")
    asha_samples: int | None = option(None, "ASHA's trials (default: budget / grace_period, as many as could ever start; the iteration budget ends its search).")
    perturbation_interval: int = option(3, "PBT: iterations between exploit/explore decisions.")
    pbt_population: int | None = option(None, "PBT: trials in the population (default: num_samples); each trains budget / population iterations.")
    quantile_fraction: float = option(0.25, "PBT: the bottom fraction copies the top fraction (0.5 for a population of 2).")
    pbt_compare: str = option("same_iteration", "PBT: rank trials at the same iteration (same_iteration) or by each one's latest result, as Tune does (latest).")
    grace_period: int = option(1, "ASHA: iterations before a trial can be stopped.")
    reduction_factor: float = option(3.0, "ASHA: 1/reduction_factor of the trials go on at each rung.")
    target_accuracy: float = option(0.95, "A fixed validation accuracy whose first reaching is timed (reported; the goal times random search's best instead).")
    val_fraction: float = option(0.3, "Share of the digits held out as the val split (0.3: 540 samples, so one more right answer moves accuracy by 0.002).")
    hidden: int = option(64, "Hidden width of the mlp recipe.")
    batch_size: int = option(64, "Global batch size of every trial.")
    cpus_per_trial: float = option(0.25, "CPUs each trial holds; with --head-cpus this sets how many trials run at once (the same for every method; 0.25 on 2 CPUs: the population of 8 at once).")
    head_cpus: int = option(2, "CPUs the embedded head offers (trials at once = head_cpus / cpus_per_trial).")
    methods: str = option("random,pbt,random-wide,asha", "Comma-separated methods to run (random is PBT's baseline, random-wide ASHA's).")
    waves: int = option(4, "ASHA's budget in waves of random search: random-wide runs num_samples x waves trials of max_iterations, as many at once as random.")
    timeout_s: float = option(600.0, "Limit for one tune job; a job past it is stopped and counts as failed.")


@dataclass(frozen=True)
class Plan:
    """What every job of the run is given."""

    seeds: int
    num_samples: int
    max_iterations: int
    asha_samples: int
    pbt_population: int
    waves: int

    @property
    def pbt_iterations(self) -> int:
        """Iterations of each PBT trial: the budget shared by the population."""
        return self.budget_iterations // self.pbt_population

    @property
    def budget_iterations(self) -> int:
        """Trial iterations random search spends: the budget PBT is held to."""
        return self.num_samples * self.max_iterations

    @property
    def wide_budget_iterations(self) -> int:
        """Trial iterations of `waves` waves of random search: the budget of random-wide and ASHA."""
        return self.budget_iterations * self.waves

    def budget_of(self, method: str) -> int:
        return self.wide_budget_iterations if method in ("random-wide", "asha") else self.budget_iterations


def make_plan(args: TuneArgs) -> Plan:
    n = args.num_samples or (4 if args.quick else 8)
    t = args.max_iterations or 27
    # Every ASHA trial runs at least grace_period iterations, so no more than budget / grace_period
    # of them can start within the budget: with that many samples the budget ends the search.
    asha = args.asha_samples or max(n, n * t * args.waves // args.grace_period)
    return Plan(seeds=args.pick_repeats(quick=1, full=3), num_samples=n, max_iterations=t, asha_samples=asha,
                pbt_population=args.pbt_population or n, waves=args.waves)


# --------------------------------------------------------------------------- running the jobs


def tune_spec_body(args: TuneArgs, plan: Plan, method: str, seed: int, digits: Path, runs: Path) -> dict[str, Any]:
    """The `kind: tune` spec of one method and seed; everything but the scheduler (and ASHA's samples) is shared."""
    scheduler: dict[str, Any] = {
        "random": {"name": "fifo"}, "random-wide": {"name": "fifo"},
        # Asynchronous PBT: with fewer slots than trials, a trial at a perturbation point is paused
        # while others are pending, so the whole population takes turns and is compared together.
        "pbt": {"name": "pbt", "perturbation_interval": args.perturbation_interval, "quantile_fraction": args.quantile_fraction, "compare": args.pbt_compare},
        "asha": {"name": "asha", "grace_period": args.grace_period, "reduction_factor": args.reduction_factor},
    }[method]
    return {
        "name": f"bench-{method}-s{seed}", "kind": "tune",
        "resources": {"num_workers": 1, "cpus_per_worker": args.cpus_per_trial},
        "storage": {"path": str(runs)},
        "train": {
            "model": {"recipe": "mlp", "args": {"hidden": args.hidden}},
            "data": {"manifest": str(digits), "shuffle_buffer": 500},
            "optimizer": {"name": "sgd", "lr": 0.01},  # replaced by every trial's draw
            "steps": (plan.pbt_iterations if method == "pbt" else plan.max_iterations) * args.iteration_steps, "global_batch_size": args.batch_size,
            "log_every_steps": args.iteration_steps,
        },
        "tune": {
            "search_space": SEARCH_SPACE,
            "num_samples": {"asha": plan.asha_samples, "pbt": plan.pbt_population, "random-wide": plan.num_samples * plan.waves}.get(method, plan.num_samples),
            "metric": "val_accuracy", "mode": "max", "iteration_steps": args.iteration_steps, "seed": seed,
            # No max_concurrent_trials: Tune's variant generator counts a paused trial as running, so
            # a limit below num_samples would shrink PBT's population to the trials running at once.
            # The head's CPUs bound every method to the same trials at once instead.
            "scheduler": scheduler, "table_every_s": 60.0, "iteration_budget": plan.budget_of(method),
        },
    }


def run_job(manager, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Submit one tune job, wait for it, and return its results.json plus the search's start time."""
    from raytron.cluster import parse_spec

    spec = parse_spec(body, source=body["name"])
    started = time.monotonic()
    submission_id = manager.submit(spec)
    record = manager.wait(submission_id, timeout_s=timeout_s)
    if not record.terminal:
        record = manager.stop(submission_id)
    out: dict[str, Any] = {"status": record.status, "job_s": time.monotonic() - started}
    results_file = spec.run_dir / "results.json"
    if record.status != "SUCCEEDED" or not results_file.is_file():
        out["error_tail"] = manager.logs(submission_id)[-1500:]
        return out
    out["results"] = json.loads(results_file.read_text())
    # Every iteration the trials reported, whether or not Tune registered its checkpoint before the
    # search ended (results.json ends a trial at its last registered checkpoint).
    history_file = spec.run_dir / "history.jsonl"
    out["history"] = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] if history_file.is_file() else None
    # The driver writes spec.json right after taking its start time, before Tune starts any trial:
    # its mtime is the start of the search that the history rows' unix times are measured from.
    out["search_started_at"] = (spec.run_dir / "spec.json").stat().st_mtime
    return out


def measure(args: TuneArgs, plan: Plan, manager, work: Path) -> list[dict[str, Any]]:
    digits = _make_digits(work, args.val_fraction)
    rows = []
    for seed in range(plan.seeds):
        # Rotate the order per seed, so a method is not always the one run on a warmer (or busier) machine.
        chosen = [m for m in METHODS if m in args.methods.split(",")]
        order = chosen[seed % len(chosen):] + chosen[: seed % len(chosen)]
        for method in order:
            print(f"seed {seed}: {method} ...", file=sys.stderr, flush=True)
            job = run_job(manager, tune_spec_body(args, plan, method, seed, digits, work / "runs"), args.timeout_s)
            row = {"method": method, "seed": seed, "status": job["status"], "job_s": job["job_s"]}
            if "results" in job:
                row.update(job_metrics(job["results"], job["search_started_at"], plan.budget_of(method), args.target_accuracy, job.get("history")))
            else:
                row["error_tail"] = job["error_tail"]
            rows.append(row)
            print(f"  {method}: {_line(row)}", file=sys.stderr, flush=True)
    return rows


def job_metrics(results: dict[str, Any], start: float, budget: int, target: float, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Best accuracy (overall and within the budget), time and iterations to target, and the best-so-far curve.

    The curve is `history` (the run's history.jsonl rows: every iteration reported) when given, else
    the trials' histories in results.json. The two differ when the budget ends a search at a result
    Tune took in before it registered that result's checkpoint: results.json ends the trial before it
    (in a random search with a budget of exactly its 8 x 27 iterations, a seed's last result, 0.9619,
    was missing and its best read 0.9600).

    Times are from the search's first reported iteration: before it, Ray Tune starts and the first
    trials (as many as run at once, the same for every method) import torch and open the shards,
    15-20 s on 2 shared cores that vary by a few seconds from run to run and are no scheduler's doing.
    Later trial starts (ASHA's extra samples) and PBT's exploit restarts are counted.
    `time_to_target_from_start_s` is the same moment from the search's start (`start`).
    """
    if history is None:
        history = [{**h, "trial_id": t["trial_id"]} for t in results["trials"] for h in t["history"]]
    history = sorted((h for h in history if h.get("val_accuracy") is not None and "event" not in h), key=lambda h: h["time"])
    first = history[0]["time"] if history else start
    curve, best, to_target = [], -math.inf, None
    for spent, h in enumerate(history, start=1):
        best = max(best, h["val_accuracy"])
        curve.append({"t_s": h["time"] - first, "iterations": spent, "best": best})
        if to_target is None and spent <= budget and h["val_accuracy"] >= target:
            to_target = (h["time"] - first, spent, h["trial_id"])
    in_budget = [p["best"] for p in curve if p["iterations"] <= budget]
    return {
        "best_val_accuracy": (results.get("best") or {}).get("metric"),
        "best_val_accuracy_in_budget": in_budget[-1] if in_budget else None,
        "time_to_target_s": to_target[0] if to_target else None,
        "iterations_to_target": to_target[1] if to_target else None,
        "time_to_target_from_start_s": to_target[0] + first - start if to_target else None,
        # Which draw got there first: Tune numbers trials in the order it samples them (`<experiment>_<index>`).
        "target_sample": int(to_target[2].rsplit("_", 1)[1]) if to_target else None,
        "first_result_s": first - start,
        "tune_wall_s": results["wall_s"],
        "total_iterations": results["total_iterations"],
        "trials": sum(1 for t in results["trials"] if t["history"]),  # started (a budget-ended search leaves samples unstarted)
        "errored_trials": len(results["errored"]),
        "exploits": len(results["exploits"]),
        "best_config": (results.get("best") or {}).get("config"),
        "curve": curve,
    }


def _make_digits(work: Path, val_fraction: float) -> Path:
    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    out = work / "digits"
    build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=out, val_fraction=val_fraction, progress=False))
    return out


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "SUCCEEDED" or "best_val_accuracy" not in row:
        return f"{row['status']} after {row['job_s']:.0f} s"
    ttt = "never" if row["time_to_target_s"] is None else f"{row['time_to_target_s']:.1f} s ({row['iterations_to_target']} it)"
    return (f"best val_accuracy {row['best_val_accuracy']:.4f} ({row['best_val_accuracy_in_budget']:.4f} in budget), "
            f"{row['total_iterations']} iterations over {row['trials']} trials, tune wall {row['tune_wall_s']:.1f} s, "
            f"target reached {ttt}, {row['exploits']} exploit(s)")


# --------------------------------------------------------------------------- report


def _median_or_inf(values: list[float | None]) -> float:
    """Median over seeds where a run that never reached the target counts as infinitely slow."""
    return statistics.median([math.inf if v is None else v for v in values]) if values else math.inf


def paired(ok: dict[str, list[dict[str, Any]]], method: str, plan: Plan) -> dict[str, list[float]]:
    """Per seed, the method against its random search (`BASELINE_OF`) on the same seed (the same initial draws).

    accuracy: its best in-budget val_accuracy / random's. time_to_best (the goal's time): random
    search's time to its own best in-budget accuracy / the method's time to that same accuracy (0 when
    it never got there in its budget). time (the fixed `--target-accuracy`, reported beside the goal):
    random's time to it / the method's, inf when only the method reached it, 0 when only random search
    did, 1 when neither did.
    """
    baseline = BASELINE_OF[method]
    base = {r["seed"]: r for r in ok.get(baseline, [])}
    out: dict[str, list[float]] = {"accuracy": [], "time": [], "time_to_best": []}
    for r in ok.get(method, []):
        b = base.get(r["seed"])
        if b is None:
            continue
        out["accuracy"].append(r["best_val_accuracy_in_budget"] / b["best_val_accuracy_in_budget"])
        mine, theirs = r["time_to_target_s"], b["time_to_target_s"]
        out["time"].append(1.0 if mine is None and theirs is None else 0.0 if mine is None else math.inf if theirs is None else theirs / mine)
        if r.get("curve") and b.get("curve"):
            goal = b["best_val_accuracy_in_budget"]
            theirs = _time_to(b["curve"], goal, plan.budget_of(baseline))
            mine = _time_to(r["curve"], goal, plan.budget_of(method))
            out["time_to_best"].append(0.0 if mine is None or theirs is None else 1.0 if mine == theirs else math.inf if mine == 0 else theirs / mine)
    return out


def _time_to(curve: list[dict[str, Any]], accuracy: float, budget: int) -> float | None:
    """Seconds from the first result until the best-so-far reaches `accuracy` within `budget` iterations."""
    return next((p["t_s"] for p in curve if p["iterations"] <= budget and p["best"] >= accuracy - 1e-12), None)


def ratios_of(ok: dict[str, list[dict[str, Any]]], plan: Plan) -> dict[str, float | None]:
    """Medians over seeds of the paired ratios (`paired`), and the ratios of the methods' medians."""
    ratios: dict[str, float | None] = {}
    for method in ("pbt", "asha"):
        runs, base = ok.get(method, []), ok.get(BASELINE_OF[method], [])
        pairs = paired(ok, method, plan)
        ratios[f"{method}_best_accuracy_vs_random"] = statistics.median(pairs["accuracy"]) if pairs["accuracy"] else None
        ratios[f"{method}_time_to_target_vs_random"] = statistics.median(pairs["time"]) if pairs["time"] else None
        ratios[f"{method}_time_to_random_best_vs_random"] = statistics.median(pairs["time_to_best"]) if pairs["time_to_best"] else None
        if not runs or not base:
            ratios[f"{method}_best_accuracy_medians_vs_random"] = ratios[f"{method}_time_to_target_medians_vs_random"] = None
            continue
        ratios[f"{method}_best_accuracy_medians_vs_random"] = (statistics.median(r["best_val_accuracy_in_budget"] for r in runs)
                                                               / statistics.median(r["best_val_accuracy_in_budget"] for r in base))
        mine, theirs = _median_or_inf([r["time_to_target_s"] for r in runs]), _median_or_inf([r["time_to_target_s"] for r in base])
        # random's median time / the method's; undefined (None) when either median run never reached the target.
        ratios[f"{method}_time_to_target_medians_vs_random"] = theirs / mine if math.isfinite(mine) and math.isfinite(theirs) else None
    return ratios


def verdicts_of(ok: dict[str, list[dict[str, Any]]], plan: Plan, ratios: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Per scheduler: whether it meets the goal on accuracy and on time, with its (better, tied, worse) seed counts per paired ratio.

    A goal is met when the paired median ratio is above 1 and the scheduler is better on more seeds
    than it is worse; the time goal is the time to random search's own best in-budget accuracy.
    """
    out = {}
    for m in ("pbt", "asha"):
        if not ok.get(m) or not ok.get(BASELINE_OF[m]):
            continue
        pairs = paired(ok, m, plan)
        counts = {k: (sum(v > 1 for v in vals), sum(v == 1 for v in vals), sum(v < 1 for v in vals)) for k, vals in pairs.items()}
        out[m] = {"counts": counts,
                  "accuracy": (ratios.get(f"{m}_best_accuracy_vs_random") or 0) > 1 and counts["accuracy"][0] > counts["accuracy"][2],
                  "time": (ratios.get(f"{m}_time_to_random_best_vs_random") or 0) > 1 and counts["time_to_best"][0] > counts["time_to_best"][2]}
    return out


def report(args: TuneArgs, plan: Plan, rows: list[dict[str, Any]]) -> int:
    ok = {m: [r for r in rows if r["method"] == m and "best_val_accuracy" in r] for m in METHODS}
    metrics = ("best_val_accuracy", "best_val_accuracy_in_budget", "time_to_target_s", "iterations_to_target", "time_to_target_from_start_s",
               "first_result_s", "tune_wall_s", "total_iterations", "exploits")
    summary = {k: {m: summarize([r[k] for r in runs if r[k] is not None]) for m, runs in ok.items()} for k in metrics}
    ratios = ratios_of(ok, plan)
    notes = _notes(args, plan, ok, ratios) + [f"{r['method']} seed {r['seed']} FAILED ({r['status']}): {r['error_tail'][-400:]}" for r in rows if "best_val_accuracy" not in r]
    config = {**asdict(args), **asdict(plan), "budget_iterations": plan.budget_iterations, "wide_budget_iterations": plan.wide_budget_iterations,
              "search_space": SEARCH_SPACE,
              "trials_at_once": int(args.head_cpus // args.cpus_per_trial)}
    table = [{k: v for k, v in r.items() if k not in ("curve", "error_tail")} for r in rows]
    write_results("tune", config, {"summary": summary, "runs": table, "curves": {f"{r['method']}-s{r['seed']}": r.get("curve") for r in rows}},
                  ratios, notes, lambda plt: _plot(plt, rows, args.target_accuracy, plan), out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    for name, value in ratios.items():
        print(f"{name}: {'-' if value is None else f'{value:.3f}x'}", file=sys.stderr)
    return 0 if all("best_val_accuracy" in r for r in rows) else 1


def _notes(args: TuneArgs, plan: Plan, ok: dict[str, list[dict[str, Any]]], ratios: dict[str, float | None]) -> list[str]:
    spent = {m: statistics.median(r["total_iterations"] for r in runs) for m, runs in ok.items() if runs}
    notes = [
        f"digits shards, mlp recipe (hidden {args.hidden}), SGD, batch {args.batch_size}; search space {json.dumps(SEARCH_SPACE)}; "
        f"val split {args.val_fraction:g} of the digits; "
        f"{plan.seeds} seed(s) per method (tune.seed, the same for every method of a seed); "
        f"{args.iteration_steps} steps per iteration, at most {plan.max_iterations} iterations per trial, "
        f"{int(args.head_cpus // args.cpus_per_trial)} trials at once ({args.cpus_per_trial:g} CPU each on a {args.head_cpus}-CPU embedded head).",
        f"PBT against random search in the setting PBT is for, the population at once: both run {plan.num_samples} trials of {plan.max_iterations} iterations "
        f"(budget {plan.budget_iterations} trial iterations). ASHA against random search in the setting ASHA is for, more trials than run at once: "
        f"random-wide runs {plan.num_samples * plan.waves} trials of {plan.max_iterations} iterations ({plan.waves} waves, budget {plan.wide_budget_iterations}), "
        f"ASHA (grace {args.grace_period}, rf {args.reduction_factor:g}, max_t {plan.max_iterations}) gets the same budget and {plan.asha_samples} samples, as many "
        "as could ever start within it, so the budget and not the sample count ends its search. Every search stops at its budget "
        "(tune.iteration_budget, once Tune has taken in that many results; iterations then in flight are past it: trained, but Tune drops their results). "
        "Iterations actually spent (median over seeds): "
        + ", ".join(f"{m} {v:g}" for m, v in spent.items())
        + ". `best_val_accuracy_in_budget` counts only each run's first budget iterations in reporting order (it equals results.json best.metric when a run did not overspend); "
        "the accuracy ratios use it.",
        f"Time to target: from the search's first reported iteration to the first history row of any trial with val_accuracy >= {args.target_accuracy}. "
        f"Before the first result Ray Tune starts and the first {int(args.head_cpus // args.cpus_per_trial)} trials import torch and open the shards "
        "(`first_result_s`, the same work for every method, varying by seconds from run to run); ASHA's later trial starts and PBT's exploit restarts are counted. "
        "`time_to_target_from_start_s` is the same moment from the search's start (the driver's spec.json write).",
        "When the population runs at once, raytron's PBT pauses a trial only to exploit it; Tune's own asynchronous PBT also pauses every trial that "
        "reaches a perturbation point while another is paused (to yield its slot), which restarted healthy trials from their checkpoints "
        "56 times in a run with 11 exploits and tripled the time between perturbations (trainers/tune_pbt.py).",
        "An exploited PBT trial goes on in the process it already has; Tune's own PBT ends it and starts a new one once every sample has started "
        "(1.2 to 2.5 s an exploit here against a 0.25 s iteration; trainers/tune_pbt.py).",
        f"PBT ranks trials with tune.scheduler.compare: {args.pbt_compare} (`--pbt-compare`). same_iteration ranks a trial against the others' "
        "results at the same iteration; latest is Tune's ranking by each trial's score at its own last perturbation point, which compares a "
        "trial that started first (the population's processes start seconds apart here) on later iterations than the others.",
    ]
    verdicts = []
    for m, v in verdicts_of(ok, plan, ratios).items():
        c = v["counts"]
        verdicts.append(f"{m}: best accuracy {'met' if v['accuracy'] else 'not met'} (better on {c['accuracy'][0]} seed(s), "
                        f"tied on {c['accuracy'][1]}, worse on {c['accuracy'][2]}); time to {BASELINE_OF[m]}'s best {'met' if v['time'] else 'not met'} "
                        f"(sooner on {c['time_to_best'][0]}, tied on {c['time_to_best'][1]}, later on {c['time_to_best'][2]}); "
                        f"time to the fixed {args.target_accuracy}, reported beside the goal: sooner on {c['time'][0]}, tied on {c['time'][1]}, later on {c['time'][2]}")
    notes.append(
        "Goal: PBT and ASHA both beat random search: a higher best val_accuracy within the same budget, and reaching the accuracy random search "
        "reached with that whole budget sooner than random search did (`_time_to_random_best_vs_random`: that search's own time to it / the method's, "
        "0 when the method never got there). "
        "Each seed fixes the initial draws, the same for every method, and the draws move the results more than the schedulers do, "
        "so each method is compared with its random search (PBT: random, ASHA: random-wide) seed by seed: the `_vs_random` ratios are medians over seeds of those paired ratios, "
        "and a goal is met when that median is above 1 and the method is better on more seeds than it is worse "
        "(`_medians_vs_random`: the ratio of the methods' medians, for comparison). "
        f"The time to the fixed {args.target_accuracy} (`_time_to_target_vs_random`) is reported beside the goal: when the first trials of the random search reach it "
        "(all of them start at once, with the same draws as the method's first trials) a scheduler has nothing to win there, "
        "since it cannot speed those trials up, only find a better one when they lack it. "
        + "; ".join(verdicts)
        + (" — with one seed this is a smoke result, not a conclusion." if plan.seeds == 1 else ".")
    )
    at_once = int(args.head_cpus // args.cpus_per_trial)
    reached = [r["target_sample"] for r in ok.get("random-wide", []) if r.get("target_sample") is not None]
    if reached:
        notes.append(f"random-wide reached {args.target_accuracy} with one of its first {at_once} samples (ASHA draws and starts the same {at_once} at once) "
                     f"on {sum(i < at_once for i in reached)} of the {len(reached)} seed(s) where it reached it.")
    for m, runs in ok.items():
        never = sum(r["time_to_target_s"] is None for r in runs)
        if never:
            notes.append(f"{m}: {never} of {len(runs)} run(s) never reached val_accuracy {args.target_accuracy} (paired time ratio: inf when only random search "
                         "never reached it, 0 when only the method never did; a `_medians_vs_random` time ratio whose median run never reached it is left empty).")
    return notes


def _plot(plt, rows: list[dict[str, Any]], target: float, plan: Plan):
    """Best-so-far per run (thin) and its median over seeds per method (thick), over wall time and over iterations spent."""
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    curves = [r for r in rows if r.get("curve")]
    for ax, key, grid in ((a, "t_s", np.linspace(0.0, max((p["t_s"] for r in curves for p in r["curve"]), default=1.0), 200)),
                          (b, "iterations", np.arange(1, max((p["iterations"] for r in curves for p in r["curve"]), default=1) + 1))):
        for method in METHODS:
            mine = [r for r in curves if r["method"] == method]
            if not mine:
                continue
            stepped = []
            for r in mine:
                xs = np.array([p[key] for p in r["curve"]])
                ys = np.array([p["best"] for p in r["curve"]])
                ax.plot(xs, ys, color=COLORS[method], alpha=0.25, linewidth=0.8, drawstyle="steps-post")
                idx = np.searchsorted(xs, grid, side="right") - 1
                stepped.append(np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan))
            median = np.nanmedian(np.array(stepped), axis=0) if len(stepped) > 1 else stepped[0]
            ax.plot(grid, median, color=COLORS[method], linewidth=2.2, drawstyle="steps-post", label=f"{method} (median of {len(mine)} seed(s))")
        ax.axhline(target, color="black", linewidth=0.8, alpha=0.6)
        ax.set_ylabel("best val_accuracy so far")
        ax.set_ylim(max(0.0, target - 0.15), 1.0)
        ax.legend(fontsize=8, loc="lower right")
    for budget in (plan.budget_iterations, plan.wide_budget_iterations):
        b.axvline(budget, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
    a.set_xlabel("seconds since the search's first result")
    a.set_title(f"best-so-far over wall time (target {target})")
    b.set_xlabel("trial iterations spent (all trials)")
    b.set_title(f"best-so-far over iterations spent (budgets {plan.budget_iterations}, {plan.wide_budget_iterations})")
    fig.suptitle("tune: PBT and ASHA vs random search, digits mlp, same search space and budget", fontsize=12)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(TuneArgs, "PBT and ASHA against random search on the digits recipe, same compute budget: best val_accuracy and time to a target.", argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        print(f"--methods ({args.methods}): unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    plan = make_plan(args)
    # A SIGTERM (e.g. from a CI timeout) must still reach the `finally` that stops the head we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from raytron.cluster import JobManager, LocalHeadConfig, Settings, connect, start_local_head, stop_local_head

    with tempfile.TemporaryDirectory(prefix="rt-bench-tune-") as tmp:
        work = Path(tmp)
        address = args.address or os.environ.get("RAY_ADDRESS")
        # Our own RAYTRON_HOME: the embedded head is this run's alone, and nobody else's head is touched.
        settings = Settings(home=work / "home", address=address)
        started = False
        try:
            if address is None:
                t0 = time.monotonic()
                _, started = start_local_head(LocalHeadConfig(home=settings.home, num_cpus=args.head_cpus, object_store_memory_bytes=256 * 2**20))
                print(f"started a local Ray head with {args.head_cpus} CPUs in {time.monotonic() - t0:.1f} s; stopped at the end", file=sys.stderr)
            # The jobs write results under this temporary folder, so a remote --address must share this machine's filesystem.
            manager = JobManager(connect(address, settings=settings, start=False), settings=settings)
            rows = measure(args, plan, manager, work)
        finally:
            if started:
                stop_local_head(settings.home)
    return report(args, plan, rows)


if __name__ == "__main__":
    sys.exit(main())
