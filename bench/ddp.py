"""Theme `ddp`: the same small DDP job through `raytron submit --wait`, plain `torchrun` and Ray
Train's `TorchTrainer`, in one run: steady-state training throughput and end-to-end wall time.

The job: 1 epoch over a synthetic classification set (`--num-samples` x `--features` float32,
10 classes, seeded, learnable), built once into WebDataset shards; the `mlp` recipe (hidden
`--hidden`), SGD with momentum, fp32, global batch `--global-batch-size` over 2 CPU ranks, gloo.

- raytron: a `kind: train` spec (2 workers x 1 CPU, no validation split, checkpoint only at the
  end) submitted with `raytron submit SPEC --wait` to the already running local head (a warm
  cluster: the normal way raytron is used). Timed from launching the command to its exit.
- torchrun: `torchrun --nnodes 1 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port PORT
  bench/_ddp_torchrun_train.py`, the loop a user writes by hand (`_ddp_loop.py`), reading the same
  shards through raytron's ShardLoader so the data path is identical. Timed launch to exit.
- Ray Train: `python bench/_ddp_raytrain.py`, a driver that connects to the same head and runs the
  same hand-written loop in `TorchTrainer(ScalingConfig(num_workers=2))`. Timed launch to exit.

Steady-state throughput: every tool logs global samples/s over windows of `--log-every-steps`
steps (all-reduced, rank 0's clock); the first window is warm-up, the median of the rest counts.
One untimed warm-up of each tool, then repetitions with the order rotated each time.

    raytron bench ddp [--quick]
    RAYTRON_HOME=$(mktemp -d) python bench/ddp.py --repeats 3
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _ddp_cpu import CpuSampler
from _ddp_phases import job_log_times, ray_log_times
from _ddp_plot import plot_results
from _harness import BenchArgs, option, parse_args, summarize, write_results

from raytron.cluster import Cluster, JobManager, LocalHeadConfig, Settings, connect, start_local_head, stop_local_head

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RAYTRON, TORCHRUN, RAY_TRAIN = "raytron submit --wait", "torchrun", "Ray Train"
TOOLS = (RAYTRON, TORCHRUN, RAY_TRAIN)
GOAL_THROUGHPUT = 0.95
GOAL_END_TO_END = 0.5  # torchrun's wall time / raytron's: raytron at most 2x torchrun's time
_SUBMITTED = re.compile(r"raytron: submitted (\S+) to ")


@dataclass(kw_only=True)
class DdpArgs(BenchArgs):
    """Options of the `ddp` theme."""

    num_samples: int = option(60_000, "Training samples (one epoch).")
    features: int = option(784, "float32 features per sample.")
    hidden: int = option(256, "Hidden width of the mlp recipe.")
    global_batch_size: int = option(256, "Samples per step across both ranks (128 per rank).")
    shuffle_buffer: int = option(1000, "Shuffle buffer of every rank's ShardLoader.")
    lr: float = option(0.05, "SGD learning rate (momentum 0.9).")
    log_every_steps: int = option(20, "Steps per throughput window.")
    shard_size_bytes: int = option(16 * 2**20, "Size at which the builder closes a shard.")
    timeout_s: float = option(300.0, "Limit for one run; a run past it is killed and counted as failed.")
    budget_s: float = option(2400.0, "Limit for all runs; those left when it is spent are not run.")
    skip_ray_train: bool = option(False, "Leave out the Ray Train baseline.")
    work_dir: Path | None = option(None, "Folder for the temporary shards and run outputs (default: the system temp folder).")


@dataclass(kw_only=True)
class Run:
    """One timed job."""

    tool: str
    repeat: int
    """0-based repetition; -1 for the untimed warm-up."""
    exit_code: int | None = None
    timed_out: bool = False
    end_to_end_s: float | None = None
    """Launching the command to its exit."""
    steady_samples_per_s: float | None = None
    """Median samples/s of the logged windows after the first."""
    steady_pooled_samples_per_s: float | None = None
    """Samples after the first window over the time from the first window's end to the last's."""
    first_window_samples_per_s: float | None = None
    startup_s: float | None = None
    """Launch to the first training step (the first window's start)."""
    loop_s: float | None = None
    """First training step to the last logged window."""
    after_loop_s: float | None = None
    """Last logged window to the command's exit (final checkpoint, teardown, exit)."""
    steps: int | None = None
    final_loss: float | None = None
    """Loss of the last window (all tools train the same model on the same batches)."""
    other_cores: float | None = None
    """Cores used by every process but the ranks during the steady windows (of 2 on this machine)."""
    ranks_cpu_util: float | None = None
    """The ranks' CPU seconds over (steady time x 2 ranks): 1.0 means both ranks always on a core."""
    load_1m_before: float | None = None
    """The machine's 1-minute load average just before the run (other users' work shows here)."""
    launched_at: float | None = None
    """Wall-clock time the command was launched."""
    cpu_detail: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    """Tool-specific moments, seconds after launch."""
    windows: list[float] = field(default_factory=list)
    """samples/s of every logged window."""
    output_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.steady_samples_per_s is not None


# --------------------------------------------------------------------------- data


def make_shards(work: Path, args: DdpArgs) -> Path:
    """A seeded, learnable 10-class set (class centres + noise) as npz, built into shards once."""
    import numpy as np

    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (10, args.features)).astype(np.float32)
    y = rng.integers(0, 10, args.num_samples)
    x = (0.1 * centres[y] + rng.normal(0.0, 1.0, (args.num_samples, args.features))).astype(np.float32)
    npz = work / "synthetic.npz"
    np.savez(npz, x=x, y=y)
    out = work / "shards"
    build_shards(BuildConfig(source=SourceConfig(spec=f"npz:{npz}"), out_dir=out, shard_size_bytes=args.shard_size_bytes, val_fraction=0.0, progress=False))
    npz.unlink()
    return out


# --------------------------------------------------------------------------- running one job


def _launch(cmd: list[str], env: dict[str, str], timeout_s: float, on_line=None) -> tuple[int, bool, float, float, list[str]]:
    """Run `cmd` in its own session, reading merged output; returns (exit code, timed out, launch wall time, seconds to exit, lines)."""
    lines: list[str] = []
    t_wall = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True)

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line, time.time() - t_wall)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the command and everything it spawned (its own session)
        code = proc.wait()
    elapsed = time.monotonic() - t0
    reader.join(timeout=5)
    return code, timed_out, t_wall, elapsed, lines


def _read_metrics(run: Run, path: Path, t_launch: float, args: DdpArgs) -> None:
    """Throughput and loop timing from a metrics.jsonl (raytron's rows and the baselines' have the same keys)."""
    if not path.is_file():
        return
    rows = [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if "samples_per_s" in r]
    if not rows:
        return
    run.windows = [r["samples_per_s"] for r in rows]
    run.first_window_samples_per_s = rows[0]["samples_per_s"]
    run.steady_samples_per_s = statistics.median(run.windows[1:]) if len(rows) > 1 else None
    run.steps, run.final_loss = rows[-1]["step"], rows[-1]["loss"]
    # The first window's clock starts just before the loop: its length is its samples over its rate.
    first_samples = rows[0]["step"] * args.global_batch_size
    loop_start = rows[0]["time"] - first_samples / rows[0]["samples_per_s"]
    if len(rows) > 1 and rows[-1]["time"] > rows[0]["time"]:
        run.steady_pooled_samples_per_s = (args.num_samples - first_samples) / (rows[-1]["time"] - rows[0]["time"])
    run.launched_at = t_launch
    run.phases["first_window_end"] = rows[0]["time"] - t_launch
    run.phases["loop_start"] = loop_start - t_launch
    run.phases["loop_end"] = rows[-1]["time"] - t_launch
    run.startup_s = run.phases["loop_start"]
    run.loop_s = run.phases["loop_end"] - run.phases["loop_start"]


def _finish(run: Run, code: int, timed_out: bool, elapsed: float, lines: list[str]) -> None:
    run.exit_code, run.timed_out, run.end_to_end_s = code, timed_out, elapsed
    run.phases["exit"] = elapsed
    if run.phases.get("loop_end") is not None:
        run.after_loop_s = elapsed - run.phases["loop_end"]
    if not run.ok:
        run.output_tail = lines[-30:]


def run_raytron(ctx: "Context", run: Run) -> None:
    name = f"ddp-bench-{run.repeat + 1 if run.repeat >= 0 else 'warmup'}-{secrets.token_hex(3)}"
    spec = {
        "name": name, "kind": "train",
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(ctx.runs)},
        "train": {
            "model": {"recipe": "mlp", "args": {"hidden": ctx.args.hidden}},
            "data": {"manifest": str(ctx.shards), "shuffle_buffer": ctx.args.shuffle_buffer, "val_split": None},
            "loss": "cross_entropy", "optimizer": {"name": "sgd", "lr": ctx.args.lr, "momentum": 0.9},
            "epochs": 1, "global_batch_size": ctx.args.global_batch_size, "precision": "fp32", "seed": 0,
            "checkpoint": {"every_steps": 1_000_000, "keep": 1}, "log_every_steps": ctx.args.log_every_steps,
        },
    }
    spec_path = ctx.work / f"{name}.yaml"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    seen: dict[str, Any] = {}

    def on_line(line: str, t: float) -> None:
        if "submitted" not in seen and (m := _SUBMITTED.search(line)):
            seen["submitted"], seen["id"] = t, m.group(1)
        for key, text in (("running", " RUNNING ("), ("runner_started", "raytron: running train job")):
            if key not in seen and text in line:
                seen[key] = t

    code, timed_out, t0, elapsed, lines = _launch([str(ctx.bin / "raytron"), "submit", str(spec_path), "--wait"], ctx.env, ctx.timeout(), on_line)
    run.phases.update({k: v for k, v in seen.items() if k != "id"})
    logged = {**job_log_times(lines), **ray_log_times(ctx.cluster.head.temp_dir, t0)}
    run.phases.update({k: v - t0 for k, v in logged.items()})
    run_dir = ctx.runs / name
    _read_metrics(run, run_dir / "metrics.jsonl", t0, ctx.args)
    metas = sorted(run_dir.glob("checkpoints/step-*/meta.json"))
    if metas:
        run.phases["checkpoint_done"] = metas[-1].stat().st_mtime - t0
    if (run_dir / "result.json").is_file():
        run.phases["group_done"] = (run_dir / "result.json").stat().st_mtime - t0  # written after the actors are killed
    if "id" in seen:
        if timed_out:
            ctx.manager.stop(seen["id"])
        record = ctx.manager.get(seen["id"])
        if record.end_time_s:
            run.phases["job_end"] = record.end_time_s - t0
    _finish(run, code, timed_out, elapsed, lines)


def run_torchrun(ctx: "Context", run: Run) -> None:
    run_dir = ctx.runs / f"torchrun-{run.repeat}-{secrets.token_hex(3)}"
    with socket.socket() as s:  # a free loopback port for the rendezvous store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(ctx.bin / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
           str(BENCH / "_ddp_torchrun_train.py"), json.dumps(ctx.loop_config(run_dir))]
    code, timed_out, t0, elapsed, lines = _launch(cmd, ctx.env, ctx.timeout())
    _read_metrics(run, run_dir / "metrics.jsonl", t0, ctx.args)
    _read_events(run, run_dir, t0)
    _finish(run, code, timed_out, elapsed, lines)


def run_ray_train(ctx: "Context", run: Run) -> None:
    name = f"raytrain-{run.repeat}-{secrets.token_hex(3)}"
    run_dir = ctx.runs / name
    cmd = [sys.executable, str(BENCH / "_ddp_raytrain.py"), ctx.cluster.head.gcs_address, str(ctx.work / "ray_train_storage"), name,
           json.dumps(ctx.loop_config(run_dir))]
    env = dict(ctx.env, **ctx.cluster.head.env(), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    code, timed_out, t0, elapsed, lines = _launch(cmd, env, ctx.timeout())
    _read_metrics(run, run_dir / "metrics.jsonl", t0, ctx.args)
    _read_events(run, run_dir, t0)
    for line in lines:
        if line.startswith("DDP_BENCH_RAYTRAIN "):
            run.phases.update({k: v - t0 for k, v in json.loads(line.split(" ", 1)[1]).items()})
    _finish(run, code, timed_out, elapsed, lines)


def _read_events(run: Run, run_dir: Path, t0: float) -> None:
    path = run_dir / "events.json"
    if path.is_file():
        events = json.loads(path.read_text())["events"]
        # The loop's own `loop_start` is kept as `loop_start_event`: the metrics-derived one is what all tools share.
        run.phases.update({(k + "_event" if k in ("loop_start", "loop_end") else k): v - t0 for k, v in events.items()})


# --------------------------------------------------------------------------- the measurement


@dataclass
class Context:
    args: DdpArgs
    cluster: Cluster
    manager: JobManager
    work: Path
    shards: Path
    env: dict[str, str]
    deadline: float
    bin: Path = Path(sys.executable).parent

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def timeout(self) -> float:
        return max(1.0, min(self.args.timeout_s, self.deadline - time.monotonic()))

    def loop_config(self, run_dir: Path) -> dict[str, Any]:
        a = self.args
        return {"manifest": str(self.shards), "run_dir": str(run_dir), "global_batch_size": a.global_batch_size, "shuffle_buffer": a.shuffle_buffer,
                "seed": 0, "hidden": a.hidden, "lr": a.lr, "momentum": 0.9, "epochs": 1, "log_every_steps": a.log_every_steps}


RUNNERS = {RAYTRON: run_raytron, TORCHRUN: run_torchrun, RAY_TRAIN: run_ray_train}


def measure(args: DdpArgs, repeats: int, cluster: Cluster) -> int:
    for exe in ("raytron", "torchrun"):
        if not (Path(sys.executable).parent / exe).is_file():
            raise SystemExit(f"{exe} not found beside {sys.executable}; run this with the virtual environment raytron is installed in")
    work = Path(tempfile.mkdtemp(prefix="raytron-bench-ddp-", dir=args.work_dir))
    try:
        t0 = time.monotonic()
        shards = make_shards(work, args)
        build_s = time.monotonic() - t0
        print(f"built {args.num_samples} samples into {shards} in {build_s:.1f} s", file=sys.stderr)
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")  # unbuffered: a line's time is when it was written; wide: rich wraps no line
        ctx = Context(args=args, cluster=cluster, manager=JobManager(cluster), work=work, shards=shards, env=env,
                      deadline=time.monotonic() + args.budget_s)
        tools = [t for t in TOOLS if not (t == RAY_TRAIN and args.skip_ray_train)]
        plan = [(t, -1) for t in tools]
        for i in range(repeats):
            k = i % len(tools)
            plan += [(t, i) for t in tools[k:] + tools[:k]]
        runs: list[Run] = []
        for tool, repeat in plan:
            run = Run(tool=tool, repeat=repeat)
            if ctx.deadline - time.monotonic() < 10:
                run.output_tail = [f"not run: --budget-s {args.budget_s:g} spent"]
            else:
                run.load_1m_before = round(os.getloadavg()[0], 2)
                with CpuSampler() as cpu:
                    RUNNERS[tool](ctx, run)
                _cpu_use(run, cpu)
            runs.append(run)
            label = "warm-up" if repeat < 0 else f"#{repeat + 1}/{repeats}"
            print(f"{tool:22s} {label:8s} end to end {_s(run.end_to_end_s)}  start-up {_s(run.startup_s)}  loop {_s(run.loop_s)}  "
                  f"after loop {_s(run.after_loop_s)}  steady {run.steady_samples_per_s or 0:,.0f} samples/s  loss {run.final_loss}  exit {run.exit_code}",
                  file=sys.stderr)
        return report(args, repeats, runs, {"build_s": build_s, "work_dir": str(work), "gcs_address": cluster.head.gcs_address})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_use(run: Run, cpu: CpuSampler) -> None:
    p = run.phases
    if run.launched_at is None or "first_window_end" not in p or "loop_end" not in p:
        return
    use = cpu.usage(run.launched_at + p["first_window_end"], run.launched_at + p["loop_end"])
    if use:
        run.cpu_detail = use
        run.other_cores = use["other_cores"]
        run.ranks_cpu_util = use["ranks_cpu_s"] / (2 * use["span_s"])


def report(args: DdpArgs, repeats: int, runs: list[Run], info: dict[str, Any]) -> int:
    timed = [r for r in runs if r.repeat >= 0 and r.ok]
    tools = [t for t in TOOLS if any(r.tool == t for r in runs)]
    metrics = ("end_to_end_s", "steady_samples_per_s", "steady_pooled_samples_per_s", "startup_s", "loop_s", "after_loop_s", "first_window_samples_per_s",
               "other_cores", "ranks_cpu_util")
    summary = {m: {t: summarize([getattr(r, m) for r in timed if r.tool == t and getattr(r, m) is not None]) for t in tools} for m in metrics}
    med = {t: {m: summary[m][t]["median"] for m in metrics} for t in tools}

    def ratio(ours: float | None, theirs: float | None) -> float | None:
        return ours / theirs if ours and theirs else None

    ratios = {
        "steady_state_throughput_vs_torchrun": ratio(med[RAYTRON]["steady_samples_per_s"], med[TORCHRUN]["steady_samples_per_s"]),
        "end_to_end_speed_vs_torchrun": ratio(med[TORCHRUN]["end_to_end_s"], med[RAYTRON]["end_to_end_s"]),
    }
    if RAY_TRAIN in med:
        ratios["steady_state_throughput_vs_ray_train"] = ratio(med[RAYTRON]["steady_samples_per_s"], med[RAY_TRAIN]["steady_samples_per_s"])
        ratios["end_to_end_speed_vs_ray_train"] = ratio(med[RAY_TRAIN]["end_to_end_s"], med[RAYTRON]["end_to_end_s"])
    phase_medians = {t: _median_phases([r for r in timed if r.tool == t]) for t in tools}
    notes = _notes(args, ratios, med, phase_medians, runs, timed)
    config = {
        **{k: v for k, v in asdict(args).items()}, "repeats": repeats, **info,
        "model": f"mlp recipe: {args.features}-{args.hidden}-{args.hidden}-10, fp32, SGD lr {args.lr} momentum 0.9, cross-entropy",
        "data": f"{args.num_samples} x {args.features} float32 synthetic 10-class samples in WebDataset shards of {args.shard_size_bytes} bytes; "
                f"every tool reads them with raytron's ShardLoader (shuffle buffer {args.shuffle_buffer}, seed 0)",
        "raytron_command": "raytron submit SPEC --wait  (kind: train, 2 workers x 1 CPU, val_split null, checkpoint at the end only)",
        "torchrun_command": "torchrun --nnodes 1 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port FREE bench/_ddp_torchrun_train.py CONFIG",
        "ray_train_command": "python bench/_ddp_raytrain.py GCS STORAGE NAME CONFIG  (ray.init + TorchTrainer(ScalingConfig(num_workers=2)).fit())",
        "order": "one untimed warm-up of each tool, then repetitions with the tool order rotated each time",
        "steady_state": "median samples/s of the logged windows after the first (global samples over rank 0's window time)",
    }
    results = {"summary": summary, "phase_medians_s": phase_medians,
               "runs": [{k: v for k, v in asdict(r).items() if k != "output_tail" or v} for r in runs]}
    write_results("ddp", config, results, ratios, notes, lambda plt: plot_results(plt, timed, summary, ratios, tools, repeats, phase_medians),
                  out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    failed = [r for r in runs if not r.ok]
    for r in failed:
        print(f"FAILED: {r.tool} repeat {r.repeat}: exit {r.exit_code}, timed out {r.timed_out}\n  " + "\n  ".join(r.output_tail), file=sys.stderr)
    return 1 if failed else 0


def _median_phases(runs: list[Run]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in runs for k in r.phases)
    return {k: statistics.median(v) for k in keys if (v := [r.phases[k] for r in runs if k in r.phases])}


def _notes(args: DdpArgs, ratios: dict, med: dict, phases: dict, runs: list[Run], timed: list[Run]) -> list[str]:
    tp, e2e = ratios["steady_state_throughput_vs_torchrun"], ratios["end_to_end_speed_vs_torchrun"]

    def verdict(value: float | None, goal: float) -> str:
        return "not measured" if value is None else f"{'met' if value >= goal else 'NOT met'} ({value:.3f}x)"

    notes = [
        f"Goal 1: raytron's steady-state throughput >= {GOAL_THROUGHPUT}x torchrun's: {verdict(tp, GOAL_THROUGHPUT)}.",
        f"Goal 2: raytron's end-to-end wall time at most 2x torchrun's (torchrun time / raytron time >= {GOAL_END_TO_END}): {verdict(e2e, GOAL_END_TO_END)}.",
    ]
    if RAY_TRAIN in med:
        notes.append(f"Against Ray Train's TorchTrainer: throughput {_x(ratios.get('steady_state_throughput_vs_ray_train'))}, "
                     f"end to end {_x(ratios.get('end_to_end_speed_vs_ray_train'))} (higher is better for raytron).")
    notes.append("Medians (s): " + "; ".join(
        f"{t}: end to end {_f(m['end_to_end_s'])} = start-up {_f(m['startup_s'])} + loop {_f(m['loop_s'])} + after the loop {_f(m['after_loop_s'])}, "
        f"{_f(m['steady_samples_per_s'], 0)} samples/s" for t, m in med.items()) + ".")
    p = phases.get(RAYTRON) or {}
    if p:
        notes.append("raytron's fixed cost, median seconds after launching `raytron submit --wait`: " + _chain(p, [
            ("submitted", "CLI started, spec loaded, package staged, job accepted"), ("runtime_env_setup", "Ray sets up the job's runtime env"),
            ("running", "Jobs API reports RUNNING (CLI poll)"), ("runner_started", "job driver printed its first line (log poll)"),
            ("driver_ray_init", "driver's imports done, ray.init starts"), ("driver_connected", "driver connected"),
            ("actor_processes_up", "both TrainWorker processes up"), ("actors_ready", "both actors constructed (torch + raytron imported)"),
            ("loop_start", "first training step (gloo join, model, DDP wrap, loader)"),
            ("loop_end", "last window logged"), ("checkpoint_done", "final checkpoint written"),
            ("group_done", "result.json written (actors killed just before)"), ("actors_killed", "actors got the kill"),
            ("driver_ray_shutdown", "driver left Ray"), ("job_end", "job driver exited (Ray's record)"),
            ("exit", "CLI noticed and exited"),
        ]) + ". Marked polls are when the CLI saw them (it polls status and logs every 0.1 s for 3 s, then backs off to 1 s); "
           "the other moments come from the job log's and Ray's session logs' own timestamps and from file times.")
    p = phases.get(TORCHRUN) or {}
    if p:
        notes.append("torchrun, median seconds after launch: " + _chain(p, [
            ("process_start", "rank 0's Python started"), ("imports_done", "torch + raytron reader imported"), ("pg_joined", "gloo joined"),
            ("ddp_wrapped", "model built and wrapped in DDP"), ("loop_start", "first step"), ("loop_end", "last window"), ("checkpoint_done", "torch.save + barrier"),
            ("pg_destroyed", "process group destroyed"), ("exit", "torchrun exited")]) + ".")
    p = phases.get(RAY_TRAIN) or {}
    if p:
        notes.append("Ray Train, median seconds after launch: " + _chain(p, [
            ("imports_done", "driver imported ray.train"), ("ray_init_done", "connected to the head"),
            ("worker_fn_start", "train function started on rank 0 (workers up, gloo joined)"), ("ddp_wrapped", "model built and wrapped in DDP"),
            ("loop_start", "first step"),
            ("loop_end", "last window"), ("checkpoint_done", "torch.save + barrier"), ("fit_end", "fit() returned"),
            ("shutdown_done", "ray.shutdown()"), ("exit", "process exited")]) + ".")
    if any(m.get("other_cores") is not None for m in med.values()):
        notes.append("CPU during the steady windows (sampled every 0.5 s): " + "; ".join(
            f"{t}: ranks busy {_f(m['ranks_cpu_util'], 2)} of their 2 cores, other processes {_f(m['other_cores'], 2)} cores" for t, m in med.items())
            + ". On 2 cores every other process's CPU is taken from the ranks; see `cpu_detail` in the JSON for the busiest ones.")
        ours, theirs = med[RAYTRON].get("other_cores"), med[TORCHRUN].get("other_cores")
        if ours is not None and theirs is not None and ours > theirs:
            notes.append(f"During raytron's loop other processes used {ours - theirs:.2f} more cores than during torchrun's. `raytron submit --wait` "
                         "polls the job's status and its whole log every 0.1 s for its first 3 s, then backs off to 1 s (JobManager.watch), and the "
                         "Ray dashboard, its JobHead, the dashboard agent and the GCS answer those polls; this short job's loop falls inside that "
                         "fast-poll window.")
    ends = {(r.steps, round(r.final_loss, 4)) for r in timed if r.final_loss is not None}
    notes.append("Same job check (every tool trains the same seeded model on the same batches): "
                 + (f"every timed run ended at step {next(iter(ends))[0]} with last-window loss {next(iter(ends))[1]:.4f}." if len(ends) == 1
                    else "runs DIFFER in (steps, last-window loss): " + ", ".join(f"{r.tool} #{r.repeat}: ({r.steps}, {r.final_loss})" for r in timed) + "."))
    notes += [
        "Ratios: throughput = raytron's median steady-state samples/s over the baseline's; end to end = the baseline's median wall time over raytron's.",
        "The baselines get the benefit of any doubt: their data path is raytron's own ShardLoader, torchrun needs no cluster, and Ray Train's "
        "driver is a plain process on the head's machine (no job submission); raytron's time includes submitting a job and following its logs.",
        "Everything ran on the same 2-core machine: 2 ranks x 1 CPU each; the load average before each run is in the runs table (`load_1m_before`).",
    ]
    failed = [r for r in runs if not r.ok]
    notes.append(f"{len(failed)} of {len(runs)} runs failed: " + ", ".join(f"{r.tool} #{r.repeat}" for r in failed) if failed
                 else f"All {len(runs)} runs (including the warm-ups) succeeded.")
    return notes


def _chain(p: dict[str, float], steps: list[tuple[str, str]]) -> str:
    """The moments found, in the order they happened."""
    return " -> ".join(f"{p[k]:.2f} {label}" for k, label in sorted(((k, label) for k, label in steps if k in p), key=lambda kl: p[kl[0]]))


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(DdpArgs, "The same DDP job through raytron, torchrun and Ray Train: steady-state throughput and end-to-end time.", argv)
    repeats = args.pick_repeats(quick=1, full=3)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` below still stops a head we started
    settings = Settings.from_env()
    started = False
    if args.address is None and settings.address is None:
        _, started = start_local_head(LocalHeadConfig(home=settings.home))
        if started:
            print(f"started a local Ray head (RAYTRON_HOME={settings.home}); stopped at the end", file=sys.stderr)
    try:
        cluster = connect(args.address, start=False)
        if not cluster.embedded:
            raise SystemExit("the ddp theme compares raytron with torchrun on this machine, so it needs the embedded local head; "
                             "omit --address and RAY_ADDRESS (set RAYTRON_HOME to choose which head)")
        return measure(args, repeats, cluster)
    finally:
        if started:
            stop_local_head(settings.home)


if __name__ == "__main__":
    sys.exit(main())
