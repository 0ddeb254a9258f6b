"""Theme `autoscale`: a bounded step load (1 -> 16 -> 1 concurrent tritonclient gRPC clients on loopback)
against `raytron serve --autoscale 1:4` and against a fixed single replica (`raytron serve --replicas 1`),
one after the other, the same model and load.

The model: the `serving` theme's seeded 784-256-10 MLP (ONNX), dynamic batching up to 32 with no
batching delay (bench/_serving_model.py). The load (bench/_autoscale_load.py, its own process):
closed-loop workers with tritonclient's blocking gRPC client, of which 1, then 16, then 1 send, each
phase for a fixed time; every request is recorded. The autoscaler writes each decision to a JSON
lines file (`--autoscale-log`), whose `reached` and `wall_time_s` say when an added replica was
serving (started, ready, and in the gateway's rotation) and when a drained one was gone.

Measured per target: seconds from the step to the second replica serving and to the most replicas,
seconds from the drop back to 1 replica, p50/p99 latency and throughput before, during and after
the step, failed requests (must be 0), and replicas over time (the PNG).

    raytron bench autoscale [--quick]
    python bench/autoscale.py --high-s 90
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _autoscale_load import RESULT_PREFIX
from _autoscale_plot import plot_results
from _harness import BenchArgs, option, parse_args, summarize, write_results
from _serving_model import build_model

BENCH = Path(__file__).resolve().parent
RAYTRON = str(Path(sys.executable).parent / "raytron")
AUTOSCALE, FIXED = "autoscale", "fixed-1"


@dataclass(kw_only=True)
class AutoscaleArgs(BenchArgs):
    """Options of the `autoscale` theme."""

    low_s: float | None = option(None, "Seconds at 1 client before the step (default: 4 with --quick, 10 otherwise).")
    high_s: float | None = option(None, "Seconds at --step-clients (default: 15 / 60).")
    after_s: float | None = option(None, "Seconds at 1 client after the step (default: 15 / 60).")
    step_clients: int = option(16, "Concurrent clients during the step.")
    max_replicas: int = option(4, "MAX of `--autoscale 1:MAX`.")
    interval_s: float = option(0.5, "Autoscaler step interval (`--autoscale-interval-s`).")
    scale_down_window_s: float | None = option(None, "`--scale-down-window-s` (default: 3 with --quick, 15 otherwise).")
    target_in_flight: float = option(1.5, "`--target-in-flight` (1.5, not serve's 4: on 2 cores 16 client threads keep only ~3.5 "
                                            "requests in flight on average, as each spends about as much CPU per request as the server).")
    target_queue_compute: float = option(1.0, "`--target-queue-compute`.")
    max_requests: int = option(1_000_000, "The load stops after this many requests, whatever the phase.")
    max_batch_size: int = option(32, "max_batch_size of the model config (dynamic batching, no delay).")
    startup_timeout_s: float = option(180.0, "Time `raytron serve` has to answer its first request.")
    work_dir: Path | None = option(None, "Folder for the model and the servers' files (default: the system temp folder).")


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    rank = q * (len(xs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def run_target(name: str, args: AutoscaleArgs, model, work: Path, phases: list[list[float]]) -> dict[str, Any]:
    """Start `raytron serve` for `name`, run the step load against it, stop it; returns the raw measurements."""
    from raytron.serving.triton import free_port, server_ready

    port = free_port()
    decisions = work / f"{name}-decisions.jsonl"
    cmd = [RAYTRON, "serve", str(model.repo), "--port", str(port)]
    if name == AUTOSCALE:
        cmd += ["--autoscale", f"1:{args.max_replicas}", "--autoscale-interval-s", str(args.interval_s), "--scale-down-window-s",
                str(args.scale_down_window_s), "--target-in-flight", str(args.target_in_flight), "--target-queue-compute",
                str(args.target_queue_compute), "--autoscale-log", str(decisions)]
    log_path = work / f"{name}-serve.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        serve = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.startup_timeout_s
        while not server_ready(address):
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"raytron serve ({name}) did not become ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        startup_s = time.monotonic() - started
        config = {"address": address, "phases": phases, "reference": str(model.reference_path), "max_requests": args.max_requests}
        load = subprocess.run([sys.executable, str(BENCH / "_autoscale_load.py"), json.dumps(config)], capture_output=True, text=True,
                              timeout=sum(s for _, s in phases) + 300)
        lines = [line for line in load.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if load.returncode != 0 or not lines:
            raise RuntimeError(f"the load process failed ({load.returncode}): {(load.stderr or load.stdout)[-2000:]}")
        result = json.loads(lines[-1][len(RESULT_PREFIX):])
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)  # drains and stops every replica
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
    records = [json.loads(line) for line in decisions.read_text().splitlines()] if decisions.exists() else []
    return {"load": result, "decisions": records, "startup_s": round(startup_s, 2), "serve_exit_code": serve.returncode,
            "serve_log_tail": log_path.read_text()[-3000:], "command": " ".join(cmd)}


def analyse(name: str, raw: dict[str, Any], phases: list[list[float]]) -> dict[str, Any]:
    """Per-phase latency and throughput, scaling times and the replica timeline of one target."""
    load = raw["load"]
    t0, starts = load["t0_wall_s"], load["phase_starts_s"]
    records = load["records"]
    out: dict[str, Any] = {"target": name, "startup_s": raw["startup_s"], "failed": sum(1 for r in records if not r[3]),
                           "requests": len(records), "errors": load["errors"], "first_errors": load["first_errors"],
                           "serve_exit_code": raw["serve_exit_code"]}
    for i, label in enumerate(("before", "during", "after")[:len(phases)]):
        ok = [r[2] for r in records if r[0] == i and r[3]]
        out[f"p50_{label}_ms"] = _percentile(ok, 0.5)
        out[f"p99_{label}_ms"] = _percentile(ok, 0.99)
        out[f"throughput_{label}_rps"] = round(len(ok) / phases[i][1], 1)
    decisions = raw["decisions"]
    step_wall, drop_wall = t0 + starts[1], t0 + starts[2]
    if decisions:
        top = max(d["reached"] for d in decisions if step_wall <= d["wall_time_s"] <= drop_wall) if any(
            step_wall <= d["wall_time_s"] <= drop_wall for d in decisions) else 1
        second = next((d for d in decisions if d["wall_time_s"] >= step_wall and d["reached"] >= 2), None)
        most = next((d for d in decisions if d["wall_time_s"] >= step_wall and d["reached"] >= top), None)
        back = next((d for d in decisions if d["wall_time_s"] >= drop_wall and d["reached"] == 1), None)
        out["max_replicas_during_step"] = top
        out["step_to_second_replica_s"] = round(second["wall_time_s"] - step_wall, 2) if second else None
        out["step_to_max_replicas_s"] = round(most["wall_time_s"] - step_wall, 2) if most and top > 1 else None
        out["drop_to_one_replica_s"] = round(back["wall_time_s"] - drop_wall, 2) if back else None
        # What held the count up after the drop: steps whose recommendation was above 1, by the metric asking for more.
        after = [d for d in decisions if d["wall_time_s"] >= drop_wall and (back is None or d["wall_time_s"] <= back["wall_time_s"])]
        out["steps_after_drop"] = len(after)
        out["steps_after_drop_recommending_more_than_1"] = sum(1 for d in after if d["recommendation"] > 1)
        out["metric_asking_for_more_after_drop"] = {m: sum(1 for d in after if (d["metrics"].get(m, {}).get("proposal") or 0) > 1)
                                                    for m in ("queue_compute_ratio", "in_flight_per_replica")}
        first_up = next((d for d in decisions if d["desired"] > d["current"]), None)
        out["first_scale_up"] = first_up and {k: first_up[k] for k in ("current", "desired", "reason", "metrics")}
        timeline = [[0.0, decisions[0]["current"]]] + [[round(d["wall_time_s"] - t0, 2), d["reached"]] for d in decisions if d["wall_time_s"] >= t0]
        out["replicas"] = timeline + [[round(starts[-1] + phases[-1][1], 2), timeline[-1][1]]]
    else:
        out["max_replicas_during_step"] = 1
        out["replicas"] = [[0.0, 1], [round(starts[-1] + phases[-1][1], 2), 1]]
    by_second: dict[int, list[float]] = {}
    for r in records:
        if r[3]:
            by_second.setdefault(int(r[1]), []).append(r[2])
    out["p99_by_second"] = [[s + 0.5, round(_percentile(v, 0.99), 3)] for s, v in sorted(by_second.items())]
    out["phase_starts_s"] = starts
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(AutoscaleArgs, "Step load 1 -> 16 -> 1 clients against raytron serve --autoscale and a fixed single replica.", argv)
    if args.address:
        raise SystemExit("the autoscale theme runs everything on this machine; omit --address")
    args.low_s = args.low_s or (4.0 if args.quick else 10.0)
    args.high_s = args.high_s or (15.0 if args.quick else 60.0)
    args.after_s = args.after_s or (15.0 if args.quick else 60.0)
    args.scale_down_window_s = args.scale_down_window_s or (3.0 if args.quick else 15.0)
    phases = [[1, args.low_s], [args.step_clients, args.high_s], [1, args.after_s]]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` below still stops the server
    work = Path(tempfile.mkdtemp(prefix="raytron-bench-autoscale-", dir=args.work_dir))
    try:
        model = build_model(work, max_batch_size=args.max_batch_size, batch_delay_us=0)
        runs, raw = {}, {}
        for name in (AUTOSCALE, FIXED):
            print(f"{name}: starting raytron serve and the step load {phases}", file=sys.stderr)
            raw[name] = run_target(name, args, model, work, phases)
            runs[name] = analyse(name, raw[name], phases)
            r = runs[name]
            print(f"{name}: {r['requests']} requests, {r['failed']} failed; p99 before/during/after {_ms(r['p99_before_ms'])}/"
                  f"{_ms(r['p99_during_ms'])}/{_ms(r['p99_after_ms'])} ms; max replicas {r['max_replicas_during_step']}, "
                  f"second replica serving {r.get('step_to_second_replica_s')} s after the step", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(args, phases, runs, raw)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def report(args: AutoscaleArgs, phases, runs: dict[str, dict], raw: dict[str, dict]) -> int:
    a, f = runs[AUTOSCALE], runs[FIXED]
    ratios = {
        "step_p99_fixed_over_autoscale": _ratio(f["p99_during_ms"], a["p99_during_ms"]),
        "step_throughput_autoscale_vs_fixed": _ratio(a["throughput_during_rps"], f["throughput_during_rps"]),
        "after_p99_fixed_over_autoscale": _ratio(f["p99_after_ms"], a["p99_after_ms"]),
    }
    failed = a["failed"] + f["failed"]
    notes = [
        f"Requests failed: {a['failed']} (autoscale) and {f['failed']} (fixed) of {a['requests']} and {f['requests']}: "
        + ("goal MET (0 failed)" if failed == 0 else "goal NOT MET (errors: " + json.dumps({**a['first_errors'], **f['first_errors']})[:300] + ")") + ".",
        f"Time to scale: the second replica served {a.get('step_to_second_replica_s')} s after the step to {args.step_clients} clients, "
        f"{a['max_replicas_during_step']} replicas {a.get('step_to_max_replicas_s')} s after; back to 1 replica "
        f"{a.get('drop_to_one_replica_s')} s after the load dropped (scale-down window {args.scale_down_window_s:g} s, "
        f"interval {args.interval_s:g} s). Each scale-up is: one interval to observe, then a tritonserver start until ServerReady.",
        f"p99 latency before/during/after the step: autoscale {_ms(a['p99_before_ms'])}/{_ms(a['p99_during_ms'])}/{_ms(a['p99_after_ms'])} ms, "
        f"fixed single replica {_ms(f['p99_before_ms'])}/{_ms(f['p99_during_ms'])}/{_ms(f['p99_after_ms'])} ms; throughput during the step "
        f"{a['throughput_during_rps']} vs {f['throughput_during_rps']} req/s.",
        f"Scale-down: after the drop {a.get('steps_after_drop_recommending_more_than_1')} of {a.get('steps_after_drop')} steps still "
        f"recommended more than 1 replica (by metric: {json.dumps(a.get('metric_asking_for_more_after_drop'))}); the scale-down window keeps "
        "the largest recommendation of its last seconds, so each such step restarts the wait: a noisy metric near its target delays the "
        "scale-down well beyond the window (HPA behaves the same; a higher target or a longer interval smooths it).",
        f"This machine has {os.cpu_count()} cores shared by the load process, the gateway and every replica: added replicas cannot add "
        "compute here, so the comparison shows the control loop (time to scale, zero failures while replicas join and drain, the "
        "count coming back down), not the capacity a real multi-core or multi-node deployment gains.",
        f"First scale-up decision: {json.dumps(a.get('first_scale_up'))[:600]}",
    ]
    summary = {}
    for label in ("before", "during", "after"):
        for metric in (f"p50_{label}_ms", f"p99_{label}_ms", f"throughput_{label}_rps"):
            summary[metric] = {name: summarize([r[metric]] if r[metric] is not None else []) for name, r in runs.items()}
    config = {**asdict(args), "phases": phases, "commands": {n: raw[n]["command"] for n in raw},
              "model": "784-256-10 MLP fp32 ONNX, dynamic batching up to max_batch_size, no delay; batch-1 requests"}
    results = {"summary": summary, "runs": [{k: v for k, v in r.items() if k not in ("replicas", "p99_by_second")} for r in runs.values()],
               "timelines": {n: {"replicas": r["replicas"], "p99_by_second": r["p99_by_second"]} for n, r in runs.items()},
               "decisions": raw[AUTOSCALE]["decisions"], "serve_log_tail": {n: raw[n]["serve_log_tail"] for n in raw}}
    paths = write_results("autoscale", config, results, ratios, notes, lambda plt: plot_results(plt, runs, phases), out_dir=args.out_dir)
    print("\n".join(notes[:3]), file=sys.stderr)
    print(f"report: {paths['.md']}", file=sys.stderr)
    return 0 if failed == 0 and a["max_replicas_during_step"] > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
