"""Functions the tests run as `kind: python` jobs on a real local Ray head."""

import os
import time
from pathlib import Path


def write_file(path: str, text: str) -> dict:
    Path(path).write_text(text)
    print(f"wrote {path}", flush=True)
    return {"path": path, "bytes": len(text)}


def fail(message: str) -> None:
    raise ValueError(f"job failed on purpose: {message}")


def sleep_forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    while True:
        time.sleep(0.5)


def rank_info() -> dict:
    return {"rank": int(os.environ["RAYTRON_RANK"]), "world_size": int(os.environ["RAYTRON_WORLD_SIZE"]), "pid": os.getpid()}


def slow_mlp(manifest, hidden: int = 32, delay_s: float = 0.0, hang_rank: int = -1, hang_at_call: int = -1, pid_dir: str | None = None):
    """An MLP for training tests that can be slowed down, write its rank's pid, or hang one rank."""
    import torch.distributed as dist
    from torch import nn

    from raytron.trainers.recipes import MLP

    rank = dist.get_rank() if dist.is_initialized() else 0
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        Path(pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MLP(int(manifest.field("x").shape[0]), 10, hidden=hidden)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if rank == hang_rank and self.calls == hang_at_call:
                time.sleep(600)  # a stalled rank: its peers wait in the gradient all-reduce
            if delay_s:
                time.sleep(delay_s)
            return self.inner(x)

    return Slow()


def broken_model(manifest, **_):
    """A model function with a bug: training tests check that its traceback reaches the job's logs."""
    raise RuntimeError("model function broke on purpose")
