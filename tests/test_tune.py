"""Hyperparameter search (`kind: tune`) with real Ray Tune trials training on real digits shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import wait_for
from raytron.cluster import SpecError, parse_spec
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards
from raytron.trainers.recipes import MLP
from raytron.trainers.steps import apply_optimizer_settings, lr_schedule
from raytron.trainers.tune_budget import IterationBudget
from raytron.trainers.tune_spec import TuneJobSpec
from raytron.trainers.tune_trial import state_sha256


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("digits")
    build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=out, shard_size_bytes=100_000, val_fraction=0.1, progress=False))
    return str(out)


def spec_dict(manifest: str = "/data", tune: dict | None = None, **train) -> dict:
    body = {"model": {"recipe": "mlp", "args": {"hidden": 32}}, "data": {"manifest": manifest, "shuffle_buffer": 100},
            "optimizer": {"name": "sgd", "lr": 0.05}, "steps": 60, "global_batch_size": 64, "log_every_steps": 10}
    body.update(train)
    section = {"search_space": {"optimizer.lr": {"loguniform": [1e-4, 0.5]}}, "num_samples": 4, "metric": "val_accuracy", "mode": "max",
               "iteration_steps": 20, "scheduler": {"name": "pbt", "perturbation_interval": 1}}
    section.update(tune or {})
    return {"name": "tn", "kind": "tune", "resources": {"num_workers": 1, "cpus_per_worker": 1}, "train": body, "tune": section}


def write(tmp_path: Path, data: dict, name: str) -> Path:
    data = {**data, "name": name, "storage": {"path": str(tmp_path / "runs")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def results(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "runs" / name / "results.json").read_text())


# ----------------------------------------------------------------------------- fast: validation


@pytest.mark.parametrize("tune,path,words", [
    ({"search_space": {"optimizer.lr": {"normal": [0, 1]}}}, "tune.search_space.optimizer.lr", "one distribution"),
    ({"search_space": {"optimizer.lr": {"loguniform": [0, 0.1]}}}, "tune.search_space.optimizer.lr", "0 < low < high"),
    ({"search_space": {"optimizer.lr": {"uniform": [0.5, 0.1]}}}, "tune.search_space.optimizer.lr", "low < high"),
    ({"search_space": {"optimizer.lr": {"loguniform": [1e-4, 100]}}}, "tune.search_space.optimizer.lr", "reaches 100"),
    ({"search_space": {"optimizer.lrr": {"uniform": [0.1, 0.2]}}}, "tune.search_space.optimizer.lrr", "not a field"),
    ({"search_space": {"train.optimizer.lr": {"uniform": [0.1, 0.2]}}}, "tune.search_space.train.optimizer.lr", "inside `train:` already"),
    ({"search_space": {"optimizer.name": {"choice": ["adamw", "lamb"]}}}, "tune.search_space.optimizer.name", "'lamb'"),
    ({"search_space": {"global_batch_size": {"randint": [1.5, 8]}}}, "tune.search_space.global_batch_size", "integers"),
    ({"search_space": {"optimizer.lr": {"grid": []}}}, "tune.search_space.optimizer.lr", "non-empty list"),
    ({"metric": "accuracy"}, "tune.metric", "one of loss, val_loss, val_accuracy"),
    ({"mode": "min"}, "tune.mode", "worst val_accuracy"),
    ({"num_samples": 1}, "tune.num_samples", "population of at least 2"),
    ({"scheduler": {"name": "pbt", "grace_period": 2}}, "tune.scheduler.grace_period", "does not apply to scheduler `pbt`"),
    ({"scheduler": {"name": "hyperband", "grace_period": 2}}, "tune.scheduler.grace_period", "read by asha"),
    ({"scheduler": {"name": "asha", "max_t": 3, "grace_period": 5}}, "tune.scheduler.grace_period", "at most `max_t` (3)"),
    ({"scheduler": {"name": "asha", "reduction_factor": 1}}, "tune.scheduler.reduction_factor", "greater than 1"),
    ({"scheduler": {"name": "pbt", "quantile_fraction": 0.7}}, "tune.scheduler.quantile_fraction", "0.5"),
    ({"scheduler": {"name": "pb2", "hyperparam_mutations": {"optimizer.lr": {"choice": [0.1, 0.2]}}}},
     "tune.scheduler.hyperparam_mutations.optimizer.lr", "continuous bounds"),
    ({"scheduler": {"name": "sgd"}}, "tune.scheduler.name", "'pbt'"),
    ({"max_concurrent_trials": 2}, "tune.max_concurrent_trials", "whole population (4 trials)"),
    ({"iteration_budget": 0}, "tune.iteration_budget", "greater than or equal to 1"),
    ({"scheduler": {"name": "asha", "compare": "latest"}}, "tune.scheduler.compare", "does not apply to scheduler `asha`"),
    ({"scheduler": {"name": "pbt", "compare": "oldest"}}, "tune.scheduler.compare", "'same_iteration'"),
])
def test_invalid_tune_specs_name_the_field(tune, path, words):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(tune=tune))
    assert path in info.value.paths, str(info.value)
    assert words in str(info.value), str(info.value)


def test_nested_search_space_reads_as_dotted_paths_and_errors_print_their_brackets(tmp_path):
    spec = parse_spec(spec_dict(tune={"search_space": {"optimizer": {"lr": {"loguniform": [1e-4, 0.5]}, "momentum": {"uniform": [0.0, 0.9]}}}}))
    assert list(spec.tune.search_space) == ["optimizer.lr", "optimizer.momentum"]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec_dict()))
    from helpers import RAYTRON

    import subprocess

    out = subprocess.run([RAYTRON, "submit", str(path), "--set", 'tune.search_space.optimizer.lr={"loguniform": [0.001, 50]}'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "`tune.search_space.optimizer.lr` ([0.001, 50]): loguniform reaches 50" in " ".join(out.stderr.split()), out.stderr


def test_asha_without_max_t_needs_steps():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(tune={"scheduler": {"name": "asha"}}, steps=None, epochs=3))
    assert "tune.scheduler.max_t" in info.value.paths and "set `max_t`" in str(info.value)


def test_trial_spec_applies_the_sampled_values_and_iterates_in_checkpoints():
    spec = parse_spec(spec_dict(tune={"search_space": {"optimizer.lr": {"loguniform": [1e-4, 0.5]}, "model.args.hidden": {"choice": [16, 64]}}}))
    assert isinstance(spec, TuneJobSpec)
    trial = spec.trial_spec({"optimizer.lr": 0.0123, "model.args.hidden": 64}, "ab12c_00003")
    assert trial.train.optimizer.lr == 0.0123 and trial.train.model.args["hidden"] == 64
    assert trial.train.checkpoint.every_steps == 20 and trial.train.eval_every_steps == 20
    assert trial.name == "tn-ab12c-00003" and trial.run_dir == spec.run_dir / "trials" / "tn-ab12c-00003"
    assert spec.max_iterations() == 3


def test_a_donor_checkpoint_handed_over_again_after_a_resubmission_is_no_second_exploit(tmp_path):
    """A run stopped soon after an exploit resumes the recipient from the donor's checkpoint again (seen: exploits 2, 4, 4, 6).
    Within one session the same donor checkpoint can be exploited twice, and both are exploits."""
    from raytron.trainers.tune_trial import EXPLOITS_FILE, HISTORY_FILE, TRIAL_FILE, _install

    spec = parse_spec({**spec_dict(), "storage": {"path": str(tmp_path / "runs")}})
    donor = tmp_path / "donor" / "checkpoint_000001"
    donor.mkdir(parents=True)
    (donor / "meta.json").write_text(json.dumps({"step": 40}))
    (donor / TRIAL_FILE).write_text(json.dumps({"trial_id": "ab12c_00001", "config": {"optimizer.lr": 0.01}}))
    ckpt_root = tmp_path / "recipient" / "checkpoints"
    exploit, step = _install(donor, ckpt_root, spec, {"optimizer.lr": 0.012}, "ab12c_00000", "first")
    assert step == 40 and exploit["donor"] == "ab12c_00001" and exploit["new"] == {"optimizer.lr": 0.012}
    # Before the exploit is recorded (the trial records it once the weights check out) it is still one.
    assert _install(donor, ckpt_root, spec, {"optimizer.lr": 0.012}, "ab12c_00000", "first")[0] is not None
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / EXPLOITS_FILE).write_text(json.dumps({**exploit, "weights_match": True}) + "\n")
    # The recipient trains on from it in the first session, then Tune loses that checkpoint with the stop.
    (spec.run_dir / HISTORY_FILE).write_text(json.dumps({"trial_id": "ab12c_00000", "iteration": 3, "step": 60, "session": "first"}) + "\n")
    (ckpt_root / "step-00000060").mkdir()
    again, step = _install(donor, ckpt_root, spec, {"optimizer.lr": 0.012}, "ab12c_00000", "second")
    assert again is None and step == 40 and [d.name for d in ckpt_root.iterdir()] == ["step-00000040"]
    assert _install(donor, ckpt_root, spec, {"optimizer.lr": 0.012}, "ab12c_00002", "second")[0]["recipient"] == "ab12c_00002"
    # Still in the first session: its result at iteration 3 ranked low, the donor has not reported
    # since, and the same checkpoint is exploited again, with newly perturbed values.
    twice, _ = _install(donor, ckpt_root, spec, {"optimizer.lr": 0.0096}, "ab12c_00000", "first")
    assert twice is not None and twice["donor_checkpoint"] == exploit["donor_checkpoint"] and twice["new"] == {"optimizer.lr": 0.0096}
    # Likewise in the second session once the recipient has reported there.
    with (spec.run_dir / HISTORY_FILE).open("a") as f:
        f.write(json.dumps({"trial_id": "ab12c_00000", "iteration": 3, "step": 60, "session": "second"}) + "\n")
    assert _install(donor, ckpt_root, spec, {"optimizer.lr": 0.0096}, "ab12c_00000", "second")[0] is not None


def test_a_resumed_optimizer_takes_the_specs_hyperparameters():
    """What a PBT exploit relies on: the donor's optimizer state, the recipient's (new) lr and momentum."""
    model = torch.nn.Linear(4, 2)
    spec = parse_spec(spec_dict(schedule={"name": "cosine", "warmup_steps": 2}))
    donor_t = spec.train.model_copy(update={"optimizer": spec.train.optimizer.model_copy(update={"lr": 0.2, "momentum": 0.5})})
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(donor_t, 60))
    for _ in range(5):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    new_t = spec.train.model_copy(update={"optimizer": spec.train.optimizer.model_copy(update={"lr": 0.01, "momentum": 0.9})})
    opt2 = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lr_schedule(new_t, 60))
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] != pytest.approx(0.01 * lr_schedule(new_t, 60)(5))  # the donor's, before the fix-up
    apply_optimizer_settings(new_t, opt2, sched2)
    expected = 0.01 * lr_schedule(new_t, 60)(5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected) and sched2.get_last_lr() == [pytest.approx(expected)]
    assert opt2.param_groups[0]["momentum"] == 0.9
    assert torch.equal(opt2.state[model.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])  # the state is the donor's
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01 * lr_schedule(new_t, 60)(6))


def test_asynchronous_pbt_ranks_trials_at_the_same_iteration():
    """A trial that started first is not ranked on its later iterations against the others' first ones."""
    from raytron.trainers.tune_pbt import quantiles_at_same_iteration, rank_at_same_iteration, record_score

    scores: dict[str, dict[int, float]] = {}
    for i in range(1, 13):  # the first trial to start: a weak draw, 12 iterations in
        record_score(scores, "early", i, 0.04 * i)
    for name, rate in (("a", 0.2), ("b", 0.15), ("c", 0.1)):  # started later, learning faster
        for i in range(1, 4):
            record_score(scores, name, i, rate * i)
    # Tune's ranking by each trial's latest score puts "early" (0.48) on top of a, b, c (0.6, 0.45, 0.3).
    # At the same iteration (3, the furthest that 2 of 4 trials have reached) it is the worst.
    assert rank_at_same_iteration(scores, 12, quorum=2) == ["early", "c", "b", "a"]
    # Ranked at c's own perturbation point (iteration 3) with everyone there: the same order.
    assert rank_at_same_iteration(scores, 3, quorum=2) == ["early", "c", "b", "a"]
    # Too few trials have reported anything: no ranking, so no exploit.
    assert rank_at_same_iteration({"a": {1: 0.5}, "b": {}}, 1, quorum=2) == []
    # A trial behind the ranking iteration is left out; one that jumped past it (an exploit) is
    # ranked by its first score after it.
    assert rank_at_same_iteration({"a": {1: 0.5, 2: 0.6}, "b": {1: 0.4}, "j": {1: 0.1, 5: 0.9}}, 2, quorum=2) == ["a", "j"]
    # Sent back to a donor's earlier iteration, a trial's scores past it belonged to its old weights.
    record_score(scores, "early", 4, 0.7)
    assert sorted(scores["early"]) == [1, 2, 3, 4] and scores["early"][4] == 0.7
    # The quantiles: a quarter of 4 trials each; a bottom trial that ties with the top one is not
    # exploited (it would copy weights no better than its own), one below it is.
    tied = {"a": {1: 0.95}, "b": {1: 0.95}, "c": {1: 0.95}, "d": {1: 0.95}}
    assert quantiles_at_same_iteration(tied, 1, quorum=2, fraction=0.25) == ([], ["d"])
    assert quantiles_at_same_iteration({**tied, "a": {1: 0.8}}, 1, quorum=2, fraction=0.25) == (["a"], ["d"])
    assert quantiles_at_same_iteration({**tied, "a": {1: 0.8}}, 1, quorum=2, fraction=0.5) == (["a"], ["c", "d"])  # b ties with c
    assert quantiles_at_same_iteration({"a": {1: 0.5}}, 1, quorum=1, fraction=0.5) == ([], [])  # one trial: no one to copy


def test_a_donor_first_ranked_on_top_at_the_same_iteration_is_given_its_newest_checkpoint_and_score(tmp_path):
    """Tune clones a donor only through the checkpoint (and logs the score) noted at the donor's own
    perturbation points; a trial on top of a same-iteration ranking may have none yet (seen: an
    exploit failed formatting the donor's score None, and the search with it)."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

    from raytron.trainers.tune import build_scheduler
    from raytron.trainers.tune_pbt import _arm_donors

    pbt = build_scheduler(parse_spec(spec_dict(tune={"scheduler": {"name": "pbt"}})))
    pbt.set_search_properties("val_accuracy", "max")

    class Controller:  # what on_trial_add reads of Tune's controller
        search_alg = None

    recipient, donor, fresh = (Trial("__fake", config={}, trial_id=name, stub=True) for name in ("recipient", "donor", "fresh"))
    for trial in (recipient, donor, fresh):
        pbt.on_trial_add(Controller(), trial)
    newest = Checkpoint.from_directory(str(tmp_path))
    donor.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(checkpoint=newest, metrics={"val_accuracy": 0.8, "training_iteration": 5})
    _arm_donors(pbt, recipient, [donor, fresh])
    state = pbt._trial_state[donor]
    assert (state.last_checkpoint.path, state.last_score, state.last_train_time) == (newest.path, 0.8, 5)
    assert pbt._trial_state[fresh].last_checkpoint is None  # nothing reported yet: no donor, Tune skips the exploit


def test_an_exploited_trial_is_no_donor_until_it_reports_from_the_weights_it_was_given(tmp_path):
    """Right after an exploit the recipient's newest checkpoint is its donor's, until its own next one
    is registered (a moment after its next result). Handed on as the recipient's own, it sent a trial
    back to its own checkpoint (seen once in CI: a trial "resumed" at iteration 1 of an asynchronous
    run, where no trial ever pauses). Nor are the recipient's old scores, earned by weights it no
    longer has, what it is ranked by."""
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

    from raytron.trainers.tune import build_scheduler
    from raytron.trainers.tune_pbt import _arm_donors

    pbt = build_scheduler(parse_spec(spec_dict(tune={"scheduler": {"name": "pbt", "quantile_fraction": 0.5}})))
    pbt.set_search_properties("val_accuracy", "max")

    class Controller:  # the two things `_exploit` asks of Tune's controller here
        search_alg = None

        def pause_trial(self, trial, should_checkpoint=True):
            trial.set_status(Trial.PAUSED)

    class Storage(StorageContext):  # where Tune logs each exploit's policy, without a Ray session's temp dir
        experiment_driver_staging_path = str(tmp_path)

    storage = Storage(storage_path=str(tmp_path / "runs"), experiment_dir_name="pbt")
    donor, recipient, third = (Trial("__fake", config={"optimizer.lr": 0.05}, trial_id=name, stub=True, storage=storage) for name in ("donor", "recipient", "third"))
    for trial, score in ((donor, 0.9), (recipient, 0.2), (third, 0.5)):
        pbt.on_trial_add(Controller(), trial)
        trial.set_status(Trial.RUNNING)
        (tmp_path / trial.trial_id).mkdir()
        metrics = {"val_accuracy": score, "training_iteration": 1, "trial_id": trial.trial_id}
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(checkpoint=Checkpoint.from_directory(str(tmp_path / trial.trial_id)), metrics=metrics)
        state = pbt._trial_state[trial]
        state.last_result, state.last_score, state.last_train_time = metrics, score, 1
        pbt._scores[trial.trial_id] = {1: score}
    pbt._trial_state[donor].last_checkpoint = donor.checkpoint

    pbt._exploit(Controller(), recipient, donor)
    assert recipient.status == Trial.PAUSED and recipient.checkpoint.path == str(tmp_path / "donor")
    assert "recipient" not in pbt._scores  # ranked again once it reports
    # Ranked on top before its next checkpoint is registered, it has nothing of its own to hand on.
    _arm_donors(pbt, third, [recipient])
    assert pbt._trial_state[recipient].last_checkpoint is None
    # Once its own checkpoint is registered, it is a donor like any other.
    (tmp_path / "recipient-2").mkdir()
    recipient.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
        checkpoint=Checkpoint.from_directory(str(tmp_path / "recipient-2")), metrics={"val_accuracy": 0.95, "training_iteration": 2, "trial_id": "recipient"})
    _arm_donors(pbt, third, [recipient])
    assert pbt._trial_state[recipient].last_checkpoint.path == str(tmp_path / "recipient-2")


def test_pbt_perturbations_stay_inside_the_search_space():
    """Ray's PBT scales a value by 0.8/1.2 whatever its bounds; momentum 0.95 * 1.2 would fail the trial."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from raytron.trainers.tune import build_scheduler

    spec = parse_spec(spec_dict(tune={"search_space": {"optimizer.lr": {"loguniform": [1e-4, 0.5]}, "optimizer.momentum": {"uniform": [0.0, 0.95]},
                                                       "global_batch_size": {"randint": [16, 65]}, "optimizer.name": {"choice": ["sgd", "adamw"]}},
                                      "scheduler": {"name": "pbt", "resample_probability": 0.0}}))
    pbt = build_scheduler(spec)
    random.seed(0)
    config = {"optimizer.lr": 0.45, "optimizer.momentum": 0.93, "global_batch_size": 60, "optimizer.name": "sgd"}
    seen = set()
    for _ in range(200):
        config, _ = _explore(config, pbt._hyperparam_mutations, pbt._resample_probability, pbt._perturbation_factors, pbt._custom_explore_fn)
        assert 1e-4 <= config["optimizer.lr"] <= 0.5 and 0.0 <= config["optimizer.momentum"] <= 0.95, config
        assert isinstance(config["global_batch_size"], int) and 16 <= config["global_batch_size"] <= 64, config
        seen.add(config["optimizer.name"])
        spec.trial_spec(config, "ab12c_00000")  # every explored config is a valid train spec
    assert seen == {"sgd", "adamw"}  # a choice moves along its list, never multiplied


def test_the_iteration_budget_counts_earlier_sessions_rows_and_the_results_tune_took_in(tmp_path):
    history = tmp_path / "history.jsonl"

    def write(*rows, partial=""):
        with history.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows) + partial)

    budget = IterationBudget(history, 4)
    # A trial writes its row, then reports: rows of results not yet taken in are on their way.
    write({"trial_id": "a", "iteration": 1, "session": "s1"}, {"trial_id": "b", "iteration": 1, "session": "s1"},
          {"trial_id": "c", "iteration": 1, "session": "s1"}, partial='{"trial_id": "d", "itera')
    assert budget("a", {}) is False and budget.spent == 1 and not budget.stop_all()
    budget("b", {})
    budget("a", {"done": True})  # a finished trial's last result, handed over again: no iteration
    budget("c", {})
    assert budget.spent == 3 and not budget.stop_all()
    with history.open("a") as f:
        f.write('tion": 1, "session": "s1"}\n')
    write({"trial_id": "a", "iteration": 2, "session": "s1"}, {"trial_id": "b", "iteration": 2, "session": "s1"})
    budget("d", {})  # the 4th result taken in: a's and b's second iterations are past the budget, and dropped
    assert budget.spent == 4 and budget.stop_all()
    # A resubmitted run's stopper starts with nothing read: the earlier session's 6 rows are spent
    # (all were trained), and a's resumed iteration (an event row) is not an iteration.
    write({"trial_id": "a", "event": "resumed", "iteration": 2, "session": "s2"}, {"trial_id": "a", "iteration": 3, "session": "s2"},
          {"trial_id": "c", "iteration": 2, "session": "s2"})
    again = IterationBudget(history, 8)
    again("a", {})
    assert again.spent == 7 and not again.stop_all()
    again("c", {})
    assert again.spent == 8 and again.stop_all()


def test_results_end_each_trial_at_its_last_registered_checkpoint(tmp_path):
    # The race an iteration budget opens: Tune took in trial a's step-40 result, then stopped the
    # trial before its checkpoint save resolved. Results must not show a step whose weights are gone,
    # and must not lose a trial whose latest checkpoint Tune points at another trial's.
    from ray.tune import Checkpoint, Result
    from raytron.trainers.tune_results import collect_results
    from raytron.trainers.tune_trial import HISTORY_FILE, TRIAL_FILE

    spec = parse_spec({**spec_dict(tune={"scheduler": {"name": "fifo"}}), "storage": {"path": str(tmp_path)}})
    spec.run_dir.mkdir(parents=True)
    grid, history = [], []
    for trial_id, accuracies, saved in (("ab12c_00000", [0.6, 0.9], 1), ("ab12c_00001", [0.7], 1)):
        trial_dir = tmp_path / f"run_trial_{trial_id}_lr=0.1"
        checkpoints = []
        for i, acc in enumerate(accuracies, start=1):
            history.append({"trial_id": trial_id, "iteration": i, "step": 20 * i, "val_accuracy": acc, "config": {"optimizer.lr": 0.1}})
            if i <= saved:
                ckpt = trial_dir / f"checkpoint_{i:06d}"
                ckpt.mkdir(parents=True)
                (ckpt / TRIAL_FILE).write_text(json.dumps({"trial_id": trial_id, "config": {"optimizer.lr": 0.1}}))
                checkpoints.append((Checkpoint.from_directory(str(ckpt)), {"step": 20 * i, "val_accuracy": acc}))
        last = {"step": 20 * len(accuracies), "val_accuracy": accuracies[-1]}  # Tune's last result, checkpoint or not
        # After a PBT exploit Tune's latest checkpoint of the recipient (b) is the donor's (a's).
        latest = grid[0].checkpoint if grid else checkpoints[-1][0]
        grid.append(Result(metrics=last, checkpoint=latest, error=None, path=str(trial_dir), best_checkpoints=checkpoints))
    (spec.run_dir / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
    res = collect_results(spec, grid, wall_s=1.0)
    rows = {t["trial_id"]: t for t in res["trials"]}
    assert rows["ab12c_00000"]["iterations"] == 1 and rows["ab12c_00000"]["metric_best"] == 0.6
    assert res["total_iterations"] == 3  # the dropped iteration was still trained
    assert res["best"]["trial_id"] == "ab12c_00001" and res["best"]["metric"] == 0.7 == max(t["metric_best"] for t in res["trials"])
    assert Path(res["best"]["checkpoint"]).is_dir()


@pytest.mark.parametrize("tune,resources,cluster,fits", [
    ({}, {"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 4.0}, True),
    ({}, {"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 3.0}, False),
    ({}, {"num_workers": 2, "cpus_per_worker": 0.5}, {"CPU": 4.0}, True),
    ({"max_concurrent_trials": 2, "scheduler": {"name": "fifo"}}, {"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 8.0}, False),
    ({"search_space": {"optimizer.lr": {"grid": [0.1, 0.01]}}}, {"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 4.0}, False),  # 4 x 2 trials
    ({}, {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1}, {"CPU": 8.0, "GPU": 2.0}, False),
])
def test_population_fits_counts_every_trial_against_the_cluster(tune, resources, cluster, fits):
    from raytron.trainers.tune import population_fits

    data = spec_dict(tune=tune)
    data["resources"] = resources
    assert population_fits(parse_spec(data), cluster) is fits


# ----------------------------------------------------------------------------- slow: real Ray Tune


@pytest.mark.slow
def test_pbt_exploits_restore_the_donors_weights(head, digits, tmp_path):
    # 4 trials, each of 1 CPU, on the 4-CPU test head; synchronous PBT at every iteration with a
    # quarter of the population copying the top quarter: an exploit must happen at iterations 1 and 2,
    # and none at the last (3), where the recipient would have nothing left to train.
    spec = write(tmp_path, spec_dict(digits, tune={"scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25, "synch": True},
                                                   "search_space": {"optimizer.lr": {"loguniform": [1e-4, 0.5]}}}), "pbt")
    run = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert run.returncode == 0, run.output[-5000:]
    res = results(tmp_path, "pbt")
    assert len(res["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in res["trials"]), res["trials"]
    assert res["exploits"], "no exploit happened"
    ids = {t["trial_id"] for t in res["trials"]}
    for ex in res["exploits"]:
        assert ex["donor"] in ids and ex["recipient"] in ids and ex["donor"] != ex["recipient"], ex
        assert ex["old"]["optimizer.lr"] is not None and ex["old"]["optimizer.lr"] != ex["new"]["optimizer.lr"], ex
        assert ex["weights_match"] and ex["recipient_weights_sha256"] == ex["donor_checkpoint_sha256"], ex
        # Independently of the trial's own check: the donor's checkpoint as Tune kept it hashes the same.
        assert state_sha256(load_file(str(Path(ex["donor_checkpoint"]) / "model.safetensors"))) == ex["recipient_weights_sha256"]
        assert 1 <= ex["iteration"] < 3 and ex["step"] == 20 * ex["iteration"], ex
        # The recipient went on from the donor's step with its new learning rate.
        after = [h for h in next(t for t in res["trials"] if t["trial_id"] == ex["recipient"])["history"] if h["time"] > ex["time"]]
        assert after and after[0]["step"] == ex["step"] + 20 and after[0]["config"]["optimizer.lr"] == ex["new"]["optimizer.lr"]
        assert after[0]["lr"] == pytest.approx(ex["new"]["optimizer.lr"])
    assert {ex["iteration"] for ex in res["exploits"]} == {1, 2}, res["exploits"]
    # The population fits the head, so a trial waiting at a barrier keeps its process: after each
    # barrier the same 4 processes train on. Tune's own synchronous PBT stops the processes of all
    # but one, and the trials take turns on that one while new processes start.
    rows = [json.loads(line) for line in (tmp_path / "runs" / "pbt" / "history.jsonl").read_text().splitlines()]
    pids = {it: {r["pid"] for r in rows if r.get("iteration") == it and "pid" in r} for it in (1, 2, 3)}
    assert len(pids[1]) == 4 and pids[2] == pids[1] and pids[3] == pids[1], pids
    for t in res["trials"]:  # every trial ends on its own last iteration's result
        assert [h["iteration"] for h in t["history"]][-1] == 3, t["history"]
        # Tune's own log of the trial kept every iteration through the pauses and restarts.
        logged = [json.loads(line)["training_iteration"] for line in (Path(t["path"]) / "result.json").read_text().splitlines()]
        assert logged == [1, 2, 3], (t["trial_id"], logged)
    assert "Remote file not found" not in run.output
    assert "exploited" in run.stdout and "weights equal the donor's" in run.stdout
    assert "raytron: final pbt (4 trial(s))" in run.stdout and "best val_accuracy" in run.stdout
    best = res["best"]
    assert best["metric"] > 0.85 and best["train_spec"]["train"]["optimizer"]["lr"] == best["config"]["optimizer.lr"]
    model = MLP(64, 10, hidden=32)
    model.load_state_dict(load_file(str(Path(best["checkpoint"]) / "model.safetensors")))
    for name in ("val_accuracy.png", "loss.png"):
        assert (tmp_path / "runs" / "pbt" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The spec's seed (0) seeds the scheduler's choices too: the same search again makes the same
    # exploits, with the same new learning rates, and ends every trial where it ended the first time.
    # (Drawn from the driver's shared generators, a third run in three explored differently.)
    again = write(tmp_path, yaml.safe_load(spec.read_text()), "pbt-again")
    assert head.cli("submit", str(again), "--wait", timeout_s=600).returncode == 0
    assert _decisions(results(tmp_path, "pbt-again")) == _decisions(res)


def _decisions(res: dict) -> tuple:
    """What a PBT search decided and got, with trials named by their index (trial ids differ per run)."""
    index = {t["trial_id"]: t["trial_id"].rsplit("_", 1)[-1] for t in res["trials"]}
    exploits = sorted((ex["iteration"], index[ex["recipient"]], index[ex["donor"]], ex["new"]["optimizer.lr"]) for ex in res["exploits"])
    finals = sorted((index[t["trial_id"]], t["config"]["optimizer.lr"], t["history"][-1]["val_accuracy"]) for t in res["trials"])
    return exploits, finals


@pytest.mark.slow
def test_asynchronous_pbt_pauses_only_the_trials_it_exploits_and_keeps_their_processes_when_the_population_fits(head, digits, tmp_path):
    # 4 trials of 1 CPU on the 4-CPU test head, a perturbation at every iteration. Tune's own PBT
    # would also pause (and restart from their checkpoints) trials that reach a perturbation point
    # while an exploited one is paused; a trial restarted from its own checkpoint logs "resumed".
    # It would also end an exploited trial's process and start a new one for it, once every trial
    # has started (nothing left "staged" to reuse the process for).
    # Iterations of 100 steps (0.3-0.5 s on 2 busy cores), 10 of them: the trials overlap although
    # their processes start up to 2 s apart. With 5 iterations of 20 steps a trial could end before
    # the next started, with no one to exploit (seen: 0 exploits, the 4 trials one after another).
    last = 10
    spec = write(tmp_path, spec_dict(digits, steps=100 * last, tune={"iteration_steps": 100, "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25}}), "apbt")
    run = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert run.returncode == 0, run.output[-5000:]
    assert "the population runs at once" in run.stdout
    res = results(tmp_path, "apbt")
    assert len(res["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in res["trials"]), res["trials"]
    assert res["exploits"] and all(ex["weights_match"] for ex in res["exploits"]), res["exploits"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "apbt" / "history.jsonl").read_text().splitlines()]
    # A trial sent back to its own checkpoint: paused to yield, restarted after a failure, or handed its
    # own checkpoint by an exploit (seen once in CI, before `_own_newest_checkpoint`). Tune's log says which.
    said = [line for line in run.output.splitlines() if any(w in line for w in ("Cloning trial", "Error", "error", "fail", "PAUSED"))]
    assert not [r for r in rows if r.get("event") == "resumed"], ([r for r in rows if r.get("event")], res["exploits"], said[-40:])
    # An exploited trial's process is kept: the process that reported the recipient's perturbation
    # point reports again, for the recipient or for a trial it was handed to. Tune's PBT stops that
    # process once nothing is staged to start and starts a new one (the recipient then waits 1-2 s for
    # it, or for a process a finished trial leaves). Which process goes on with which trial is Tune's
    # choice: a trial still waiting for its first process may take a recipient's (seen in CI).
    for ex in res["exploits"]:
        point = max((r for r in rows if r.get("trial_id") == ex["recipient"] and "pid" in r and r["time"] < ex["time"]), key=lambda r: r["time"])
        assert any(r["pid"] == point["pid"] and r["time"] > point["time"] for r in rows if "pid" in r), \
            (ex, point, sorted({(r["trial_id"], r["pid"]) for r in rows if "pid" in r}))
    for t in res["trials"]:  # every trial reported every iteration up to the last, exploits or not
        assert max(h["iteration"] for h in t["history"]) == last, t["history"]
    for ex in res["exploits"]:  # the result that ends a trial is no perturbation point
        recipient = next(t for t in res["trials"] if t["trial_id"] == ex["recipient"])
        assert max(h["iteration"] for h in recipient["history"] if h["time"] < ex["time"]) < last, (ex, recipient["history"])


@pytest.mark.slow
def test_asha_stops_weak_trials_early(head, digits, tmp_path):
    # One trial at a time, the best learning rate first: every later trial is judged against it at
    # its first rung and stopped there.
    spec = write(tmp_path, spec_dict(digits, steps=80, tune={
        "search_space": {"optimizer.lr": {"grid": [0.05, 0.00001, 0.00002, 0.00003]}}, "num_samples": 1, "max_concurrent_trials": 1,
        "scheduler": {"name": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2}}), "asha")
    run = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert run.returncode == 0, run.output[-5000:]
    res = results(tmp_path, "asha")
    iterations = {t["config"]["optimizer.lr"]: t["iterations"] for t in res["trials"]}
    assert len(iterations) == 4 and iterations[0.05] == 4, iterations
    assert res["total_iterations"] < 4 * 4, iterations
    assert min(iterations.values()) == 1, iterations
    assert res["best"]["config"]["optimizer.lr"] == 0.05
    # Tune's JSON and CSV logs per trial, no TensorBoard files unless `tune.tensorboard` asks.
    for trial in res["trials"]:
        assert (Path(trial["path"]) / "progress.csv").is_file() and (Path(trial["path"]) / "result.json").is_file(), trial["path"]
        assert not list(Path(trial["path"]).glob("events.out.tfevents*")), trial["path"]
    # A history row is timed when its iteration is reported, after the evaluation and checkpoint,
    # not when the loop logged the step's metrics row.
    tune_spec = parse_spec(yaml.safe_load(spec.read_text()))
    for r in map(json.loads, (tmp_path / "runs" / "asha" / "history.jsonl").read_text().splitlines()):
        metrics = tune_spec.trial_spec(r["config"], r["trial_id"]).run_dir / "metrics.jsonl"
        logged = next(m for m in map(json.loads, metrics.read_text().splitlines()) if m["step"] == r["step"] and "time" in m)
        assert r["time"] > logged["time"], (r, logged)


@pytest.mark.slow
def test_an_iteration_budget_ends_the_search(head, digits, tmp_path):
    # 12 samples of 3 iterations (36 in all), 2 at a time: the budget of 4 ends it within the first trials.
    spec = write(tmp_path, spec_dict(digits, steps=60, tune={"scheduler": {"name": "fifo"}, "num_samples": 12, "max_concurrent_trials": 2,
                                                             "iteration_budget": 4}), "budget")
    run = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert run.returncode == 0, run.output[-5000:]
    assert "the search stops after 4 iterations in all" in run.stdout
    res = results(tmp_path, "budget")
    started = [t for t in res["trials"] if t["history"]]
    # An iteration in flight when the budget is reached (at most one per running trial) counts as
    # spent; Tune drops its result and checkpoint, so it is in no table row and cannot be the best.
    assert 4 <= res["total_iterations"] <= 4 + 2 and len(started) <= 3, [(t["trial_id"], t["iterations"]) for t in started]
    assert res["iteration_budget"] == 4 and res["best"] is not None
    assert res["best"]["metric"] == max(t["metric_best"] for t in started), (res["best"], [(t["trial_id"], t["metric_best"]) for t in started])
    assert Path(res["best"]["checkpoint"], "model.safetensors").is_file()
    assert f"{12 - len(started)} not started" in run.stdout, run.stdout[-3000:]


@pytest.mark.slow
def test_missing_shards_fail_the_search_before_any_trial_starts(head, tmp_path):
    spec = write(tmp_path, spec_dict(str(tmp_path / "no-shards"), tune={"scheduler": {"name": "fifo"}}), "noshards")
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 1, result.output
    logs = result.stdout + result.stderr
    assert "`train.data.manifest`" in logs and "no manifest.json" in logs, logs
    # An error raised on purpose is one line in the logs, with no traceback through raytron's frames.
    assert "raytron: tune job 'noshards' failed: TuneError: `train.data.manifest`" in logs and "Traceback" not in logs, logs
    assert "Trial task failed" not in logs and not (tmp_path / "runs" / "noshards" / "ray_tune").exists(), logs


@pytest.mark.slow
def test_an_interrupted_tune_run_continues_when_submitted_again(head, digits, tmp_path):
    # 2 trials of 20 iterations of 200 steps (about 0.4 s each here, alone). The trials train on
    # until the stop reaches them: a CLI process, the job's driver ended, then Ray ending the
    # driver's actors. Measured 1.2 s on an idle machine and up to 10 s with the 2 cores busy
    # (iterations of 20 steps then finished every trial before the stop took effect).
    spec = write(tmp_path, spec_dict(digits, steps=4000, model={"recipe": "mlp", "args": {"hidden": 256}}, tune={"scheduler": {"name": "fifo"}, "num_samples": 2, "iteration_steps": 200,
                                                             "search_space": {"optimizer.lr": {"uniform": [0.02, 0.1]}}, "tensorboard": True}), "again")
    history = tmp_path / "runs" / "again" / "history.jsonl"
    first = head.cli("submit", str(spec), "--id", "again-1", timeout_s=120)
    assert first.returncode == 0, first.output
    job = "again-1"
    wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) >= 4, timeout_s=240, what="4 reported iterations")
    stop = head.cli("stop", job, timeout_s=120)
    assert stop.returncode == 0, stop.output
    before = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(before) < 40, "the run ended before it was stopped"
    second = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert second.returncode == 0, second.output[-5000:]
    assert "continuing tune run again" in second.stdout
    res = results(tmp_path, "again")
    assert all(t["status"] == "TERMINATED" and t["iterations"] == 20 for t in res["trials"]), res["trials"]
    for trial in res["trials"]:
        its = [h["iteration"] for h in trial["history"]]
        # Continued, not restarted: no iteration reported twice, none skipped.
        assert its == list(range(1, 21)), (trial["trial_id"], its)
        # `tune.tensorboard: true` adds TensorBoard event files to each trial's directory.
        assert list(Path(trial["path"]).glob("events.out.tfevents*")), trial["path"]
    assert len(before) < sum(len(t["history"]) for t in res["trials"])


@pytest.mark.slow
def test_an_interrupted_synchronous_pbt_run_continues_on_its_perturbation_points(head, digits, tmp_path):
    # Tune brings a resumed run's scheduler back as it was when the search started. Synchronous PBT
    # then set its next barrier to the iteration the trials had reached and paused there, and the
    # resubmitted run never ended; asynchronous PBT perturbed every trial at its first result.
    # 20 iterations of 200 steps: a stop takes up to 10 s to reach the trials on 2 busy cores.
    spec = write(tmp_path, spec_dict(digits, steps=4000, model={"recipe": "mlp", "args": {"hidden": 256}},
                                     tune={"scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25, "synch": True},
                                           "iteration_steps": 200}), "spbt")
    history = tmp_path / "runs" / "spbt" / "history.jsonl"

    def reported() -> list[dict]:
        return [r for r in map(json.loads, history.read_text().splitlines()) if "pid" in r] if history.is_file() else []

    first = head.cli("submit", str(spec), "--id", "spbt-1", timeout_s=120)
    assert first.returncode == 0, first.output
    wait_for(lambda: len(reported()) >= 14, timeout_s=240, what="the trials past their first barrier")
    stop = head.cli("stop", "spbt-1", timeout_s=120)
    assert stop.returncode == 0, stop.output
    before = reported()
    assert max(r["iteration"] for r in before) < 20, "the run ended before it was stopped"
    # A trial's decision that Tune cached for a save in flight comes back with the experiment state.
    # The STOP that Tune caches when PBT pauses a saving trial (ray-project/ray#57906) came back this
    # way once in 14 runs, and Tune ran it at the trial's first save of the resubmitted run, ending
    # it after one iteration. It is written here as Tune wrote it then.
    state_file = max((tmp_path / "runs" / "spbt" / "ray_tune" / "search").glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    victim = json.loads(state["trial_data"][0][0])["trial_id"]
    state["runner_data"]["_cached_trial_decisions"][victim] = "STOP"
    state_file.write_text(json.dumps(state))
    second = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert second.returncode == 0, second.output[-5000:]
    assert "continuing tune run spbt" in second.stdout
    res = results(tmp_path, "spbt")
    assert all(t["status"] == "TERMINATED" and t["iterations"] == 20 for t in res["trials"]), res["trials"]
    # Every exploit, before the interruption and after it, at a perturbation point (and none at the last).
    assert res["exploits"] and all(ex["iteration"] in range(2, 20, 2) and ex["weights_match"] for ex in res["exploits"]), res["exploits"]
    if max(r["iteration"] for r in before) < 18:  # a barrier was still ahead: PBT went on exploiting after the restore
        assert any(ex["time"] > max(r["time"] for r in before) for ex in res["exploits"]), (res["exploits"], max(r["iteration"] for r in before))


@pytest.mark.slow
def test_a_trial_can_train_on_several_workers(head, digits, tmp_path):
    """Two trials of two DDP workers each (rank 0 in the trial, rank 1 an actor in its placement group)."""
    data = spec_dict(digits, steps=40, tune={"scheduler": {"name": "fifo"}, "num_samples": 2, "max_concurrent_trials": 1,
                                             "search_space": {"optimizer.lr": {"grid": [0.05, 0.01]}}})
    data["resources"] = {"num_workers": 2, "cpus_per_worker": 1}
    spec = write(tmp_path, data, "wide")
    run = head.cli("submit", str(spec), "--wait", timeout_s=600)
    assert run.returncode == 0, run.output[-5000:]
    res = results(tmp_path, "wide")
    assert len(res["trials"]) == 4 and all(t["status"] == "TERMINATED" and t["iterations"] == 2 for t in res["trials"]), res["trials"]
    assert "2 worker(s) x 1 CPU per trial" in run.stdout
    for trial in res["trials"]:
        run_dir = tmp_path / "runs" / "wide" / "trials" / f"wide-{trial['trial_id'].replace('_', '-')}"
        metas = sorted((run_dir / "checkpoints").glob("step-*/meta.json"))
        assert metas and json.loads(metas[-1].read_text())["world_size"] == 2, metas
