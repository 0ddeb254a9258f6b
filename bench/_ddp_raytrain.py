"""The Ray Train baseline of bench/ddp.py: the hand-written loop inside `TorchTrainer` on a running head.

    python bench/_ddp_raytrain.py GCS_ADDRESS STORAGE_PATH RUN_NAME '<LoopConfig as JSON>'

What a Ray Train user runs: a driver that connects to the cluster (`ray.init(address=...)`), builds
a `TorchTrainer` with 2 workers and calls `fit()`. Ray Train starts the workers and their gloo
process group; every worker runs `_ddp_loop.run_loop`. The driver prints one line
`DDP_BENCH_RAYTRAIN {json}` with its own phase times (wall clock).
"""

import time

PROCESS_START = time.time()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import ray  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

BENCH_DIR = str(Path(__file__).resolve().parent)


def train_loop_per_worker(config: dict) -> None:
    start = time.time()
    import sys

    sys.path.insert(0, config["bench_dir"])  # the workers run in Ray's worker processes: make _ddp_loop importable
    import ray.train
    from _ddp_loop import LoopConfig, run_loop, write_events

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    # Ray Train has already joined the gloo process group when this function starts.
    events = {"worker_fn_start": start, "imports_done": time.time()}
    cfg = LoopConfig(**config["loop"])
    result = run_loop(cfg, rank=rank, world_size=world_size, events=events)
    if rank == 0:
        write_events(cfg.run_dir, events, {"torch_threads": result["torch_threads"], "step": result["step"]})


def main() -> int:
    gcs_address, storage_path, name, loop_json = sys.argv[1:5]
    times = {"process_start": PROCESS_START, "imports_done": time.time()}
    ray.init(address=gcs_address, log_to_driver=False)
    times["ray_init_done"] = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"bench_dir": BENCH_DIR, "loop": json.loads(loop_json)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        # A unique `name`: an existing one under storage_path would be silently resumed (shared/environment.md).
        run_config=RunConfig(storage_path=storage_path, name=name),
    )
    times["fit_start"] = time.time()
    trainer.fit()
    times["fit_end"] = time.time()
    ray.shutdown()
    times["shutdown_done"] = time.time()
    print("DDP_BENCH_RAYTRAIN " + json.dumps(times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
