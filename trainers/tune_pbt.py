"""Ray Tune's PBT and PB2, asynchronous mode made to fit raytron's trials, which checkpoint every iteration.

Three changes to what Tune's asynchronous PBT does; synchronous PBT is left as Tune has it.

- A trial pauses to yield its slot only when another trial needs one. At each perturbation point
  Tune pauses the trial whenever any other trial is pending or paused, so that a population larger
  than the cluster takes turns. When the whole population runs at once the trial it yields to is
  only an exploit's recipient restarting, and every such pause stops a healthy trial and restarts it
  from its checkpoint for nothing: in the tune bench (8 trials of 0.25 CPU on 2 CPUs) it restarted
  trials 56 times beside 11 exploits and tripled the wall time between perturbations. With
  `yield_at_perturbation=False` (what `build_scheduler` passes when `population_fits`) a trial that
  is not exploited goes on.
- An exploit copies the donor's newest checkpoint. Tune's PBT hands over the checkpoint the donor
  saved at its own last perturbation point (its trainables may checkpoint only when asked), which
  in an asynchronous population can be many iterations old: in the bench a trial at iteration 21
  was sent back to a donor's iteration 15. raytron's trials report a checkpoint with every
  iteration, so the recipient starts from the donor as it is now, which is what PBT means by
  copying the better member.
- A trial's last iteration is never a perturbation point. Tune would exploit a trial on the result
  that ends it and restart it from the donor's checkpoint, to retrain the donor's last iterations
  and replace the trial's final result with a copy of the donor's.

A module of its own (imported only by `build_scheduler`) because Tune pickles the scheduler with the
experiment, and `Tuner.restore` must find these classes by name.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import PopulationBasedTraining as _TunePBT
from ray.tune.schedulers import TrialScheduler

__all__ = ["PopulationBasedTraining", "PB2"]  # noqa: F822 (PB2 is made by __getattr__)


class _Asynchronous:
    """Mixed in before Tune's scheduler: the three changes of the module docstring."""

    def __init__(self, *args: Any, yield_at_perturbation: bool = True, last_iteration: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.yield_at_perturbation = yield_at_perturbation
        self.last_iteration = last_iteration

    def on_trial_result(self, tune_controller, trial, result):
        if not self._synch and self.last_iteration is not None and result.get(self._time_attr, 0) >= self.last_iteration \
                and self._metric in result and trial in self._trial_state:
            # Its final score still ranks the others at their perturbation points.
            self._save_trial_state(self._trial_state[trial], result[self._time_attr], result, trial)
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        # Asynchronous PBT returns PAUSE only to yield (an exploited trial is paused by the exploit
        # itself and gets NOOP); synchronous PBT pauses to wait for the others, which must stay.
        if decision == TrialScheduler.PAUSE and not self._synch and not self.yield_at_perturbation:
            return TrialScheduler.CONTINUE
        return decision

    def _exploit(self, tune_controller, trial, trial_to_clone) -> None:
        donor = self._trial_state[trial_to_clone]
        newest = trial_to_clone.latest_checkpoint_result
        if not self._synch and newest is not None and newest.checkpoint is not None:
            reached = newest.metrics.get(self._time_attr)
            if reached is not None and reached > (donor.last_result or {}).get(self._time_attr, -1):
                # Tune's _exploit hands the recipient donor.last_checkpoint with donor.last_result
                # as its metrics, and takes its train time from donor.last_train_time.
                donor.last_checkpoint, donor.last_result, donor.last_train_time = newest.checkpoint, newest.metrics, reached
        super()._exploit(tune_controller, trial, trial_to_clone)


class PopulationBasedTraining(_Asynchronous, _TunePBT):
    """Tune's PBT with the changes of the module docstring."""


def __getattr__(name: str) -> type:
    # PB2 is built on first use: Tune's pb2 module imports pandas and scikit-learn (0.6 s more of the
    # driver's start), which a PBT run does not need. Unpickling a PB2 run gets here through getattr.
    if name == "PB2":
        from ray.tune.schedulers.pb2 import PB2 as _TunePB2

        cls = type("PB2", (_Asynchronous, _TunePB2), {"__module__": __name__, "__doc__": "Tune's PB2 with the changes of the module docstring."})
        globals()["PB2"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
