"""What both training loops (DDP and DeepSpeed) share: loss, optimizer, learning-rate schedule,
the MFU peak table, and how progress is written (metrics.jsonl rows and `raytron: ...` log lines)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["compute_loss", "build_optimizer", "lr_schedule", "peak_flops", "append_jsonl", "log", "PEAK_BF16_FLOPS"]


def compute_loss(loss_fn, out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cross_entropy" and out.dim() == 3:  # sequence models: flatten positions
        return loss_fn(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
    if kind == "mse":
        return loss_fn(out.float().squeeze(-1), y.float())
    return loss_fn(out.float(), y)


def build_optimizer(t, model: nn.Module) -> torch.optim.Optimizer:
    o = t.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def apply_optimizer_settings(t, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Make the spec's optimizer settings the live ones after a resume.

    A restored optimizer state carries the learning rate, weight decay and momentum it was saved
    with, and a restored LambdaLR its base learning rates; when the spec changed them (a PBT
    exploit: the donor's weights with new hyperparameters), the spec wins. A no-op otherwise.
    """
    o = t.optimizer
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = o.lr
        group["lr"] = o.lr * factor(scheduler.last_epoch)
        group["weight_decay"] = o.weight_decay
        if o.name == "sgd":
            group["momentum"] = o.momentum
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


def lr_schedule(t, total_steps: int):
    warmup, name = t.schedule.warmup_steps, t.schedule.name

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress

    return factor


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def log(message: str) -> None:
    print(f"raytron: {message}", flush=True)
