"""The `serving` theme's load generator: one process per measured cell, the same code for every target.

    python bench/_serving_load.py '<json config>'

`target: "grpc"` sends batch-1 `ModelInfer` requests ("x" FP32 [1, 784] -> "logits") to `address`
with tritonclient's gRPC client, from `concurrency` closed-loop workers: each sends its next
request when the previous one is answered. `client: "threads"` runs one thread per worker, each
with its own `tritonclient.grpc.InferenceServerClient` and a blocking `infer()`; `client: "aio"`
runs `concurrency` tasks sharing one `tritonclient.grpc.aio.InferenceServerClient`. Every call
decodes the answer (`as_numpy("logits")`), as a real client would.

`target: "onnxruntime"` is the floor: the same worker loop calling `InferenceSession.run` in this
process (threads; one session, 1 intra-op thread like the served copies).

Before the clock starts, one answer is compared with the reference logits and every worker sends
`warmup_per_worker` untimed requests (connections open, code paths warm). The timed part stops
after `requests` requests or `time_budget_s` seconds, whichever comes first. The result is one
line on stdout: `SERVING_LOAD_RESULT {json}` with every latency in milliseconds; the line
`SERVING_LOAD_START` marks the start of the timed part.

Nothing from raytron is imported: the Ray Serve baseline runs this inside its network namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

MODEL, INPUT, OUTPUT = "mlp", "x", "logits"
RESULT_PREFIX = "SERVING_LOAD_RESULT "
START_LINE = "SERVING_LOAD_START"


def _started() -> None:
    """Tell the parent the timed part begins (it snapshots the servers' CPU time on this line)."""
    sys.stdout.write(START_LINE + "\n")
    sys.stdout.flush()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


class _Tally:
    """What the workers record; one list per worker, so appends need no lock."""

    def __init__(self, workers: int, total: int) -> None:
        self.latencies_ms: list[list[float]] = [[] for _ in range(workers)]
        self.ends = [0.0] * workers
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}
        self.tickets = itertools.count()  # next() on it is atomic under the GIL
        self.total = total
        self.start = 0.0
        self.deadline = 0.0
        self.cpu0 = 0.0

    def error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.errors[kind] += 1
        self.first_errors.setdefault(kind, str(exc)[:300])

    def take(self) -> bool:
        """Whether a worker may send one more timed request."""
        return next(self.tickets) < self.total and time.perf_counter() < self.deadline


def _grpc_sync_call(address: str, x: np.ndarray) -> Callable[[], np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    inp = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return lambda: client.infer(MODEL, [inp], client_timeout=30.0).as_numpy(OUTPUT)


def _onnxruntime_call(model_path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def run_threads(make_call: Callable[[], Callable[[], object]], concurrency: int, warmup: int, total: int, budget_s: float) -> _Tally:
    tally = _Tally(concurrency, total)

    def begin() -> None:  # run by the last thread to reach the barrier, before any is released
        _started()
        tally.cpu0 = _cpu_s()
        tally.start = time.perf_counter()
        tally.deadline = tally.start + budget_s

    barrier = threading.Barrier(concurrency, action=begin)

    def worker(k: int) -> None:
        try:
            call = make_call()
            for _ in range(warmup):
                call()
        except Exception as exc:  # noqa: BLE001 - this worker sits the cell out; the others must not wait for it forever
            tally.error(exc)
            call = None
        barrier.wait()
        if call is None:
            return
        lat = tally.latencies_ms[k]
        while tally.take():
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the loop goes on
                tally.error(exc)
                continue
            t1 = time.perf_counter()
            lat.append((t1 - t0) * 1e3)
            tally.ends[k] = t1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


async def _run_aio(address: str, x: np.ndarray, concurrency: int, warmup: int, total: int, budget_s: float) -> _Tally:
    import tritonclient.grpc.aio as aioclient

    tally = _Tally(concurrency, total)
    client = aioclient.InferenceServerClient(address)
    inp = aioclient.InferInput(INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    async def call() -> None:
        (await client.infer(MODEL, [inp], client_timeout=30.0)).as_numpy(OUTPUT)

    async def warm() -> None:
        for _ in range(warmup):
            await call()

    async def worker(k: int) -> None:
        lat = tally.latencies_ms[k]
        while tally.take():
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                tally.error(exc)
                continue
            t1 = time.perf_counter()
            lat.append((t1 - t0) * 1e3)
            tally.ends[k] = t1

    try:
        await asyncio.gather(*(warm() for _ in range(concurrency)))
        _started()
        tally.cpu0 = _cpu_s()
        tally.start = time.perf_counter()
        tally.deadline = tally.start + budget_s
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        await client.close()
    return tally


def _check(answer: np.ndarray, expected: np.ndarray) -> float:
    if answer.shape != expected.shape:
        raise SystemExit(f"answer has shape {list(answer.shape)}, the reference {list(expected.shape)}: the target serves another model")
    return float(np.abs(answer - expected).max())


def main(config: dict) -> dict:
    ref = np.load(config["reference"])
    x, expected = ref["x"], ref["logits"]
    n, warmup, total, budget_s = config["concurrency"], config["warmup_per_worker"], config["requests"], config["time_budget_s"]
    target, client = config["target"], config["client"]
    if target == "onnxruntime":
        run = _onnxruntime_call(config["model_path"])
        diff = _check(run(x), expected)
        path = "onnxruntime.InferenceSession.run (1 intra-op thread) from N threads, in the client process"
        tally = run_threads(lambda: (lambda: run(x)), n, warmup, total, budget_s)
    elif client == "threads":
        diff = _check(_grpc_sync_call(config["address"], x)(), expected)
        path = "tritonclient.grpc.InferenceServerClient(address).infer(...).as_numpy(...) from N threads, one client per thread"
        tally = run_threads(lambda: _grpc_sync_call(config["address"], x), n, warmup, total, budget_s)
    elif client == "aio":
        diff = _check(_grpc_sync_call(config["address"], x)(), expected)
        path = "await tritonclient.grpc.aio.InferenceServerClient(address).infer(...) from N asyncio tasks, one shared client"
        tally = asyncio.run(_run_aio(config["address"], x, n, warmup, total, budget_s))
    else:
        raise SystemExit(f"unknown client {client!r}: threads or aio")
    cpu_s = _cpu_s() - tally.cpu0
    latencies = [v for per in tally.latencies_ms for v in per]
    end = max(tally.ends) if latencies else tally.start
    return {
        "client_path": path, "max_abs_diff": diff, "concurrency": n, "requests": len(latencies),
        "errors": dict(tally.errors), "first_errors": tally.first_errors, "duration_s": end - tally.start,
        "client_cpu_s": cpu_s, "latencies_ms": [round(v, 4) for v in latencies],
    }


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
