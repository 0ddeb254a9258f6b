"""One rank of a `deepspeed` theme run: raytron's own training loop (DDP or DeepSpeed) in this process.

    python bench/_deepspeed_worker.py SPEC_JSON_FILE RANK WORLD_SIZE PORT OUT_JSON

Writes the rank's peak resident memory (VmHWM, reset after imports so it counts training only) up
to its first checkpoint and over the whole run, its resident memory before the model was built,
and the loop's metrics rows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# This script's folder holds bench/deepspeed.py, which would shadow the deepspeed package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> int:
    spec_file, rank, world_size, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch  # noqa: F401  (imported before the baseline so every variant starts from the same footprint)

    from raytron.cluster import parse_spec
    from raytron.trainers.deepspeed import _import_deepspeed
    from raytron.trainers.loop import new_loop

    _import_deepspeed(on_gpu=False)  # DDP variants import it too: same baseline for all
    spec = parse_spec(json.loads(Path(spec_file).read_text()))
    loop = new_loop(spec, rank=rank, world_size=world_size)
    loop.join("127.0.0.1", port)
    # The peak as the first checkpoint begins is training's own; the run's peak also holds rank 0's
    # consolidation of the ZeRO shards into one fp32 state dict. The loop marks each phase it enters.
    phases: dict[str, int] = {}
    mark = loop._mark

    def watch(phase: str) -> None:
        phases.setdefault(phase, _status_bytes("VmHWM"))
        mark(phase)

    loop._mark = watch
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux proc(5)).
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _status_bytes("VmRSS")
    started = time.perf_counter()
    result = loop.run()
    elapsed = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    loop.leave()
    out.write_text(json.dumps({"rank": rank, "rss_before_bytes": rss_before, "peak_rss_bytes": phases.get("checkpoint", peak),
                               "peak_rss_with_checkpoint_bytes": peak, "run_s": elapsed, "history": result["history"], "step": result["step"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
