"""What a tune run shows and leaves: the console table, results.json and the plots."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

from raytron.trainers.tune_spec import TuneJobSpec

__all__ = ["TableCallback", "JsonLogger", "CsvLogger", "collect_results", "plot_results", "render_table"]

_TRIAL_DIR_RE = re.compile(r"_([0-9a-f]{5}_\d{5})(?:_|/|$)")


def _tune_callback_base():
    from ray.tune import Callback

    return Callback


def _tune_logger_bases():
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return JsonLoggerCallback, CSVLoggerCallback


class _KeepDriverCopy:
    """Tune's per-trial log callbacks, except that a trial starting again keeps the driver's own log.

    Whenever a trial with a checkpoint starts, Tune copies its result.json / progress.csv from the
    run's storage over the driver's copy, so that a run continued by another driver goes on with its
    logs. Within one driver (a PBT pause and restart) the storage copy is older than the driver's
    (synced now and then, and at the end) or not there yet: the copy then either warned "Remote file
    not found" or replaced the file with an older one, losing rows (iterations 5 and 6 of three of
    the PBT example's trials). The copy is made only when the driver has no log of the trial and
    the storage has one.
    """

    def _restore_from_remote(self, file_name: str, trial) -> None:
        from pyarrow.fs import FileType

        if Path(trial.local_path, file_name).exists():
            return
        remote = Path(trial.storage.trial_fs_path, file_name).as_posix()
        if trial.storage.storage_filesystem.get_file_info(remote).type != FileType.NotFound:
            super()._restore_from_remote(file_name, trial)


_JSON_BASE, _CSV_BASE = _tune_logger_bases()


class JsonLogger(_KeepDriverCopy, _JSON_BASE):
    """Ray Tune's JsonLoggerCallback (result.json, params.json per trial), keeping the driver's log on a restart."""


class CsvLogger(_KeepDriverCopy, _CSV_BASE):
    """Ray Tune's CSVLoggerCallback (progress.csv per trial), keeping the driver's log on a restart."""


class TableCallback(_tune_callback_base()):
    """Prints the trial table at most every `every_s` seconds while results come in."""

    def __init__(self, spec: TuneJobSpec, every_s: float):
        self.spec, self.every_s, self.last_print = spec, every_s, 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last_print < self.every_s:
            return
        self.last_print = now
        rows = [{"trial_id": t.trial_id, "status": t.status, "iterations": (t.last_result or {}).get("training_iteration", 0),
                 "step": (t.last_result or {}).get("step"), "metric_last": (t.last_result or {}).get(self.spec.tune.metric), "metric_best": None,
                 "config": {k: t.config.get(k) for k in self.spec.tune.search_space}} for t in trials]
        print(render_table(self.spec, rows, final=False), flush=True)


def render_table(spec: TuneJobSpec, rows: list[dict[str, Any]], *, final: bool) -> str:
    """A plain-text table: trial, status, iterations, step, the metric (last and best), the config."""
    metric = spec.tune.metric
    keys = list(spec.tune.search_space)
    head = ["trial", "status", "iter", "step", f"{metric}", *([f"best {metric}"] if final else []), *keys]
    # Samples not started yet (or never, when a budget ended the search) are counted, not listed:
    # an ASHA search may hold hundreds, and Tune creates trials only as it can start them under
    # `max_concurrent_trials`.
    shown = [r for r in rows if r["iterations"] or r["status"] not in ("PENDING", "NO RESULTS")]
    total = max(len(rows), spec.num_trials())
    waiting = total - len(shown)
    lines = []
    for row in shown:
        cells = [row["trial_id"], row["status"], str(row["iterations"]), str(row.get("step") or "-"), _num(row.get("metric_last"))]
        if final:
            cells.append(_num(row.get("metric_best")))
        cells += [_num(row["config"].get(k)) for k in keys]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = [f"raytron: {'final' if final else 'trials of'} {spec.name} ({total} trial(s)"
           + (f", {waiting} not started{'' if final else ' yet'}" if waiting else "") + ")",
           "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_id_of(path: str | Path) -> str | None:
    """The trial id in a Tune trial directory's name (`<trainable>_<experiment>_<index>_<config>_<date>`), or in a path below one."""
    match = _TRIAL_DIR_RE.search(str(path))
    return match.group(1) if match else None


def collect_results(spec: TuneJobSpec, grid, *, wall_s: float) -> dict[str, Any]:
    """results.json: every trial's history and status, the best checkpoint, the exploits."""
    from raytron.trainers.tune_trial import EXPLOITS_FILE, HISTORY_FILE, TRIAL_FILE, read_jsonl

    tc = spec.tune
    better = max if tc.mode == "max" else min
    history: dict[str, list[dict[str, Any]]] = {}
    for row in read_jsonl(spec.run_dir / HISTORY_FILE):
        rows = history.setdefault(row["trial_id"], [])
        if row.get("event") == "resumed":
            # The trial went back to its own checkpoint: what it reported after that is superseded.
            rows[:] = [r for r in rows if r["iteration"] <= row["iteration"]]
            continue
        rows.append({k: v for k, v in row.items() if k != "trial_id"})
    trials, errored, candidates = [], [], []
    trained = sum(len(rows) for rows in history.values())
    for result in grid:
        trial_id = trial_id_of(result.path) or Path(result.path).name
        rows = _received(history.get(trial_id, []), _latest_checkpoint_metrics(result))
        values = [h[tc.metric] for h in rows if tc.metric in h]
        row = {"trial_id": trial_id, "status": "ERROR" if result.error else ("TERMINATED" if values else "NO RESULTS"),
               "iterations": rows[-1]["iteration"] if rows else 0, "step": rows[-1].get("step") if rows else None,
               "config": rows[-1]["config"] if rows else dict(result.config or {}),
               "metric_last": values[-1] if values else None, "metric_best": better(values) if values else None, "path": result.path, "history": rows}
        if result.error:
            text = str(result.error).strip()
            row["error"] = text.splitlines()[-1][:500] if text else type(result.error).__name__
            errored.append(row)
        trials.append(row)
        for ckpt, ckpt_metrics in result.best_checkpoints or []:
            if tc.metric in ckpt_metrics:
                candidates.append((ckpt_metrics[tc.metric], ckpt, ckpt_metrics))
    best = None
    if candidates:
        value, ckpt, ckpt_metrics = better(candidates, key=lambda c: c[0])
        info = json.loads((Path(ckpt.path) / TRIAL_FILE).read_text()) if (Path(ckpt.path) / TRIAL_FILE).is_file() else {}
        trial_id = trial_id_of(ckpt.path) or info.get("trial_id")
        config = info.get("config") or next((t["config"] for t in trials if t["trial_id"] == trial_id), {})
        step = ckpt_metrics.get("step")
        best = {"trial_id": trial_id, "metric": value, "iteration": step // tc.iteration_steps if step else None, "step": step,
                "config": config, "checkpoint": ckpt.path, "train_spec": json.loads(spec.trial_spec(config, trial_id or "best").to_json()),
                "export": f"raytron export {ckpt.path} --name {spec.name}"}
    return {"name": spec.name, "metric": tc.metric, "mode": tc.mode, "scheduler": tc.scheduler.name, "num_samples": tc.num_samples,
            "iteration_steps": tc.iteration_steps, "iteration_budget": tc.iteration_budget, "wall_s": wall_s,
            # Every iteration trained, with those whose result Tune never took in (below).
            "total_iterations": trained,
            "best": best, "trials": trials, "errored": [{"trial_id": t["trial_id"], "error": t["error"]} for t in errored],
            "exploits": read_jsonl(spec.run_dir / EXPLOITS_FILE)}


def _latest_checkpoint_metrics(result) -> dict[str, Any] | None:
    """The metrics reported with the last checkpoint Tune registered for a trial itself, or None.

    With no `checkpoint_score_attribute` Tune keeps a trial's checkpoints in the order it registered
    them. `result.checkpoint` is not this: after a PBT exploit it is the donor's checkpoint.
    """
    checkpoints = result.best_checkpoints or []
    return checkpoints[-1][1] if checkpoints else None


def _received(rows: list[dict[str, Any]], last_checkpointed: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A trial's history up to the last result whose checkpoint Tune registered.

    A trial writes its history row just before it reports. When the search ends at once (an
    iteration budget stops every trial) Tune drops what is still on its way: a result not yet
    taken in, and also a result taken in whose checkpoint save had not resolved (stopping a trial
    clears its pending save). Such rows stay out of the table and the best trial too, so the best
    is always a checkpoint that exists.
    """
    step = (last_checkpointed or {}).get("step")
    if step is None:
        return []
    last = max((i for i, r in enumerate(rows) if r.get("step") == step), default=None)
    return rows if last is None else rows[:last + 1]


def plot_results(spec: TuneJobSpec, results: dict[str, Any]) -> list[Path]:
    """`<metric>.png` (and `loss.png`): one line per trial over iterations, exploits as dashed jumps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from raytron.cluster.storage import write_bytes_atomic

    written = []
    by_id = {t["trial_id"]: t for t in results["trials"]}
    for metric in dict.fromkeys([spec.tune.metric, "loss"]):
        fig, ax = plt.subplots(figsize=(9, 5))
        colors = {}
        for trial in results["trials"]:
            points = [(h["iteration"], h[metric]) for h in trial["history"] if metric in h]
            if not points:
                continue
            (line,) = ax.plot(*zip(*points), marker=".", label=trial["trial_id"])
            colors[trial["trial_id"]] = line.get_color()
        for n, ex in enumerate(results["exploits"]):
            donor = by_id.get(ex.get("donor"))
            recipient = by_id.get(ex.get("recipient"))
            if donor is None or recipient is None:
                continue
            at = [h[metric] for h in donor["history"] if h["iteration"] == ex["iteration"] and metric in h]
            # The recipient's first row after the exploit: one iteration on from the donor's checkpoint, reported later.
            after = [h[metric] for h in recipient["history"] if h["iteration"] == ex["iteration"] + 1 and h["time"] > ex["time"] and metric in h]
            if at and after:
                ax.plot([ex["iteration"], ex["iteration"] + 1], [at[-1], after[-1]], linestyle="--", color=colors.get(ex["recipient"], "grey"), alpha=0.8)
                ax.scatter([ex["iteration"]], [at[-1]], marker="x", s=60, color=colors.get(ex["recipient"], "grey"), zorder=3,
                           label="exploit (recipient's colour, from the donor's point)" if n == 0 else None)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(metric)
        ax.set_title(f"{spec.name}: {metric} per trial ({spec.tune.scheduler.name}, {len(results['exploits'])} exploit(s))")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        written.append(write_bytes_atomic(spec.run_dir / f"{metric}.png", buffer.getvalue()))
    return written
