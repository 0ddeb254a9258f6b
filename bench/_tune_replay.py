"""The tune bench's ASHA-against-random-search comparison replayed on recorded learning curves.

A bench trial trains deterministically from its draw (every trial has the spec's seed), so a draw's
val_accuracy curve is the same in every search that samples it (checked: the first trials of a
random-wide and an ASHA job of the same seed report identical curves). This records the curves of
the draws Tune makes for each seed, in Tune's order, by running raytron's training loop outside
Tune, then replays both searches over them: `trials_at_once` slots, each iteration one unit of time
(+-20% jitter, so trials report in varying orders), each trial start after the first wave
`--start-cost` units, random-wide running its draws to the end and ASHA stopping them by Tune's own
rung rule (`ray.tune.schedulers.async_hyperband._Bracket`), both until the bench's iteration budget.

It answers what the bench cannot measure directly: how ASHA would compare if starting a trial cost
nothing, and whether a fixed target or random search's best is the target a scheduler can win on.

    python bench/_tune_replay.py record --seeds 10 --draws 320 --out curves.json   # ~1 s a draw on 2 cores
    python bench/_tune_replay.py replay curves.json --start-cost 0 1.2 2
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import tune as bench_tune

__all__ = ["record", "replay_search", "compare"]


def record(seeds: int, draws: int, out: Path) -> None:
    """Train the first `draws` samples of each seed (as Tune draws them) and write their curves to `out`."""
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    from raytron.cluster import parse_spec
    from raytron.cluster.storage import write_json_atomic
    from raytron.trainers.loop import new_loop
    from raytron.trainers.tune import build_param_space

    args = bench_tune.TuneArgs()
    plan = bench_tune.make_plan(args)
    curves: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="rt-tune-replay-") as tmp:
        digits = bench_tune._make_digits(Path(tmp), args.val_fraction)
        for seed in range(seeds):
            spec = parse_spec(bench_tune.tune_spec_body(args, plan, "random-wide", seed, digits, Path(tmp) / "runs"), source="replay")
            rng = _BackwardsCompatibleNumpyRng(seed)  # what BasicVariantGenerator(random_state=seed) draws from, in order
            space = {"config": build_param_space(spec)}
            curves[str(seed)] = []
            for i in range(draws):
                config = next(generate_variants(space, constant_grid_search=False, random_state=rng))[1]["config"]
                accuracy: list[float] = []

                def report(metrics: dict[str, Any], checkpoint_dir, into: list[float] = accuracy) -> None:
                    if checkpoint_dir is not None:  # an iteration ends with its checkpoint, val_accuracy in its metrics
                        into.append(metrics["val_accuracy"])

                new_loop(spec.trial_spec(config, f"s{seed}_{i:05d}"), rank=0, world_size=1, report=report).run()
                curves[str(seed)].append({"config": config, "val_accuracy": accuracy})
                print(f"seed {seed} draw {i}: best {max(accuracy):.3f}", file=sys.stderr, flush=True)
    write_json_atomic(out, {"max_iterations": plan.max_iterations, "trials_at_once": int(args.head_cpus // args.cpus_per_trial),
                            "budget": plan.wide_budget_iterations, "wide_trials": plan.num_samples * plan.waves,
                            "grace_period": args.grace_period, "reduction_factor": args.reduction_factor, "curves": curves})


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def replay_search(curves: list[list[float]], method: str, setting: dict[str, Any], *, start_cost: float, rng: random.Random) -> list[tuple[float, float]]:
    """(time, val_accuracy) of every iteration reported within the budget, in reporting order, time 0 at the first."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    max_t, slots, budget = setting["max_iterations"], setting["trials_at_once"], setting["budget"]
    draws = setting["wide_trials"] if method == "random-wide" else len(curves)
    bracket = _Bracket(setting["grace_period"], max_t, setting["reduction_factor"], 0) if method == "asha" else None
    events: list[tuple[float, int, int, int]] = []  # (time, slot, draw, iteration)
    started = 0

    def step() -> float:
        return 1.0 + 0.2 * (2 * rng.random() - 1)

    def start(slot: int, now: float, cost: float) -> None:
        nonlocal started
        if started < draws:
            heapq.heappush(events, (now + cost * step() + step(), slot, started, 1))
            started += 1

    for slot in range(slots):
        start(slot, 0.0, 0.0)  # the first wave: started together in every search, before the first result
    rows: list[tuple[float, float]] = []
    while events and len(rows) < budget:
        now, slot, draw, iteration = heapq.heappop(events)
        accuracy = curves[draw][iteration - 1]
        rows.append((now, accuracy))
        stop = iteration >= max_t
        if bracket is not None and bracket.on_result(_Trial(str(draw)), iteration, accuracy) == TrialScheduler.STOP:
            stop = True
        if stop:
            start(slot, now, start_cost)
        else:
            heapq.heappush(events, (now + step(), slot, draw, iteration + 1))
    return [(t - rows[0][0], a) for t, a in rows]


def _time_to(rows: list[tuple[float, float]], accuracy: float) -> float:
    return next((t for t, a in rows if a >= accuracy - 1e-12), math.inf)


def compare(recorded: dict[str, Any], start_cost: float, target: float, repeats: int = 20) -> dict[str, Any]:
    """Per seed, the median over `repeats` replays of random-wide's time / ASHA's, to `target` and to random-wide's best."""
    per_seed = {"fixed": [], "random_best": []}
    for draws in recorded["curves"].values():
        curves = [d["val_accuracy"] for d in draws]
        fixed, best = [], []
        for r in range(repeats):
            wide = replay_search(curves, "random-wide", recorded, start_cost=start_cost, rng=random.Random(r))
            asha = replay_search(curves, "asha", recorded, start_cost=start_cost, rng=random.Random(10_000 + r))
            goal = max(a for _, a in wide)
            for out, acc in ((fixed, target), (best, goal)):
                theirs, mine = _time_to(wide, acc), _time_to(asha, acc)
                out.append(1.0 if theirs == mine == math.inf else theirs / mine)
        per_seed["fixed"].append(statistics.median(fixed))
        per_seed["random_best"].append(statistics.median(best))
    return {k: {"median": statistics.median(v), "sooner": sum(x > 1 for x in v), "later": sum(x < 1 for x in v), "per_seed": [round(x, 3) for x in v]}
            for k, v in per_seed.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train the draws of each seed outside Tune and write their val_accuracy curves")
    rec.add_argument("--seeds", type=int, default=10)
    rec.add_argument("--draws", type=int, default=320, help="draws per seed (the bench's ASHA started up to ~320)")
    rec.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("replay", help="replay random-wide and ASHA over recorded curves")
    rep.add_argument("curves", type=Path)
    rep.add_argument("--start-cost", type=float, nargs="+", default=[0.0, 1.2], help="a trial start after the first wave, in iterations")
    rep.add_argument("--target-accuracy", type=float, default=0.95)
    rep.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.seeds, args.draws, args.out)
        return 0
    recorded = json.loads(args.curves.read_text())
    for cost in args.start_cost:
        result = compare(recorded, cost, args.target_accuracy, args.repeats)
        for name, r in result.items():
            label = f"to {args.target_accuracy}" if name == "fixed" else "to random-wide's best"
            print(f"start cost {cost:g}: ASHA time {label}: {r['median']:.3f}x random-wide's at the median over seeds, "
                  f"sooner on {r['sooner']}, later on {r['later']}; per seed {r['per_seed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
