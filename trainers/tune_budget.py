"""`tune.iteration_budget`: stop a whole search once it has spent that many trial iterations.

A compute budget in the unit every scheduler spends: random search spends `num_samples x` the
iterations of a trial, PBT about the same, while ASHA and HyperBand stop most trials early and spend
an amount that depends on the order results arrive in. With a budget, a spec can sample more trials
than it can finish and let the scheduler decide where the iterations go.

What is spent: the iterations of earlier submissions of the run (rows of `history.jsonl` from other
sessions) plus the results Tune has taken in during this one (the stopper sees each). A trial writes
its history row just before it reports, so counting this session's rows instead would count results
still on their way to the driver, and stopping then drops them: with a budget of exactly the planned
`num_samples x` iterations, random search lost the last result of a trial it had trained in full
(in the tune bench, a seed's best accuracy read 0.9600 instead of 0.9638). Iterations in flight when
the budget is reached are past it; Tune drops their results.

Tune pickles the stopper with the experiment when the search starts; a resubmitted run unpickles it
with nothing read yet and reads the earlier sessions' rows at its first result.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune import Stopper

__all__ = ["IterationBudget"]


class IterationBudget(Stopper):
    """Tune stopper: `stop_all()` once `budget` iterations are spent (earlier sessions' plus this one's results)."""

    def __init__(self, history: Path, budget: int) -> None:
        self.history, self.budget = Path(history), budget
        self.earlier: int | None = None  # read at this session's first result
        self.taken = 0

    @property
    def spent(self) -> int:
        return (self.earlier or 0) + self.taken

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("done"):
            # A finished trial's closing result: Tune hands the stopper the trial's last result
            # again (marked done), not another iteration (counted, it cut the 8th trial of a
            # random search short by the 7 that had finished).
            return False
        if self.earlier is None:
            self.earlier = _earlier_sessions(self.history, trial_id)
        self.taken += 1
        return False  # the budget ends the search, not one trial

    def stop_all(self) -> bool:
        return self.spent >= self.budget


def _earlier_sessions(history: Path, trial_id: str) -> int:
    """Iteration rows of sessions other than the current one: the session of `trial_id`'s newest row,
    which it wrote just before reporting the result being taken in."""
    try:
        lines = history.read_text().splitlines()
    except FileNotFoundError:
        return 0
    rows = [r for r in map(_row, lines) if r is not None and "event" not in r]
    current = next((r.get("session") for r in reversed(rows) if r.get("trial_id") == trial_id), None)
    return sum(r.get("session") != current for r in rows)


def _row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None  # a row being written
    return row if isinstance(row, dict) else None

