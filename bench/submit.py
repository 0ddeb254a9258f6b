"""Theme `submit`: how long `raytron submit SPEC --wait` takes, against `ray job submit` sending the same job.

Both commands run as subprocesses, alternating, against the same cluster. For each run we time,
from starting the command: its first line of the job's own output (the line holding `--marker`)
and its exit after the job SUCCEEDED. The baseline gets exactly the `submit_job` arguments raytron
sends (`JobManager.prepare`: entrypoint, runtime_env, metadata, entrypoint resources); preparing
them is done before its clock starts, while raytron's clock includes its own spec loading. On the
embedded head, the folder each job writes under `storage.path` is removed after its run.

    raytron bench submit [--quick] [--address URL]
    python bench/submit.py --repeats 5 --timeout-s 60
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _harness import BenchArgs, option, parse_args, summarize, write_results

from raytron.cluster import JobManager, LocalHeadConfig, Settings, connect, load_spec, start_local_head, stop_local_head

REPO = Path(__file__).resolve().parent.parent
RAYTRON = "raytron submit --wait"
BASELINE = "ray job submit"
GOAL_SPEEDUP = 3.0
# Lines each tool prints once the Jobs API has accepted the job (their own wording).
_SUBMITTED = {RAYTRON: re.compile(r"raytron: submitted (\S+) to "), BASELINE: re.compile(r"Job '(\S+)' submitted successfully")}


@dataclass(kw_only=True)
class SubmitArgs(BenchArgs):
    """Options of the `submit` theme."""

    spec: Path = option(REPO / "examples" / "hello.yaml", "The job spec both tools submit (a trivial job measures overhead).")
    marker: str = option("hello from rank", "Text of the job's first output line of interest.")
    timeout_s: float = option(120.0, "Limit for one run; a run past it is killed and its job stopped.")
    budget_s: float = option(1500.0, "Limit for the whole measurement; runs left when it is spent count as failed.")


@dataclass(kw_only=True)
class Run:
    """One timed command."""

    tool: str
    repeat: int
    """0-based repetition; -1 for the untimed warm-up."""
    submission_id: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    status: str | None = None
    """The job's final status as the cluster reports it."""
    first_output_s: float | None = None
    """Command start to the line holding the marker."""
    end_to_end_s: float | None = None
    """Command start to the command's exit."""
    submitted_s: float | None = None
    """Command start to the tool's own line saying the job was accepted."""
    on_cluster_s: float | None = None
    """The job's start to end time as the cluster recorded them (runtime env set-up + the job)."""
    after_job_end_s: float | None = None
    """The cluster's end time to the command's exit: how long the tool took to notice."""
    output_tail: list[str] = field(default_factory=list)
    """Last lines of output, kept only for a run that failed."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status == "SUCCEEDED" and self.first_output_s is not None


def time_command(tool: str, cmd: list[str], env: dict[str, str], marker: str, timeout_s: float) -> tuple[Run, list[str], float]:
    """Run `cmd`, reading its merged stdout+stderr line by line with monotonic timestamps.

    Returns the run, its output lines, and the wall-clock time it exited (to compare with the
    cluster's record of when the job ended).
    """
    run = Run(tool=tool, repeat=0)
    lines: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True)

    def read() -> None:
        for line in proc.stdout:
            now = time.monotonic() - t0
            lines.append(line.rstrip("\n"))
            if run.first_output_s is None and marker in line:
                run.first_output_s = now
            if run.submitted_s is None and (m := _SUBMITTED[tool].search(line)):
                run.submitted_s, run.submission_id = now, m.group(1)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run.exit_code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and anything it spawned
        run.exit_code = proc.wait()
    run.end_to_end_s = time.monotonic() - t0
    exited_at = time.time()
    reader.join(timeout=5)
    return run, lines, exited_at


def measure(args: SubmitArgs, repeats: int) -> int:
    spec = load_spec(args.spec)
    cluster = connect(args.address)
    manager = JobManager(cluster)
    bin_dir = Path(sys.executable).parent
    raytron_bin, ray_bin = bin_dir / "raytron", bin_dir / "ray"
    for exe in (raytron_bin, ray_bin):
        if not exe.is_file():
            raise SystemExit(f"{exe} not found beside {sys.executable}; run this with the virtual environment raytron is installed in")
    # Unbuffered for both, so a line's timestamp is when the tool wrote it, not when a pipe buffer filled.
    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    ray_env = dict(base_env, **(cluster.head.env() if cluster.embedded else {}))
    raytron_cmd = [str(raytron_bin), "submit", str(args.spec), "--wait"] + (["--address", args.address] if args.address else [])

    def baseline_cmd() -> list[str]:
        kw = manager.prepare(spec, submission_id=f"{spec.name}-ray-{secrets.token_hex(4)}")
        cmd = [str(ray_bin), "job", "submit", "--address", cluster.address, "--submission-id", kw["submission_id"],
               "--runtime-env-json", json.dumps(kw["runtime_env"]), "--metadata-json", json.dumps(kw["metadata"])]
        if kw.get("entrypoint_num_cpus"):
            cmd += ["--entrypoint-num-cpus", str(kw["entrypoint_num_cpus"])]
        if kw.get("entrypoint_num_gpus"):
            cmd += ["--entrypoint-num-gpus", str(kw["entrypoint_num_gpus"])]
        return cmd + ["--", *shlex.split(kw["entrypoint"])]

    deadline = time.monotonic() + args.budget_s
    # Warm-up (untimed) first, then alternate, swapping which tool goes first each repetition.
    plan = [(RAYTRON, -1), (BASELINE, -1)]
    for i in range(repeats):
        plan += [(RAYTRON, i), (BASELINE, i)] if i % 2 == 0 else [(BASELINE, i), (RAYTRON, i)]
    runs: list[Run] = []
    for tool, repeat in plan:
        left_s = deadline - time.monotonic()
        if left_s < 5:
            runs.append(Run(tool=tool, repeat=repeat, output_tail=[f"not run: --budget-s {args.budget_s:g} spent"]))
            continue
        cmd = raytron_cmd if tool == RAYTRON else baseline_cmd()
        env = base_env if tool == RAYTRON else ray_env
        run, lines, exited_at = time_command(tool, cmd, env, args.marker, min(args.timeout_s, left_s))
        run.repeat = repeat
        if run.submission_id:
            if run.timed_out:
                manager.stop(run.submission_id)
            record = manager.get(run.submission_id)
            run.status = record.status
            if record.start_time_s and record.end_time_s:
                run.on_cluster_s = record.end_time_s - record.start_time_s
                run.after_job_end_s = exited_at - record.end_time_s
            _remove_run_dir(spec, run.submission_id, cluster.embedded)
        if not run.ok:
            run.output_tail = lines[-25:]
        runs.append(run)
        label = "warm-up" if repeat < 0 else f"#{repeat + 1}/{repeats}"
        print(f"{tool:22s} {label:8s} first output {_s(run.first_output_s)}  end to end {_s(run.end_to_end_s)}  "
              f"exit {run.exit_code}  {run.status or '?'}", file=sys.stderr)
    return report(args, repeats, cluster.address, runs)


def report(args: SubmitArgs, repeats: int, address: str, runs: list[Run]) -> int:
    timed = [r for r in runs if r.repeat >= 0 and r.ok]
    summary = {
        metric: {tool: summarize([getattr(r, metric) for r in timed if r.tool == tool and getattr(r, metric) is not None]) for tool in (RAYTRON, BASELINE)}
        for metric in ("first_output_s", "end_to_end_s", "submitted_s", "on_cluster_s", "after_job_end_s")
    }

    def speedup(metric: str) -> float | None:
        ours, theirs = summary[metric][RAYTRON]["median"], summary[metric][BASELINE]["median"]
        return theirs / ours if ours and theirs else None

    ratios = {
        "submit_wait_end_to_end_speedup_vs_ray_job_submit": speedup("end_to_end_s"),
        "submit_wait_first_output_speedup_vs_ray_job_submit": speedup("first_output_s"),
    }
    failed = [r for r in runs if not r.ok]
    e2e = ratios["submit_wait_end_to_end_speedup_vs_ray_job_submit"]
    met = e2e is not None and e2e >= GOAL_SPEEDUP
    med = {t: {m: summary[m][t]["median"] for m in summary} for t in (RAYTRON, BASELINE)}
    notes = [
        f"Goal: `raytron submit --wait` of a trivial job >= {GOAL_SPEEDUP:g}x faster end to end than `ray job submit`: "
        + ("not measured" if e2e is None else f"{'met' if met else 'NOT met'} ({e2e:.2f}x)."),
        "Ratios are the baseline's median time over raytron's (higher is better; 1.0 = same speed).",
        "Where the time goes (medians, s): " + "; ".join(
            f"{t}: accepted after {_s(med[t]['submitted_s'])}, on the cluster {_s(med[t]['on_cluster_s'])}, "
            f"exit {_s(med[t]['after_job_end_s'])} after the job ended" for t in (RAYTRON, BASELINE)) + ".",
        "The baseline's submit_job arguments are prepared before its clock starts; raytron's clock includes loading the spec.",
        f"{len(failed)} of {len(runs)} runs failed." if failed else f"All {len(runs)} runs (including 2 warm-ups) succeeded.",
    ]
    config = {
        **asdict(args), "repeats": repeats, "cluster_address": address,
        "raytron_command": f"raytron submit {args.spec} --wait" + (f" --address {args.address}" if args.address else ""),
        "baseline_command": "ray job submit --address URL --submission-id ID --runtime-env-json JSON --metadata-json JSON "
                            "[--entrypoint-num-cpus N] -- python -m raytron.cluster.runner",
        "order": "one untimed warm-up of each, then alternating, the first tool swapped each repetition",
    }
    results = {"summary": summary, "runs": [{k: v for k, v in asdict(r).items() if k != "output_tail" or v} for r in runs]}

    def plot(plt):
        return _plot(plt, timed, summary, ratios, repeats)

    write_results("submit", config, results, ratios, notes, plot, out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    for r in failed:
        print(f"FAILED: {r.tool} repeat {r.repeat}: exit {r.exit_code}, status {r.status}, timed out {r.timed_out}\n  "
              + "\n  ".join(r.output_tail), file=sys.stderr)
    return 1 if failed else 0


def _plot(plt, timed: list[Run], summary: dict, ratios: dict, repeats: int):
    colors = {RAYTRON: "#1f77b4", BASELINE: "#ff7f0e"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    metrics = [("first_output_s", "first job output", "submit_wait_first_output_speedup_vs_ray_job_submit"),
               ("end_to_end_s", "end to end (exit after SUCCEEDED)", "submit_wait_end_to_end_speedup_vs_ray_job_submit")]
    width = 0.36
    for g, (metric, _label, ratio_key) in enumerate(metrics):
        for k, tool in enumerate((RAYTRON, BASELINE)):
            x = g + (k - 0.5) * width
            ax.bar(x, summary[metric][tool]["median"] or 0, width * 0.92, color=colors[tool], alpha=0.75, label=tool if g == 0 else None)
            values = [getattr(r, metric) for r in timed if r.tool == tool and getattr(r, metric) is not None]
            jitter = [x + width * 0.25 * ((i % 5) - 2) / 2 for i in range(len(values))]
            ax.scatter(jitter, values, s=14, color="black", zorder=3, label="individual runs" if g == 0 and k == 0 else None)
        top = max([getattr(r, metric) or 0 for r in timed] or [0])
        ratio = ratios.get(ratio_key)
        ax.text(g, top * 1.04, "n/a" if ratio is None else f"raytron {ratio:.2f}x faster", ha="center", va="bottom", fontsize=10, weight="bold")
    ax.set_xticks(range(len(metrics)), [m[1] for m in metrics])
    ax.set_ylabel("seconds from starting the command (lower is better)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_title(f"median of {repeats} runs each (bars), every run (dots)")
    ax.legend(loc="upper left", fontsize=9)
    # Where the time goes: the three consecutive phases of a run, medians stacked.
    phases = [("submitted_s", "start-up + submit", "#9ecae1"), ("on_cluster_s", "on the cluster", "#3182bd"),
              ("after_job_end_s", "job end -> exit", "#fdae6b")]
    for k, tool in enumerate((RAYTRON, BASELINE)):
        bottom = 0.0
        for metric, label, color in phases:
            value = summary[metric][tool]["median"] or 0
            bx.bar(k, value, 0.6, bottom=bottom, color=color, edgecolor="white", label=label if k == 0 else None)
            if value > 0.15:
                bx.text(k, bottom + value / 2, f"{value:.1f}", ha="center", va="center", fontsize=9)
            bottom += value
    bx.set_xticks([0, 1], [RAYTRON, BASELINE])
    bx.set_ylabel("seconds (medians)")
    bx.set_title("where the time goes")
    bx.legend(fontsize=9, loc="upper left")
    fig.suptitle("submit: raytron submit --wait vs ray job submit, same job on the same cluster", fontsize=12)
    fig.tight_layout()
    return fig


def _remove_run_dir(spec, submission_id: str, embedded: bool) -> None:
    """Delete the `<storage.path>/<name>/<submission id>` folder the job wrote, so a bench leaves no litter.

    Only for the embedded head: its jobs write on this machine, where the path names the same folder.
    """
    if embedded and not spec.storage.is_uri:
        shutil.rmtree(Path(spec.storage.path).expanduser() / spec.name / submission_id, ignore_errors=True)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(SubmitArgs, "Time `raytron submit --wait` against `ray job submit` sending the same job.", argv)
    repeats = args.pick_repeats(quick=3, full=10)
    # A SIGTERM (e.g. from a CI timeout) must still reach the `finally` that stops a head we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings.from_env()
    started = False
    if args.address is None and settings.address is None:
        t0 = time.monotonic()
        _, started = start_local_head(LocalHeadConfig(home=settings.home))
        if started:
            print(f"started a local Ray head in {time.monotonic() - t0:.1f} s (RAYTRON_HOME={settings.home}); stopped at the end", file=sys.stderr)
    try:
        return measure(args, repeats)
    finally:
        if started:
            stop_local_head(settings.home)


if __name__ == "__main__":
    sys.exit(main())
