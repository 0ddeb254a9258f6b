"""`tune.iteration_budget`: stop a whole search once its trials have reported that many iterations.

A compute budget in the unit every scheduler spends: random search spends `num_samples x` the
iterations of a trial, PBT about the same, while ASHA and HyperBand stop most trials early and spend
an amount that depends on the order results arrive in. With a budget, a spec can sample more trials
than it can finish and let the scheduler decide where the iterations go.

The count is `history.jsonl` (one row per reported iteration, written by the trial before it
reports), read from where the last read stopped. Tune pickles the stopper with the experiment when
the search starts; a resubmitted run unpickles it with nothing read yet, reads the whole history
(the iterations of the earlier submission included) and so keeps to the same budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune import Stopper

__all__ = ["IterationBudget", "count_iterations"]


class IterationBudget(Stopper):
    """Tune stopper: `stop_all()` once `history` holds `budget` iteration rows."""

    def __init__(self, history: Path, budget: int) -> None:
        self.history, self.budget = Path(history), budget
        self.spent, self._offset = 0, 0

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._read()
        return False  # the budget ends the search, not one trial

    def stop_all(self) -> bool:
        return self.spent >= self.budget

    def _read(self) -> None:
        try:
            with self.history.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a row being written is counted at the next read
        self._offset += len(complete)
        self.spent += count_iterations(complete.decode().splitlines())


def count_iterations(lines: list[str]) -> int:
    """Rows of `history.jsonl` that are reported iterations (not events such as "resumed")."""
    n = 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        n += isinstance(row, dict) and "event" not in row
    return n
