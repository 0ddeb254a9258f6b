"""The `autoscale` theme's load generator: a bounded step load in its own process.

    python bench/_autoscale_load.py '<json config>'

`phases` is a list of [concurrency, seconds]: `max(concurrency)` closed-loop workers each hold a
`tritonclient.grpc.InferenceServerClient`, and during a phase only the first `concurrency` of them
send (batch-1 `ModelInfer`, "x" FP32 [1, 784] -> "logits", decoded as a client would). A phase ends
after its seconds; the run also stops after `max_requests` requests. Every request is recorded as
[phase, start offset s, latency ms, ok]. One line on stdout: `AUTOSCALE_LOAD_RESULT {json}` with
`t0_wall_s` (time.time() at the start of the first phase, to align with the autoscaler's decisions),
the phase start offsets, the records and the first error of each kind.

Nothing from raytron is imported: the load is a plain tritonclient user.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import numpy as np

MODEL, INPUT, OUTPUT = "mlp", "x", "logits"
RESULT_PREFIX = "AUTOSCALE_LOAD_RESULT "


def main(config: dict) -> dict:
    import tritonclient.grpc as grpcclient

    phases = [(int(c), float(s)) for c, s in config["phases"]]
    workers = max(c for c, _ in phases)
    ref = np.load(config["reference"])
    x, expected = ref["x"], ref["logits"]
    max_requests = int(config["max_requests"])
    state = {"phase": 0, "active": phases[0][0]}
    stop = threading.Event()
    records: list[list[list]] = [[] for _ in range(workers)]  # one list per worker: appends need no lock
    errors: Counter[str] = Counter()
    first_errors: dict[str, str] = {}
    sent = [0] * workers
    clock = {}

    def begin() -> None:  # run once, before any worker is released: every offset is from this instant
        clock["start"], clock["wall"] = time.perf_counter(), time.time()

    ready = threading.Barrier(workers + 1, action=begin)

    def work(k: int) -> None:
        client = grpcclient.InferenceServerClient(config["address"])
        inp = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        try:  # untimed: the connection opens and the answer is checked against onnxruntime's
            answer = client.infer(MODEL, [inp], client_timeout=60).as_numpy(OUTPUT)
            if float(np.abs(answer - expected).max()) > 1e-4:
                state["bad"] = "the target's answer differs from onnxruntime's: it serves another model"
        except Exception as exc:  # noqa: BLE001 - reported as the run's failure below
            state["bad"] = f"first request failed: {type(exc).__name__}: {exc}"
        ready.wait()
        if state.get("bad"):
            return
        mine = records[k]
        while not stop.is_set():
            if k >= state["active"] or sum(sent) >= max_requests:
                stop.wait(0.01)
                continue
            phase = state["phase"]
            sent[k] += 1
            t0 = time.perf_counter()
            try:
                client.infer(MODEL, [inp], client_timeout=float(config.get("timeout_s", 30))).as_numpy(OUTPUT)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported; the load goes on
                ok = False
                kind = type(exc).__name__
                errors[kind] += 1
                first_errors.setdefault(kind, str(exc)[:300])
            t1 = time.perf_counter()
            mine.append([phase, round(t0 - clock["start"], 4), round((t1 - t0) * 1e3, 3), ok])
        client.close()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    ready.wait()
    start, t0_wall = clock["start"], clock["wall"]
    if state.get("bad"):
        raise SystemExit(state["bad"])
    phase_starts = []
    for i, (concurrency, seconds) in enumerate(phases):
        phase_starts.append(round(time.perf_counter() - start, 4))
        state["phase"], state["active"] = i, concurrency
        sys.stdout.write(f"AUTOSCALE_LOAD_PHASE {i} {concurrency} {time.time():.3f}\n")
        sys.stdout.flush()
        time.sleep(seconds)  # the phase's length is what is being generated, not a wait for something
    stop.set()
    for t in threads:
        t.join(120)
    flat = sorted((r for per in records for r in per), key=lambda r: r[1])
    return {"t0_wall_s": t0_wall, "phases": phases, "phase_starts_s": phase_starts, "records": flat, "errors": dict(errors),
            "first_errors": first_errors, "max_requests_reached": sum(sent) >= max_requests}


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
