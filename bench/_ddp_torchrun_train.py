"""The torchrun baseline of bench/ddp.py: one rank of the hand-written DDP job.

    torchrun --nnodes 1 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port PORT \\
        bench/_ddp_torchrun_train.py '<LoopConfig as JSON>'

Rank and world size come from torchrun's environment; the process group is gloo over `env://`.
"""

import time

PROCESS_START = time.time()  # before the heavy imports: they are part of a rank's start-up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch.distributed as dist  # noqa: E402

from _ddp_loop import LoopConfig, run_loop, write_events  # noqa: E402


def main() -> int:
    cfg = LoopConfig(**json.loads(sys.argv[1]))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    events = {"process_start": PROCESS_START, "imports_done": time.time()}
    dist.init_process_group("gloo")
    events["pg_joined"] = time.time()
    result = run_loop(cfg, rank=rank, world_size=world_size, events=events)
    dist.destroy_process_group()
    events["pg_destroyed"] = time.time()
    if rank == 0:
        write_events(cfg.run_dir, events, {"torch_threads": result["torch_threads"], "step": result["step"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
