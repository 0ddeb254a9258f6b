"""One Ray Tune trial: the `kind: train` loop with the trial's hyperparameters, reporting to Tune.

Every Tune iteration is `tune.iteration_steps` optimizer steps that end in an evaluation and a
checkpoint, reported together (`ray.tune.report(metrics, checkpoint=...)`), so a PBT exploit
always finds a checkpoint of the donor's very iteration.

When Tune starts a trial with a checkpoint (`ray.tune.get_checkpoint()`), that checkpoint
*replaces* every checkpoint in the trial's own directory before the loop starts, so the loop can
only resume from it: a trial never reloads its own older or newer weights in place of the donor's.
If the checkpoint came from another trial it is a PBT exploit: the loop restores the donor's
weights, optimizer state and data position with the trial's new hyperparameters, the weights
are hashed right after the restore and compared with the donor checkpoint's tensors (a mismatch
stops the trial), and the exploit is appended to `<run_dir>/exploits.jsonl`. Handed a donor
checkpoint whose exploit is recorded already (a run stopped and resubmitted soon after an exploit),
the trial resumes from it and records no second exploit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from raytron.trainers.errors import CheckpointError
from raytron.trainers.tune_spec import TuneJobSpec, get_path

__all__ = ["run_trial", "state_sha256", "read_jsonl", "EXPLOITS_FILE", "HISTORY_FILE", "TRIAL_FILE"]

EXPLOITS_FILE = "exploits.jsonl"
#: Written into each checkpoint a trial reports: which trial it belongs to, for the recipient of an exploit.
TRIAL_FILE = "tune-trial.json"
#: Every iteration of every trial, in the order they were reported (Tune's own result.json of a
#: trial restarts after each PBT exploit, so raytron keeps the whole history itself). A row's `time`
#: is when its iteration, evaluated and checkpointed, was reported.
HISTORY_FILE = "history.jsonl"


def state_sha256(state: dict[str, Any]) -> str:
    """A hash of a state dict's tensors: names, dtypes, shapes and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_trial(config: dict[str, Any], spec_json: str, session: str = "") -> None:
    """The Tune function trainable (passed through `tune.with_parameters(run_trial, spec_json=..., session=...)`).

    `session` names the driver's run of the search (a resubmission is another); it goes into the
    trial's history rows, so that a resume can be told from a new exploit (`_replayed_exploit`).
    """
    from ray import tune

    ctx = tune.get_context()
    tune_spec = TuneJobSpec.model_validate_json(spec_json)
    trial_id = ctx.get_trial_id()
    spec = tune_spec.trial_spec(config, trial_id)
    ckpt_root = spec.run_dir / "checkpoints"
    exploit: dict[str, Any] | None = None
    given = tune.get_checkpoint()
    if given is not None:
        with given.as_directory() as src:
            exploit, step = _install(Path(src), ckpt_root, tune_spec, config, trial_id, session)
        if exploit is None:
            # Its own checkpoint (a restart, or a resubmitted run): iterations it reported after
            # this one were lost with Tune's state and are trained again; the history says so.
            _append_jsonl(tune_spec.run_dir / HISTORY_FILE, {"trial_id": trial_id, "event": "resumed", "iteration": step // tune_spec.tune.iteration_steps,
                                                             "time": time.time(), "session": session})

    def on_restore(state: dict[str, Any], ckpt) -> None:
        if exploit is None:
            return
        from safetensors.torch import load_file

        live = state_sha256(state)
        donor = state_sha256(load_file(str(ckpt.path / "model.safetensors")))
        record = {**exploit, "recipient_weights_sha256": live, "donor_checkpoint_sha256": donor, "weights_match": live == donor}
        _append_jsonl(tune_spec.run_dir / EXPLOITS_FILE, record)
        if live != donor:
            raise CheckpointError(f"trial {trial_id}: after exploiting {exploit['donor']} the weights hash {live[:12]} but the donor's checkpoint hashes {donor[:12]}")
        print(f"raytron: trial {trial_id} exploited {exploit['donor']} at iteration {exploit['iteration']} (step {exploit['step']}): "
              + ", ".join(f"{k} {exploit['old'].get(k)!r} -> {v!r}" for k, v in exploit["new"].items()) + "; weights equal the donor's", flush=True)

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return  # metrics rows between checkpoints: an iteration ends only with a checkpoint
        row = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        (checkpoint_dir / TRIAL_FILE).write_text(json.dumps({"trial_id": trial_id, "config": config}))
        step = int(metrics.get("step", 0))
        # The metrics row carries its own `time` (taken before evaluation and checkpoint); the
        # history's is when the iteration, evaluated and checkpointed, is reported.
        _append_jsonl(tune_spec.run_dir / HISTORY_FILE, {**row, "trial_id": trial_id, "iteration": step // tune_spec.tune.iteration_steps, "time": time.time(),
                                                         "pid": os.getpid(), "session": session, "config": config})
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    _train(spec, report, on_restore)


def _install(src: Path, ckpt_root: Path, tune_spec: TuneJobSpec, config: dict[str, Any], trial_id: str,
             session: str = "") -> tuple[dict[str, Any] | None, int]:
    """Make `src` the trial's only checkpoint; returns its step, and the exploit record when it is another trial's."""
    try:
        meta = json.loads((src / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"trial {trial_id}: the checkpoint Tune handed over ({src}) has no readable meta.json: {exc}") from None
    step = int(meta["step"])
    try:
        source = json.loads((src / TRIAL_FILE).read_text())["trial_id"]
    except (OSError, ValueError, KeyError):
        source = None
    exploit = None
    if source != trial_id and not _replayed_exploit(tune_spec.run_dir, trial_id, str(src), session):
        own_meta = _latest_meta(ckpt_root)
        old_body = (own_meta or {}).get("spec", {}).get("train", {})
        paths = sorted(set(tune_spec.tune.search_space) | set(tune_spec.tune.scheduler.hyperparam_mutations or {}))
        exploit = {
            "time": time.time(), "recipient": trial_id, "donor": source,
            "iteration": step // tune_spec.tune.iteration_steps, "step": step, "donor_checkpoint": str(src),
            "old": {p: _get(old_body, p) for p in paths}, "new": {p: config.get(p) for p in paths},
        }
    # Copy beside the checkpoints, then swap: the trial's directory always holds a complete checkpoint.
    ckpt_root.mkdir(parents=True, exist_ok=True)
    incoming = ckpt_root / f".incoming-{step:08d}"
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(src, incoming)
    for old in ckpt_root.glob("step-*"):
        shutil.rmtree(old)
    incoming.rename(ckpt_root / f"step-{step:08d}")
    return exploit, step


def _replayed_exploit(run_dir: Path, recipient: str, donor_checkpoint: str, session: str) -> bool:
    """Whether Tune hands `recipient` a donor's checkpoint again to resume it, rather than to exploit anew.

    A run stopped soon after an exploit, before Tune's state took in the recipient's next
    checkpoint, resumes the recipient from the donor's checkpoint when it is resubmitted: a resume,
    not another exploit. It is one when that exploit is recorded and the recipient has reported
    nothing in this session yet, since a new exploit follows a result of this session. Within a
    session, asynchronous PBT can exploit the same donor checkpoint twice (the donor has not
    reported since), and the second is an exploit too (seen: one recorded as a resume).
    """
    if not any(r.get("recipient") == recipient and r.get("donor_checkpoint") == donor_checkpoint for r in read_jsonl(run_dir / EXPLOITS_FILE)):
        return False
    return not any(r.get("trial_id") == recipient and r.get("session") == session for r in read_jsonl(run_dir / HISTORY_FILE))


def _train(spec, report, on_restore) -> dict[str, Any]:
    """Rank 0 in this process (it reports to Tune); ranks 1.. as actors in the trial's placement group."""
    from raytron.trainers.loop import new_loop

    n = spec.resources.num_workers
    loop = new_loop(spec, rank=0, world_size=n, report=report, on_restore=on_restore)
    if n == 1:
        return loop.run()
    import ray

    from raytron.trainers.group import TrainWorker

    r = spec.resources
    addr = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((addr, 0))
        port = s.getsockname()[1]
    workers = [TrainWorker.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0).remote(spec.to_json(), rank, n) for rank in range(1, n)]
    try:
        refs = [w.train.remote(addr, port) for w in workers]
        loop.join(addr, port)
        result = loop.run()
        loop.leave()
        ray.get(refs)
        return result
    finally:
        for w in workers:
            ray.kill(w, no_restart=True)


def _latest_meta(ckpt_root: Path) -> dict[str, Any] | None:
    metas = sorted(ckpt_root.glob("step-*/meta.json")) if ckpt_root.is_dir() else []
    for path in reversed(metas):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _get(body: dict[str, Any], path: str) -> Any:
    try:
        return get_path(body, path)
    except (KeyError, TypeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (none if it is not there), skipping a line cut short by a killed trial."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
