"""Theme `serving`: batch-1 inference of one small model through raytron's serving stack and its
baselines, in one run: throughput (req/s) and p50/p99 latency at several client concurrencies.

The model: a seeded 784-256-10 MLP (fp32) exported once to ONNX; requests carry "x" FP32 [1, 784]
and get "logits" back. Targets, all serving that same file:

- onnxruntime (in-process): `InferenceSession.run` in the load process, no server: the floor.
- Triton (direct): one local replica (`raytron.serving.triton.start_replica`: the real tritonserver
  of the nvidia-pytriton wheel, running the ONNX file through raytron's Python-backend runner).
- gateway + Triton: raytron's gRPC gateway (`raytron.serving.gateway`, a thread of this process,
  as `raytron serve` runs it) in front of that same replica: raytron's stack.
- Ray Serve: a Ray Serve deployment running the file with onnxruntime behind Serve's gRPC ingress,
  which speaks Triton's GRPCInferenceService (`bench/_serving_rayserve.py`), run in a private
  network namespace (Ray Serve binds `[::]` whatever it is told) with private Ray and home folders.

The load (`bench/_serving_load.py`, a fresh process per cell, the same code for every gRPC target;
the Ray Serve one joins the namespace with `nsenter --net`): `--concurrency` closed-loop workers
with tritonclient's gRPC client (`--client aio`: asyncio tasks sharing one aio client, which loaded
the servers best here; `threads`: blocking `infer()` from one thread per worker). A cell stops after
`--requests` requests or `--cell-time-s` seconds. Each target gets an untimed warm-up first; each
cell starts with a few untimed requests per worker. Repeats rotate the target order; medians across
repeats are reported, with the load average before each cell and the CPU the servers used.

Goals: gateway >= 0.85x direct Triton's throughput with <= 0.3 ms added p50 at every concurrency;
raytron's stack >= 5x Ray Serve's throughput at concurrency 8 with at most a fifth of its p99.

    raytron bench serving [--quick]
    python bench/serving.py --repeats 3
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import BenchArgs, option, parse_args, summarize, write_results
from _serving_load import RESULT_PREFIX, START_LINE
from _serving_model import build_model
from _serving_plot import plot_results
from _serving_targets import (
    GATEWAY, ONNXRUNTIME, RAY_SERVE, TRITON, GatewayUnavailable, Target, cpu_delta, cpu_seconds,
    start_gateway_target, start_rayserve_target, start_triton_target,
)

BENCH = Path(__file__).resolve().parent
GOAL_GATEWAY_THROUGHPUT, GOAL_GATEWAY_ADDED_P50_MS = 0.85, 0.3
GOAL_VS_RAYSERVE_CONCURRENCY, GOAL_VS_RAYSERVE = 8, 5.0
CLIENT_PATHS: dict[str, str] = {}
"""target -> the client code path its load process reported."""
_LOADS: set[subprocess.Popen] = set()
"""Load processes running now: killed by `main` if it is stopped mid-cell."""


@dataclass(kw_only=True)
class ServingArgs(BenchArgs):
    """Options of the `serving` theme."""

    concurrency: str = option("1,8,32", "Client concurrencies (closed-loop workers), comma-separated.")
    requests: int | None = option(None, "Timed requests per cell, at most (default: 2000 with --quick, 20000 otherwise).")
    cell_time_s: float | None = option(None, "Time budget of one cell's timed part, in seconds (default: 2 with --quick, 15 otherwise).")
    warmup_requests: int | None = option(None, "Untimed requests per target before its first cell, at concurrency 8 (default: 200 / 2000).")
    warmup_per_worker: int = option(5, "Untimed requests every worker sends at the start of each cell (connections opened, paths warm).")
    client: str = option("aio", "gRPC client code path for every server: aio (tritonclient.grpc.aio tasks) or threads (tritonclient.grpc, a thread per worker).")
    max_batch_size: int = option(32, "max_batch_size of the model config; Ray Serve's @serve.batch gets the same.")
    batch_delay_us: int = option(100, "Dynamic-batching wait (Triton's max_queue_delay_microseconds; Ray Serve's batch_wait_timeout_s).")
    no_batching: bool = option(False, "Serve without dynamic batching (Triton and Ray Serve alike).")
    skip_gateway: bool = option(False, "Leave out the gateway target.")
    skip_rayserve: bool = option(False, "Leave out the Ray Serve baseline.")
    rayserve_startup_timeout_s: float = option(240.0, "Time Ray + Serve have to answer their first request.")
    budget_s: float = option(1800.0, "Limit for all cells; cells left when it is spent are not run.")
    work_dir: Path | None = option(None, "Folder for the model, the replicas' and Ray's temporary files (default: the system temp folder).")


@dataclass(kw_only=True)
class Cell:
    """One target at one concurrency, one repetition."""

    repeat: int
    """0-based; -1 for a target's untimed warm-up."""
    concurrency: int
    target: str
    position: int
    """Place of this target in its round (targets rotate between rounds)."""
    ok: bool = False
    requests: int | None = None
    errors: int | None = None
    duration_s: float | None = None
    throughput_rps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    server_cores: float | None = None
    """CPU the target's server processes used during the timed part, in cores (0 for the floor)."""
    client_cores: float | None = None
    """CPU of the load process over the timed part, in cores."""
    idle_servers_cores: float | None = None
    """CPU the other, idle targets' processes used meanwhile (Ray idles heavier than Triton)."""
    load_1m_before: float | None = None
    max_abs_diff: float | None = None
    """The target's answer for the reference input against onnxruntime's."""
    error: str | None = None


def _percentile(sorted_ms: list[float], q: float) -> float:
    rank = q * (len(sorted_ms) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (rank - lo)


def run_cell(cell: Cell, target: Target, others: list[Target], args: ServingArgs, model, requests: int, time_s: float) -> None:
    """Run one load process against `target` and fill `cell` from its result."""
    config = {"target": "onnxruntime" if target.name == ONNXRUNTIME else "grpc", "address": target.address, "client": args.client,
              "concurrency": cell.concurrency, "requests": requests, "time_budget_s": time_s, "warmup_per_worker": args.warmup_per_worker,
              "reference": str(model.reference_path), "model_path": str(model.onnx_path)}
    cmd = [sys.executable, str(BENCH / "_serving_load.py"), json.dumps(config)]
    if target.netns_pid is not None:
        cmd = ["nsenter", f"--net=/proc/{target.netns_pid}/ns/net", "--", *cmd]
    cell.load_1m_before = round(os.getloadavg()[0], 2)
    server_pids = target.pids()
    other_pids = set().union(*(t.pids() for t in others)) - server_pids if others else set()
    marks: dict[str, Any] = {}
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    _LOADS.add(proc)

    def read() -> None:
        for line in proc.stdout:
            if line.startswith(START_LINE):
                marks["t0"], marks["server0"], marks["other0"] = time.monotonic(), cpu_seconds(server_pids), cpu_seconds(other_pids)
            elif line.startswith(RESULT_PREFIX):
                marks["t1"], marks["server1"], marks["other1"] = time.monotonic(), cpu_seconds(server_pids), cpu_seconds(other_pids)
                marks["result"] = json.loads(line[len(RESULT_PREFIX):])
            else:
                lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=time_s + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the load process only
        code = proc.wait()
        lines.append(f"killed: the cell ran past {time_s + 120:g} s")
    _LOADS.discard(proc)
    reader.join(timeout=10)
    result = marks.get("result")
    if code != 0 or result is None:
        cell.error = f"load process exited with code {code}: " + " | ".join(lines[-6:])[-600:]
        return
    latencies = sorted(result["latencies_ms"])
    cell.requests, cell.errors, cell.duration_s = len(latencies), sum(result["errors"].values()), result["duration_s"]
    cell.max_abs_diff = result["max_abs_diff"]
    if result["errors"]:
        cell.error = json.dumps(result["first_errors"])[:600]
    if latencies and cell.duration_s > 0:
        cell.throughput_rps = len(latencies) / cell.duration_s
        cell.p50_ms, cell.p90_ms, cell.p99_ms = (_percentile(latencies, q) for q in (0.5, 0.9, 0.99))
        cell.max_ms = latencies[-1]
        cell.ok = cell.errors == 0 and cell.max_abs_diff < 1e-4
    wall = marks["t1"] - marks["t0"] if "t0" in marks else None
    if wall:
        cell.server_cores = cpu_delta(marks["server0"], marks["server1"]) / wall
        cell.idle_servers_cores = cpu_delta(marks["other0"], marks["other1"]) / wall
        cell.client_cores = result["client_cpu_s"] / wall
    CLIENT_PATHS[target.name] = result["client_path"]


# --------------------------------------------------------------------------- results


def medians(cells: list[Cell]) -> dict[str, dict[int, dict[str, float | None]]]:
    """target -> concurrency -> median over repeats of throughput, p50 and p99 (successful cells only)."""
    out: dict[str, dict[int, dict[str, float | None]]] = {}
    for cell in cells:
        if cell.repeat < 0 or not cell.ok:
            continue
        out.setdefault(cell.target, {}).setdefault(cell.concurrency, {"_cells": []})["_cells"].append(cell)
    for per in out.values():
        for c, slot in per.items():
            group = slot.pop("_cells")
            per[c] = {k: statistics.median(getattr(x, k) for x in group) for k in ("throughput_rps", "p50_ms", "p99_ms", "server_cores", "client_cores")
                      if all(getattr(x, k) is not None for x in group)}
            per[c]["n"] = len(group)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def evaluate(med: dict, concurrencies: list[int]) -> tuple[dict[str, float | None], list[str], dict[str, Any]]:
    """Ratios (raytron over baseline, higher is better), goal lines and the goal verdicts."""
    get = lambda t, c, k: med.get(t, {}).get(c, {}).get(k)  # noqa: E731 - a lookup, named for brevity
    ratios: dict[str, float | None] = {}
    gateway_ok, parts = [], []
    for c in concurrencies:
        thr = _ratio(get(GATEWAY, c, "throughput_rps"), get(TRITON, c, "throughput_rps"))
        p50g, p50d = get(GATEWAY, c, "p50_ms"), get(TRITON, c, "p50_ms")
        added = None if p50g is None or p50d is None else p50g - p50d
        ratios[f"gateway_throughput_vs_direct_triton_c{c}"] = thr
        ratios[f"direct_triton_p50_over_gateway_p50_c{c}"] = _ratio(p50d, p50g)
        gateway_ok.append(None if thr is None or added is None else (thr >= GOAL_GATEWAY_THROUGHPUT and added <= GOAL_GATEWAY_ADDED_P50_MS))
        parts.append(f"c={c}: {_x(thr)} throughput, {_ms(added, signed=True)} p50")
    for c in concurrencies:
        ratios[f"stack_throughput_vs_rayserve_c{c}"] = _ratio(get(GATEWAY, c, "throughput_rps"), get(RAY_SERVE, c, "throughput_rps"))
        ratios[f"rayserve_p99_over_stack_p99_c{c}"] = _ratio(get(RAY_SERVE, c, "p99_ms"), get(GATEWAY, c, "p99_ms"))
    for c in concurrencies:  # what the stack would be without the gateway, for reference
        ratios[f"direct_triton_throughput_vs_rayserve_c{c}"] = _ratio(get(TRITON, c, "throughput_rps"), get(RAY_SERVE, c, "throughput_rps"))
    verdict_gw = None if any(v is None for v in gateway_ok) else all(gateway_ok)
    lines = [f"Goal 1, gateway >= {GOAL_GATEWAY_THROUGHPUT}x direct Triton's throughput with <= {GOAL_GATEWAY_ADDED_P50_MS} ms added p50 "
             f"at each concurrency: {_verdict(verdict_gw)} ({'; '.join(parts)})."]
    c = GOAL_VS_RAYSERVE_CONCURRENCY
    thr, p99 = ratios.get(f"stack_throughput_vs_rayserve_c{c}"), ratios.get(f"rayserve_p99_over_stack_p99_c{c}")
    verdict_rs = None if thr is None or p99 is None else (thr >= GOAL_VS_RAYSERVE and p99 >= GOAL_VS_RAYSERVE)
    lines.append(f"Goal 2, raytron's stack (gateway + replica) >= {GOAL_VS_RAYSERVE:g}x Ray Serve's throughput at concurrency {c} with at most "
                 f"1/{GOAL_VS_RAYSERVE:g} of its p99: {_verdict(verdict_rs)} ({_x(thr)} throughput: {_f(get(GATEWAY, c, 'throughput_rps'), 0)} vs "
                 f"{_f(get(RAY_SERVE, c, 'throughput_rps'), 0)} req/s; p99 {_ms(get(GATEWAY, c, 'p99_ms'))} vs {_ms(get(RAY_SERVE, c, 'p99_ms'))}, "
                 f"Ray Serve's over the stack's {_x(p99)}).")
    return ratios, lines, {"gateway_vs_direct_triton": verdict_gw, "stack_vs_rayserve": verdict_rs}


def _verdict(v: bool | None) -> str:
    return "not measured" if v is None else ("MET" if v else "NOT MET")


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _ms(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3f} ms" if signed else f"{v:.3f} ms")


def notes_for(cells: list[Cell], med: dict, goal_lines: list[str], targets: dict[str, Target], skipped: dict[str, str],
              args: ServingArgs, concurrencies: list[int]) -> list[str]:
    notes = list(goal_lines)
    get = lambda t, c, k: med.get(t, {}).get(c, {}).get(k)  # noqa: E731
    c1 = concurrencies[0]
    notes.append(f"Latency at concurrency {c1}, median p50: " + ", ".join(f"{t} {_ms(get(t, c1, 'p50_ms'))}" for t in (ONNXRUNTIME, TRITON, GATEWAY, RAY_SERVE) if t in med)
                 + ". onnxruntime's is the floor (one session.run, no network); the rest is the serving path's cost.")
    for name, reason in skipped.items():
        notes.append(f"{name}: NOT MEASURED: {reason}")
    if GATEWAY in skipped:
        notes.append("The gateway target is the one piece left to wire: bench/_serving_targets.py `start_gateway_target` is written against "
                     "the planned API `GatewayThread(GatewayConfig(host, port=0, replicas=[address], token=None, metrics_port=None, production_repo))`.")
    paths = sorted(set(CLIENT_PATHS.values()))
    notes.append("Client: a fresh load process per cell (bench/_serving_load.py), " + "; ".join(paths) + ". The same code loads every server "
                 f"({args.client}); each cell stops at {args.requests} requests or {args.cell_time_s:g} s.")
    rs = targets.get(RAY_SERVE)
    if rs is not None:
        iso = rs.info.get("isolation", {})
        notes.append(f"Ray Serve: {rs.info.get('config')}; started in {rs.info.get('startup_s')} s inside `unshare -n` (private loopback), "
                     f"RAY_TMPDIR and HOME in a temp folder, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; its load process joined the namespace with nsenter. "
                     f"Isolation check (after start-up and after the last cell): {'OK' if iso.get('ok') else 'FAILED'}: "
                     f"{iso.get('processes')} Ray processes, none outside the private namespace, none listening in ours; inside it they listened on "
                     f"{', '.join(iso.get('listening_in_private_netns', []))}.")
    notes.append("Serving config: Triton runs the ONNX file through raytron's Python-backend runner (onnxruntime, 1 intra-op thread, 1 instance)"
                 + ("" if args.no_batching else f", dynamic batching up to {args.max_batch_size} with {args.batch_delay_us} us delay; Ray Serve gets "
                    f"@serve.batch(max_batch_size={args.max_batch_size}, batch_wait_timeout_s={args.batch_delay_us / 1e6:g}) and 1 intra-op thread") + ".")
    timed = [c for c in cells if c.repeat >= 0 and c.ok]

    def cores(t: str, key: str) -> str:
        values = [getattr(c, key) for c in timed if c.target == t and getattr(c, key) is not None]
        return _f(statistics.median(values)) if values else "-"

    if timed:
        notes.append("CPU during the timed parts (median cores): " + "; ".join(f"{t}: server {cores(t, 'server_cores')}, client {cores(t, 'client_cores')}"
                                                                         for t in med)
                     + f". Client and servers share this machine's {os.cpu_count()} cores: each throughput is that of client + server together.")
    if rs is not None:
        idle = [c.idle_servers_cores for c in timed if c.target != RAY_SERVE and c.idle_servers_cores is not None]
        notes.append(f"Idle targets kept using {_f(statistics.median(idle) if idle else None)} cores (median) while another target was measured "
                     "(Ray's processes above all; an idle Triton and gateway use next to nothing). Every target stays up for the whole run so that "
                     "repeats can interleave; that CPU is taken from raytron's cells, not Ray Serve's (`idle_servers_cores` in the runs table).")
    failed = [c for c in cells if not c.ok]
    notes.append(f"{len(failed)} of {len(cells)} cells failed: " + "; ".join(f"{c.target} c={c.concurrency} #{c.repeat}: {c.error}" for c in failed)
                 if failed else f"All {len(cells)} cells (warm-ups included) succeeded; every target answered the reference input like onnxruntime.")
    return notes


# --------------------------------------------------------------------------- the run


def measure(args: ServingArgs, work: Path, targets: dict[str, Target], skipped: dict[str, str], model, repeats: int) -> int:
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    order = [t for t in (ONNXRUNTIME, TRITON, GATEWAY, RAY_SERVE) if t in targets]
    deadline = time.monotonic() + args.budget_s
    plan = [(-1, 8, name, k) for k, name in enumerate(order)]
    for r in range(repeats):
        for ci, c in enumerate(concurrencies):
            shift = (r * len(concurrencies) + ci) % len(order)
            plan += [(r, c, name, k) for k, name in enumerate(order[shift:] + order[:shift])]
    cells: list[Cell] = []
    for repeat, c, name, position in plan:
        cell = Cell(repeat=repeat, concurrency=c, target=name, position=position)
        cells.append(cell)
        if time.monotonic() > deadline:
            cell.error = f"not run: --budget-s {args.budget_s:g} spent"
            continue
        warm = repeat < 0
        run_cell(cell, targets[name], [t for t in targets.values() if t is not targets[name]], args, model,
                 args.warmup_requests if warm else args.requests, args.cell_time_s)
        print(f"{'warm-up' if warm else f'repeat {repeat + 1}/{repeats}'} c={c:<3} {name:<25} "
              + (f"{_f(cell.throughput_rps, 0):>8} req/s  p50 {_ms(cell.p50_ms)}  p99 {_ms(cell.p99_ms)}  server {_f(cell.server_cores)} cores"
                 if cell.ok else f"FAILED: {cell.error}"), file=sys.stderr)
    rs = targets.get(RAY_SERVE)
    if rs is not None:
        rs.info["isolation"] = _merge_isolation(rs.info.get("isolation_at_start", {}), rs.check_isolation())
    med = medians(cells)
    ratios, goal_lines, verdicts = evaluate(med, concurrencies)
    timed = [c for c in cells if c.repeat >= 0]
    summary: dict[str, dict[str, Any]] = {}
    for c in concurrencies:
        for metric in ("throughput_rps", "p50_ms", "p99_ms"):
            summary[f"{metric} c={c}"] = {t: summarize([getattr(x, metric) for x in timed if x.target == t and x.concurrency == c and x.ok]) for t in order}
    notes = notes_for(cells, med, goal_lines, targets, skipped, args, concurrencies)
    config = {**asdict(args), "concurrencies": concurrencies, "repeats_used": repeats, "targets": order, "skipped": skipped,
              "model": "784-256-10 MLP, fp32, ONNX (torch legacy exporter), batch-1 requests x FP32 [1,784] -> logits FP32 [1,10]",
              "client_paths": CLIENT_PATHS, "target_info": {n: t.info for n, t in targets.items()},
              "rayserve_command": "unshare -n sh -c 'ip link set lo up && exec python bench/_serving_rayserve.py <json>' (HOME, RAY_TMPDIR private; "
                                  "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); load: nsenter --net=/proc/<driver>/ns/net -- python bench/_serving_load.py <json>"}
    results = {"summary": summary, "medians": {t: {str(c): v for c, v in per.items()} for t, per in med.items()}, "goals": verdicts,
               "runs": [asdict(c) for c in cells]}
    paths = write_results("serving", config, results, ratios, notes,
                          lambda plt: plot_results(plt, timed, med, order, concurrencies, ratios, verdicts, repeats), out_dir=args.out_dir)
    print("\n".join(goal_lines), file=sys.stderr)
    print(f"report: {paths['.md']}", file=sys.stderr)
    if skipped:
        print(f"incomplete: not measured: {', '.join(skipped)} (see the notes)", file=sys.stderr)
    return 0 if all(c.ok for c in cells) and not skipped else 1


def _merge_isolation(first: dict, last: dict) -> dict:
    if not first:
        return last
    return {**last, "ok": bool(first.get("ok")) and bool(last.get("ok")), "at_start": first}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(ServingArgs, "Batch-1 inference through raytron's gateway + Triton, Triton alone, Ray Serve and in-process onnxruntime.", argv)
    if args.client not in ("aio", "threads"):
        raise SystemExit(f"`--client` ({args.client!r}) must be aio or threads")
    if args.address:
        raise SystemExit("the serving theme runs everything on this machine (Ray Serve in a private Ray of its own); omit --address")
    repeats = args.pick_repeats(quick=1, full=3)
    args.requests = args.requests or (2000 if args.quick else 20_000)
    args.cell_time_s = args.cell_time_s or (2.0 if args.quick else 15.0)
    args.warmup_requests = args.warmup_requests or (200 if args.quick else 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the `finally` below still stops every server
    work = Path(tempfile.mkdtemp(prefix="raytron-bench-serving-", dir=args.work_dir))
    targets: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    try:
        model = build_model(work, max_batch_size=args.max_batch_size, batch_delay_us=0 if args.no_batching else args.batch_delay_us)
        targets[ONNXRUNTIME] = Target(name=ONNXRUNTIME)
        triton = targets[TRITON] = start_triton_target(model)
        print(f"Triton replica ready on {triton.address} in {triton.info['startup_s']} s", file=sys.stderr)
        if not args.skip_gateway:
            try:
                targets[GATEWAY] = start_gateway_target(triton, model)
                print(f"gateway ready on {targets[GATEWAY].address}", file=sys.stderr)
            except GatewayUnavailable as exc:
                skipped[GATEWAY] = str(exc)
                print(f"gateway: {exc}", file=sys.stderr)
        if not args.skip_rayserve:
            try:
                rs = targets[RAY_SERVE] = start_rayserve_target(model, max_batching=not args.no_batching,
                                                                timeout_s=args.rayserve_startup_timeout_s)
                rs.info["isolation_at_start"] = rs.check_isolation()
                print(f"Ray Serve ready in {rs.info['startup_s']} s (private network namespace); isolation "
                      f"{'OK' if rs.info['isolation_at_start']['ok'] else 'FAILED'}", file=sys.stderr)
            except RuntimeError as exc:
                skipped[RAY_SERVE] = str(exc)
                print(f"Ray Serve: {exc}", file=sys.stderr)
        return measure(args, work, targets, skipped, model, repeats)
    finally:
        for proc in list(_LOADS):  # stopped mid-cell: the load process runs in a session of its own
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name in (GATEWAY, RAY_SERVE, TRITON):  # the gateway before the replica it fronts
            if name in targets:
                try:
                    targets[name].stop()
                except Exception as exc:  # noqa: BLE001 - stop the others regardless, and say so
                    print(f"stopping {name} failed: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
