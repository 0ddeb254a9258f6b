"""The DDP training loop a user writes by hand: what the torchrun and Ray Train baselines of
bench/ddp.py run on every rank.

It does the work raytron's `TrainLoop` does for the job bench/ddp.py submits, and nothing more:
seed, build `MLP(features, classes, hidden)`, wrap it in DDP, read this rank's part of the same
shards through raytron's `ShardLoader` (so the data path is identical), SGD with momentum in fp32,
cross-entropy, and every `log_every_steps` one all-reduce of (loss sum, steps, samples) so rank 0
logs the global samples/s over the window, exactly as raytron does. At the end rank 0 saves the
model and optimizer (a user's final checkpoint), then all ranks meet at a barrier.

Rank 0 writes `metrics.jsonl` (same row keys as raytron's) and `events.json`: wall-clock times
(`time.time()`) of the phases the caller and the loop passed through.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.trainers.recipes import MLP

__all__ = ["LoopConfig", "run_loop", "write_events"]


@dataclass(kw_only=True)
class LoopConfig:
    """What every baseline rank trains; bench/ddp.py sets it to match raytron's spec."""

    manifest: str
    """Shard directory (the same shards raytron reads)."""
    run_dir: str
    """Folder for metrics.jsonl, events.json and the final checkpoint."""
    global_batch_size: int = 256
    shuffle_buffer: int = 1000
    seed: int = 0
    hidden: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    epochs: int = 1
    log_every_steps: int = 20


def run_loop(cfg: LoopConfig, *, rank: int, world_size: int, events: dict[str, float]) -> dict[str, Any]:
    """Train on an already initialized process group; returns rank's step count and last logged row."""
    run_dir = Path(cfg.run_dir)
    manifest = Manifest.load(cfg.manifest)
    fields = {f.name: f for f in manifest.schema}
    num_classes = max(int(k) for k in manifest.stats["y"]["class_counts"]) + 1
    torch.manual_seed(cfg.seed)
    model = MLP(int(fields["x"].shape[0]), num_classes, hidden=cfg.hidden)
    events["model_built"] = time.time()
    ddp = nn.parallel.DistributedDataParallel(model)
    events["ddp_wrapped"] = time.time()
    loader = ShardLoader(ReaderConfig(manifest=cfg.manifest, batch_size=cfg.global_batch_size // world_size, shuffle_buffer=cfg.shuffle_buffer,
                                      seed=cfg.seed, rank=rank, world_size=world_size), manifest=manifest)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    total_steps = cfg.epochs * len(loader)
    step = 0
    window = {"loss": 0.0, "n": 0, "samples": 0, "t0": time.perf_counter()}
    last: dict[str, Any] = {}
    events["loop_start"] = time.time()
    for epoch in range(cfg.epochs):
        for batch in loader:
            x, y = batch["x"].float(), batch["y"]
            loss = loss_fn(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            window["loss"] += float(loss.detach())
            window["n"] += 1
            window["samples"] += int(y.shape[0])
            if step % cfg.log_every_steps == 0 or step == total_steps:
                elapsed = max(1e-9, time.perf_counter() - window["t0"])
                stats = torch.tensor([window["loss"], window["n"], window["samples"]], dtype=torch.float64)
                dist.all_reduce(stats)
                last = {"step": step, "epoch": epoch, "loss": float(stats[0] / stats[1]), "samples_per_s": float(stats[2]) / elapsed, "time": time.time()}
                if rank == 0:
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(last) + "\n")
                window.update(loss=0.0, n=0, samples=0, t0=time.perf_counter())
    events["loop_end"] = time.time()
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, run_dir / "final.pt")
    dist.barrier()  # every rank waits for the checkpoint; also avoids gloo's crash at exit (shared/environment.md)
    events["checkpoint_done"] = time.time()
    return {"rank": rank, "step": step, "last": last, "torch_threads": torch.get_num_threads(), "config": asdict(cfg)}


def write_events(run_dir: str | Path, events: dict[str, float], extra: dict[str, Any] | None = None) -> None:
    """Rank 0's phase times (and anything else worth keeping) as `events.json`."""
    path = Path(run_dir) / "events.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"events": events, **(extra or {})}, indent=1))
