"""Ray Tune's PBT and PB2, made to fit raytron's trials, which checkpoint every iteration.

Nine changes to what Tune's PBT does. Asynchronous PBT gets the first five and the last three;
synchronous PBT the fourth (no perturbation at a trial's last iteration), the sixth when the
population runs at once (processes kept at the barrier) and the last three, and is otherwise left
as Tune has it.

- A trial is ranked against the others at the same iteration (`compare="same_iteration"`, the
  spec's default). Tune ranks every trial by the score it had at its own last perturbation point,
  whatever iteration that was, so a trial that started earlier is compared on later iterations
  than the others: the population's processes start seconds apart (each imports torch; in the
  bench, 8 of them on 2 cores started up to 4.5 s apart, against 3.5 s for a whole 27-iteration
  trial), and a weak draw that started first, 12 iterations in at 0.50 accuracy, was the donor of
  three trials that had started after it, two at their first perturbation point (ray-project/ray#9301 asks
  for the same; Tune's answer is synchronous PBT, which waits at every barrier). Every result's
  score is kept by iteration (`record_score`); at a perturbation point the trials are ranked by
  their scores at the trial's iteration, or, with fewer than half the population that far, at the
  furthest iteration half of it has reached (`rank_at_same_iteration`), so a trial that leads is
  still judged, on the iteration the others can be compared with. A donor ranked on top there for
  the first time is given its newest checkpoint (`_arm_donors`), if it reported that checkpoint
  itself: just after an exploit a trial's newest checkpoint is its donor's (`_own_newest_checkpoint`).
  An exploit drops the recipient's scores, earned by weights it no longer has; it is ranked again
  from its next result on. A bottom trial that scored as well as the worst top one is not exploited
  (`quantiles_at_same_iteration`): converged trials tie on a small validation set, and in the
  asynchronous PBT test over half of the exploits copied weights no better than the recipient's,
  restarting it for nothing (16-28 exploits a run; 7-10 with ties left alone). In a 10-seed A/B on the bench, the
  runs that never reached 0.95 went from 3 to 0 and PBT's median best accuracy from 0.957 to 0.966.
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
- A trial's last iteration is never a perturbation point, in either mode. Tune would exploit a
  trial on the result that ends it and restart it from the donor's checkpoint, to retrain the
  donor's last iterations (asynchronous) or to train nothing at all (synchronous: every trial is at
  its last step), and record an exploit that changes no result. Nor is a trial that has
  reported its last iteration a donor (Tune counts it in the top quantile until it has ended):
  its recipient would restart at the last step with nothing left to train and keep its own older
  result as its last; another top trial still training is the donor instead.
- An exploited trial goes on in a process that is already running (with `reuse_actors`). Tune pauses the recipient
  by stopping its actor, and keeps a stopped actor for reuse only while a trial is staged to start;
  once the search algorithm has handed out every sample nothing is staged, so the actor is killed
  and a fresh one started for the same trial moments later: a new process, its imports and the
  first torch call, 1.2 to 2.5 s of a 0.25 s iteration on the bench's 2 cores. The recipient is
  staged before the pause, as Tune's controller stages a trial it is about to start, so its actor
  is kept, and the controller's next step restarts the trial on it or on another kept actor (reset
  with the new config, then restored from the donor's checkpoint). This reaches into private parts of Ray 2.60's
  `TuneController` (Ray is pinned); where they are missing, or `reuse_actors` is off, or the actor
  is not kept after all, Tune's own pause and restart stay.
- Synchronous PBT with the whole population running at once: a trial waiting at the barrier keeps
  its process. Tune pauses each trial as it reaches the perturbation point and, with nothing staged,
  kills its actor, so at every barrier all but one of the population's processes ended; when the
  barrier opened the trials restarted one after another on the one left while new processes
  started (and were killed again, logging "Exception ignored ... sigterm_handler"). In the PBT
  example (4 trials of 0.5 CPU on 2 CPUs, 8 iterations, a barrier every 2) the iterations after
  the first barrier took 5.6 s instead of 1.2-1.3 s (3 runs each). Each trial is staged as it pauses (as an exploited
  one is above), so its actor is kept, and when the barrier opens every trial restarts at once on
  a kept process (reset, then restored from its own checkpoint or the donor's).
- A resumed run goes on at its perturbation points. `Tuner.restore` brings the scheduler back as it
  was when the search started, so Tune's PBT perturbed every resumed trial at its first result,
  and synchronous PBT waited at a barrier no trial could pass: a resubmitted run hung. At its first
  result the scheduler puts the trials back where they had got to (`_continue_grid`), and drops
  the decisions Tune restored for saves that were in flight when the run stopped
  (`_forget_restored_decisions`).
- An exploited trial is not ended by the STOP Tune caches when it pauses a trial that is saving
  (`_drop_stop_cached_by_pause`). Once in 14 stop-and-resubmit runs a trial ended after a single
  iteration of the resubmitted run, TERMINATED with no error.
- With a `seed`, the scheduler's random choices (resample or perturb, by which factor, which donor
  of the top quantile; PB2's draws) come from generators of its own. Tune's draw from the driver
  process's `random` and numpy generators, which other code in the driver draws from as well:
  with both seeded at the driver's start, the synchronous PBT test still explored differently
  from run to run (an exploit's new learning rate was 0.018 in two runs and a resampled 0.011 in
  the third). Seeded, a synchronous population makes the same decisions on the same results.
  Asynchronous PBT still depends on the order the trials report in.

A module of its own (imported only by `build_scheduler`) because Tune pickles the scheduler with the
experiment, and `Tuner.restore` must find these classes by name.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
from ray.train._internal.session import _FutureTrainingResult
from ray.tune.schedulers import PopulationBasedTraining as _TunePBT
from ray.tune.schedulers import TrialScheduler

__all__ = ["PopulationBasedTraining", "PB2"]  # noqa: F822 (PB2 is made by __getattr__)


class _FitToRaytronTrials:
    """Mixed in before Tune's scheduler: the changes of the module docstring."""

    def __init__(self, *args: Any, yield_at_perturbation: bool = True, last_iteration: int | None = None, seed: int | None = None,
                 compare: str = "latest", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if compare not in ("same_iteration", "latest"):
            raise ValueError(f"compare={compare!r}: expected 'same_iteration' or 'latest'")
        self.yield_at_perturbation = yield_at_perturbation
        self.last_iteration = last_iteration
        self.compare = compare
        # trial_id -> {iteration: score} (scores signed so that higher is better), for `compare="same_iteration"`.
        self._scores: dict[str, dict[int, float]] = {}
        self._ranking_at: int | None = None  # set while Tune's on_trial_result ranks the population
        # The states of the scheduler's own `random` and numpy generators (None: the process's).
        self._draw_states = None if seed is None else (random.Random(seed).getstate(), np.random.RandomState(seed).get_state())

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile) -> None:
        args = (trial, tune_controller, upper_quantile, lower_quantile)
        if getattr(self, "_ranking_at", None) is not None:
            _arm_donors(self, trial, upper_quantile)
        # Every random choice of Tune's PBT and PB2 is made in here (the donor, then `_explore`).
        if getattr(self, "_draw_states", None) is None:
            return super()._checkpoint_or_exploit(*args)
        outside = random.getstate(), np.random.get_state()
        random.setstate(self._draw_states[0])
        np.random.set_state(self._draw_states[1])
        try:
            return super()._checkpoint_or_exploit(*args)
        finally:
            self._draw_states = random.getstate(), np.random.get_state()
            random.setstate(outside[0])
            np.random.set_state(outside[1])

    def on_trial_result(self, tune_controller, trial, result):
        if not getattr(self, "_session_started", False):  # this driver's first result (of a new or a resumed run)
            self._session_started = True
            _forget_restored_decisions(_controller(tune_controller))
            self._continue_grid(tune_controller)
        ranking_at = None
        if getattr(self, "compare", "latest") == "same_iteration" and not self._synch \
                and self._metric in result and self._time_attr in result:
            # Every result is kept (not only those at perturbation points) to rank others at its iteration.
            ranking_at = int(result[self._time_attr])
            record_score(self.__dict__.setdefault("_scores", {}), trial.trial_id, ranking_at, self._metric_op * result[self._metric])
        if self.last_iteration is not None and result.get(self._time_attr, 0) >= self.last_iteration \
                and self._metric in result and trial in self._trial_state:
            # The trial ends here. Its final score still ranks the others at their perturbation
            # points (asynchronous: they may be behind; synchronous: they all end at this one).
            self._save_trial_state(self._trial_state[trial], result[self._time_attr], result, trial)
            return TrialScheduler.CONTINUE
        self._ranking_at = ranking_at
        try:
            decision = super().on_trial_result(tune_controller, trial, result)
        finally:
            self._ranking_at = None
        # Asynchronous PBT returns PAUSE only to yield (an exploited trial is paused by the exploit
        # itself and gets NOOP); synchronous PBT pauses to wait for the others, which must stay.
        if decision == TrialScheduler.PAUSE and not self._synch and not self.yield_at_perturbation:
            return TrialScheduler.CONTINUE
        if decision == TrialScheduler.PAUSE and self._synch and not self.yield_at_perturbation and trial.status == trial.RUNNING:
            # Waiting at the barrier: staged, its stopped actor is kept for when the barrier opens.
            _stage(_controller(tune_controller), trial)
        return decision

    def _quantiles(self):
        at = getattr(self, "_ranking_at", None)
        if at is None:
            return super()._quantiles()
        live = {t.trial_id: t for t, state in self._trial_state.items() if not t.is_finished()}
        lower, upper = quantiles_at_same_iteration({i: self._scores.get(i, {}) for i in live}, at, quorum=max(2, math.ceil(len(live) / 2)),
                                                   fraction=self._quantile_fraction)
        return [live[i] for i in lower], [live[i] for i in upper]

    def _continue_grid(self, tune_controller) -> None:
        """At the session's first result: put resumed trials back among the perturbation points.

        Tune pickles the scheduler when the search starts, and `Tuner.restore` brings back that
        state: every trial looks as if it had never been perturbed. Tune's PBT then perturbs each
        resumed trial at its first result, off the grid of every `perturbation_interval`
        iterations, and synchronous PBT set its next barrier to the iteration the trials had
        reached and paused at, where none was ever started again (a resubmitted sync run hung).
        From where each trial had got to (its last result, restored with it):
        - asynchronous: each was last perturbed at the last grid point it reached;
        - synchronous: all meet at the first grid point after the furthest trial, since an
          interrupted population can be split around a barrier. A trial behind skips the one
          perturbation it was heading for.
        A new search (no trial has got anywhere) is left as it is.
        """
        interval = self._perturbation_interval
        reached = {t: int((t.last_result or {}).get(self._time_attr) or 0) for t in tune_controller.get_trials()
                   if t in self._trial_state and self._trial_state[t].last_result is None and not t.is_finished()}
        if not any(reached.values()):
            return
        barrier = (max(reached.values()) // interval + 1) * interval
        for trial, k in reached.items():
            state = self._trial_state[trial]
            state.last_perturbation_time = state.last_train_time = barrier - interval if self._synch else k // interval * interval
        if self._synch:
            self._next_perturbation_sync = barrier

    def choose_trial_to_run(self, tune_controller):
        trial = super().choose_trial_to_run(tune_controller)
        controller = _controller(tune_controller)
        if trial is not None and trial.status == trial.PAUSED and trial in (getattr(controller, "_staged_trials", None) or ()) \
                and trial not in controller._trial_to_actor and not controller._actor_cache.has_cached_object(trial.placement_group_factory):
            # Staged by `_exploit`, but its actor went to another trial: unstaged, it is staged
            # again with a new actor requested, as any paused trial.
            _unstage(controller, trial)
        return trial

    def _exploit(self, tune_controller, trial, trial_to_clone) -> None:
        if not self._synch and self.last_iteration is not None and self._reached(trial_to_clone) >= self.last_iteration:
            # The donor has reported its last iteration and is about to end (Tune leaves a trial out
            # of the quantiles only once it has ended): the recipient would restart at the last step
            # with nothing left to train, never report again, and end a copy of the donor with its
            # own older result as its last. Another top trial that is still training is the donor.
            others = [t for t in self._quantiles()[1]
                      if t is not trial and _own_newest_checkpoint(t) is not None and self._reached(t) < self.last_iteration]
            if not others:
                return  # no exploit this time; the trial goes on as it is
            trial_to_clone = random.choice(others)
            other = self._trial_state[trial_to_clone]
            if isinstance(other.last_checkpoint, _FutureTrainingResult):
                # A save Tune asked of it at its perturbation point; Tune resolves only its own pick's.
                saved = other.last_checkpoint.resolve()
                other.last_checkpoint = saved.checkpoint if saved else None
                other.last_result = saved.metrics if saved else other.last_result
        donor = self._trial_state[trial_to_clone]
        newest = _own_newest_checkpoint(trial_to_clone)
        if not self._synch and newest is not None:
            reached = newest.metrics.get(self._time_attr)
            if donor.last_checkpoint is None or (reached is not None and reached > (donor.last_result or {}).get(self._time_attr, -1)):
                # Tune's _exploit hands the recipient donor.last_checkpoint with donor.last_result
                # as its metrics, and takes its train time from donor.last_train_time.
                donor.last_checkpoint, donor.last_result = newest.checkpoint, newest.metrics
                donor.last_train_time = newest.metrics.get(self._time_attr, donor.last_train_time)
        if donor.last_checkpoint is None:
            return  # nothing to clone: Tune would restart the recipient from no checkpoint at all
        controller = _controller(tune_controller)
        staged = (not self._synch or not self.yield_at_perturbation) and trial.status == trial.RUNNING and _stage(controller, trial)
        cached_before = controller._actor_cache.num_cached_objects if staged else 0
        super()._exploit(tune_controller, trial, trial_to_clone)  # pauses the trial: a staged trial's actor is cached
        # Its scores so far were earned by weights it no longer has: it is ranked again (and can be a
        # donor again) once it reports from the donor's. Until then its newest checkpoint is the donor's.
        getattr(self, "_scores", {}).pop(trial.trial_id, None)
        if staged and controller._actor_cache.num_cached_objects <= cached_before:
            _unstage(controller, trial)  # the actor was not kept after all: Tune starts a new one as usual
        _drop_stop_cached_by_pause(controller, trial)

    def _reached(self, trial) -> int:
        """The last iteration `trial` reported, as the scheduler saw it or as its newest checkpoint says."""
        newest = _own_newest_checkpoint(trial)
        state = self._trial_state.get(trial)
        return max((newest.metrics.get(self._time_attr, 0) if newest is not None else 0),
                   ((state.last_result or {}).get(self._time_attr, 0) if state is not None else 0))


def record_score(scores: dict[str, dict[int, float]], trial_id: str, iteration: int, score: float) -> None:
    """Note `trial_id`'s score at `iteration`, forgetting any it had at later iterations.

    A trial that reports an iteration it had passed was sent back to a donor's checkpoint by an
    exploit: the scores it had further on belonged to the weights it no longer has.
    """
    own = scores.setdefault(trial_id, {})
    for later in [i for i in own if i >= iteration]:
        del own[later]
    own[iteration] = score


def rank_at_same_iteration(scores: dict[str, dict[int, float]], iteration: int, quorum: int) -> list[str]:
    """Trials from worst to best by their scores at one iteration (higher score is better).

    The iteration is `iteration`, or, when fewer than `quorum` trials have got that far, the
    furthest iteration `quorum` of them have reached. Trials that have not reached it are left
    out. A trial that passed it without reporting it (it jumped ahead by exploiting a donor) is
    ranked by its first score after it. Empty when fewer than `quorum` trials have any score.
    """
    return [trial_id for _, trial_id in _ranked_scores(scores, iteration, quorum)]


def _ranked_scores(scores: dict[str, dict[int, float]], iteration: int, quorum: int) -> list[tuple[float, str]]:
    """(score, trial) from worst to best, as `rank_at_same_iteration` ranks them."""
    reached = sorted((max(own) for own in scores.values() if own), reverse=True)
    if quorum < 1 or len(reached) < quorum:
        return []
    at = min(iteration, reached[quorum - 1])
    ranked = [(own[min(i for i in own if i >= at)], trial_id) for trial_id, own in scores.items() if own and max(own) >= at]
    return sorted(ranked, key=lambda pair: pair[0])


def quantiles_at_same_iteration(scores: dict[str, dict[int, float]], iteration: int, quorum: int,
                                fraction: float) -> tuple[list[str], list[str]]:
    """The bottom and top `fraction` of the trials ranked by `rank_at_same_iteration` (each at most half).

    A trial of the bottom scoring as well as the worst of the top is left out of the bottom: an
    exploit then copies weights no better than its own and restarts it for nothing. Validation
    accuracy on a small set comes in steps of 1/size, and converged trials tie: in the asynchronous
    PBT test (4 trials, every iteration a perturbation point) over half of the exploits went to
    trials that had scored at least what their donor had.
    """
    ranked = _ranked_scores(scores, iteration, quorum)
    if len(ranked) <= 1:
        return [], []
    n = min(math.ceil(len(ranked) * fraction), len(ranked) // 2)
    upper = ranked[len(ranked) - n:]
    floor = upper[0][0]
    return [i for score, i in ranked[:n] if score < floor], [i for _, i in upper]


def _arm_donors(scheduler, trial, upper_quantile) -> None:
    """Give each trial of the top quantile a checkpoint to be cloned from, when it has none yet.

    Tune's `_checkpoint_or_exploit` clones a donor only through the checkpoint it noted when the
    donor was last in the top quantile at one of its own perturbation points. Ranked at the same
    iteration, a donor may be top there for the first time: its newest reported checkpoint (every
    raytron iteration reports one) is what `_exploit` hands over anyway.
    """
    for donor in upper_quantile:
        state = scheduler._trial_state.get(donor)
        newest = _own_newest_checkpoint(donor)
        if donor is trial or state is None or newest is None:
            continue
        if state.last_checkpoint is None:
            state.last_checkpoint, state.last_result = newest.checkpoint, newest.metrics
            state.last_train_time = newest.metrics.get(scheduler._time_attr, state.last_train_time)
        if state.last_score is None and scheduler._metric in (state.last_result or {}):
            # Tune's `_exploit` logs the donor's score (and fails on None).
            state.last_score = scheduler._metric_op * state.last_result[scheduler._metric]


def _own_newest_checkpoint(trial):
    """The newest checkpoint `trial` reported itself (as a Tune `_TrainingResult`), or None.

    An exploit sets the recipient's newest checkpoint to the donor's, and it stays the newest until
    the recipient's next checkpoint is registered, which comes a moment after its next result. Ranked
    on top in that moment, the recipient handed its donor's checkpoint on as its own: an exploit
    then sent the first donor back to its own older checkpoint, restarting it for nothing (seen in
    CI at iteration 1, and in 1 of 8 runs of the asynchronous PBT test at iteration 7). The metrics
    of a checkpoint name the trial that reported it (Tune fills in `trial_id`).
    """
    newest = trial.latest_checkpoint_result
    if newest is None or newest.checkpoint is None or newest.metrics.get("trial_id", trial.trial_id) != trial.trial_id:
        return None
    return newest


def _controller(tune_controller):
    """The `TuneController` itself: schedulers get it behind a wrapper that warns about private attributes."""
    return getattr(tune_controller, "_tune_controller", tune_controller)


def _drop_stop_cached_by_pause(controller, trial) -> None:
    """Forget the STOP that Tune's controller caches when PBT pauses a trial whose save is in flight.

    Tune's `_exploit` pauses a running recipient with `pause_trial(trial, should_checkpoint=False)`,
    which stops its actor through `_schedule_trial_stop`. While a save is in flight (in synchronous
    PBT: the recipient reached the barrier a moment before the last trial, and its pause is still
    saving) that caches a STOP to run once the save is processed, then marks the trial PAUSED. The
    save is abandoned and the STOP stays (ray-project/ray#57906; Ray 2.60 has no fix): by Tune's
    code it runs at the trial's next processed save, after the trial has restarted from the donor,
    and ends it as TERMINATED. Tune also writes cached decisions into its experiment state; seen
    there, after a stop one iteration past an exploit, and run at the trial's first save of the
    resubmitted run.
    """
    cached = getattr(controller, "_cached_trial_decisions", None)
    if isinstance(cached, dict) and trial.status == trial.PAUSED and cached.get(trial.trial_id) == TrialScheduler.STOP:
        del cached[trial.trial_id]


def _forget_restored_decisions(controller) -> None:
    """Drop the decisions Tune's controller cached for saves in flight, at a session's first result.

    No save of this session can be in flight before its first result, so a cached decision (to run
    "once the save is processed") came back with the experiment state and waits for the save of a
    process that is gone. Tune would run it at the trial's first save now instead: a STOP left by
    the bug `_drop_stop_cached_by_pause` handles ended a resumed trial after one iteration,
    TERMINATED with no error (seen once in 14 stop-and-resubmit runs).
    """
    cached = getattr(controller, "_cached_trial_decisions", None)
    if isinstance(cached, dict):
        cached.clear()


def _stage(controller, trial) -> bool:
    """Stage `trial` as `TuneController._maybe_add_actors` stages a trial it is about to start.

    A staged trial's stopped actor is cached (`_maybe_cache_trial_actor`), and the raised cache
    limit keeps `_cleanup_cached_actors` from flushing it. At its next step the controller picks
    the paused trial (`choose_trial_to_run`), finds it staged and starts it on a cached actor
    (`_maybe_reuse_cached_actor`: reset with the new config, then restored from the donor's
    checkpoint), which unstages it and lowers the limit again (`_unstage_trial_with_resources`).
    False where this controller lacks those parts of Ray 2.60's, or does not reuse actors.
    """
    staged, cache = getattr(controller, "_staged_trials", None), getattr(controller, "_actor_cache", None)
    if not getattr(controller, "_reuse_actors", False) or not isinstance(staged, set) or trial in staged \
            or not all(hasattr(cache, name) for name in ("increase_max", "decrease_max", "num_cached_objects")):
        return False
    staged.add(trial)
    cache.increase_max(trial.placement_group_factory)
    return True


def _unstage(controller, trial) -> None:
    controller._staged_trials.discard(trial)
    controller._actor_cache.decrease_max(trial.placement_group_factory)


class PopulationBasedTraining(_FitToRaytronTrials, _TunePBT):
    """Tune's PBT with the changes of the module docstring."""


def __getattr__(name: str) -> type:
    # PB2 is built on first use: Tune's pb2 module imports pandas and scikit-learn (0.6 s more of the
    # driver's start), which a PBT run does not need. Unpickling a PB2 run gets here through getattr.
    if name == "PB2":
        from ray.tune.schedulers.pb2 import PB2 as _TunePB2

        cls = type("PB2", (_FitToRaytronTrials, _TunePB2), {"__module__": __name__, "__doc__": "Tune's PB2 with the changes of the module docstring."})
        globals()["PB2"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
