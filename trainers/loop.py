"""One data-parallel training process: the loop every rank runs.

It joins the process group (gloo on CPU, NCCL on GPU) with `train.collective_timeout_s` as the
collective timeout, builds the recipe with the same seed on every rank, wraps it in DDP, reads its
share of the shards through `ShardLoader` (per-rank batch = global batch / world size), and trains
with torch.autocast (bf16 on CPU and GPU, fp16 with a GradScaler on GPU). Rank 0 writes checkpoints
(weights, optimizer, the reader's position) and metrics; a restarted group resumes from the latest
checkpoint at exactly the next sample.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from raytron.datasets.batch_cache import cached_batches
from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.trainers.checkpoint import Checkpoint, latest_checkpoint, load_model_state, load_optimizer_state, save_checkpoint
from raytron.trainers.errors import CheckpointError
from raytron.trainers.recipes import Recipe, build_model
from raytron.trainers.spec import TrainJobSpec
from raytron.trainers.steps import append_jsonl, apply_optimizer_settings, build_optimizer, compute_loss, log, lr_schedule, peak_flops

__all__ = ["TrainLoop", "Reporter", "RestoreHook", "new_loop"]

#: Called on every rank with each metrics row (after the all-reduce, so every rank passes the same
#: numbers) and, at checkpoints, with the checkpoint directory on rank 0 (None on the others).
#: The Ray Train launcher passes these on to `ray.train.report`.
Reporter = Callable[[dict[str, Any], "Path | None"], None]
#: Called on rank 0 right after a resume with the module's state as restored and the checkpoint
#: it came from (the tune trials check a PBT exploit's weights against the donor's with it).
RestoreHook = Callable[[dict[str, torch.Tensor], Checkpoint], None]


def new_loop(spec: TrainJobSpec, *, rank: int, world_size: int, report: Reporter | None = None, on_restore: RestoreHook | None = None) -> "TrainLoop":
    """The loop of `spec`'s strategy: `TrainLoop` (DDP) or `DeepSpeedLoop` (imports DeepSpeed only then)."""
    if spec.train.strategy == "deepspeed":
        from raytron.trainers.deepspeed import DeepSpeedLoop

        return DeepSpeedLoop(spec, rank=rank, world_size=world_size, report=report, on_restore=on_restore)
    return TrainLoop(spec, rank=rank, world_size=world_size, report=report, on_restore=on_restore)


class TrainLoop:
    """The state of one rank; `progress()` may be called from another thread while `run()` works."""

    def __init__(self, spec: TrainJobSpec, *, rank: int, world_size: int, report: Reporter | None = None, on_restore: RestoreHook | None = None):
        self.spec, self.rank, self.world_size, self.report, self.on_restore = spec, rank, world_size, report, on_restore
        self.step = 0
        self.phase = "starting"
        self.updated_at = time.time()

    def progress(self) -> dict[str, Any]:
        return {"rank": self.rank, "step": self.step, "phase": self.phase, "age_s": time.time() - self.updated_at, "pid": os.getpid()}

    def _mark(self, phase: str) -> None:
        self.phase, self.updated_at = phase, time.time()

    # ------------------------------------------------------------------ setup

    def join(self, master_addr: str, master_port: int) -> None:
        t = self.spec.train
        backend = "nccl" if self.spec.resources.gpus_per_worker and torch.cuda.is_available() else "gloo"
        self._mark("joining")
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=t.collective_timeout_s))

    def leave(self) -> None:
        if dist.is_initialized():
            try:
                dist.barrier()  # gloo crashed at exit in 2 of 8 runs without it (shared/environment.md)
            finally:
                dist.destroy_process_group()

    # ------------------------------------------------------------------ training

    def run(self) -> dict[str, Any]:
        spec, t = self.spec, self.spec.train
        device = torch.device("cuda", torch.cuda.current_device()) if (spec.resources.gpus_per_worker and torch.cuda.is_available()) else torch.device("cpu")
        run_dir = spec.run_dir
        ckpt_root = run_dir / "checkpoints"
        manifest = Manifest.load(t.data.manifest)
        torch.manual_seed(t.seed)
        recipe = build_model(t.model, manifest)
        model = recipe.module.to(device)
        resume = latest_checkpoint(ckpt_root)
        meta: dict[str, Any] = {}
        if resume is not None:
            meta = resume.meta
            if meta.get("manifest_sha256") != manifest.sha256:
                raise CheckpointError(f"{resume.path} was written for shards with manifest sha256 {str(meta.get('manifest_sha256'))[:16]}..., "
                                      f"but `train.data.manifest` now has {manifest.sha256[:16]}...; use another `name` or `storage.path` to start afresh")
            model.load_state_dict(load_model_state(resume))
        ddp = nn.parallel.DistributedDataParallel(model) if self.world_size > 1 else model
        loader = ShardLoader(ReaderConfig(
            manifest=t.data.manifest, split=t.data.split, batch_size=t.global_batch_size // self.world_size, shuffle_buffer=t.data.shuffle_buffer,
            seed=t.seed, rank=self.rank, world_size=self.world_size, num_workers=t.data.loader_workers,
        ), manifest=manifest)
        total_steps = min(x for x in (t.steps, (t.epochs or 0) * len(loader) or None) if x)
        optimizer = build_optimizer(t, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(t, total_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
        if resume is not None:
            self._restore(resume, meta, optimizer, scheduler, scaler, loader)
            if self.on_restore is not None and self.rank == 0:
                self.on_restore(model.state_dict(), resume)
        self.step = int(meta.get("step", 0))
        self.total_steps = total_steps
        loss_fn = nn.CrossEntropyLoss() if t.loss == "cross_entropy" else nn.MSELoss()
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self._begin(meta)
        if self.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            log(f"training {spec.name}: {self.world_size} worker(s) on {device.type}, {t.precision}, global batch {t.global_batch_size} "
                 f"({t.global_batch_size // self.world_size} per worker), {len(loader)} steps/epoch, {total_steps} steps in all"
                 + (f"; resumed from {resume.path.name}" if resume else "")
                 + ("; already trained that far, nothing to do" if self.step >= total_steps else ""))
        while self.step < total_steps:
            epoch = loader.epoch
            for batch in loader:
                self._mark("step")
                x = recipe.inputs(batch).to(device, non_blocking=True)
                y = recipe.targets(batch).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = ddp(x)
                    loss = compute_loss(loss_fn, out, y, t.loss)
                self._mark("backward")  # the gradient all-reduce happens in here
                scaler.scale(loss).backward()
                if t.optimizer.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), t.optimizer.grad_clip_norm)
                scaler.step(optimizer)
                if t.precision == "fp16":
                    scaler.update()
                    if scaler.get_scale() < 1e-4:
                        raise FloatingPointError(f"fp16 loss scale collapsed to {scaler.get_scale():.2e} at step {self.step + 1}: the loss overflows in fp16; use `train.precision: bf16`")
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self._count(float(loss.detach()), int(y.shape[0]))
                self._after_step(recipe, epoch, scheduler, device,
                                 lambda epoch=epoch: self._checkpoint(ckpt_root, model, optimizer, scheduler, scaler, loader, manifest, self.last, epoch),
                                 lambda: self._evaluate(model, recipe, manifest, loss_fn, device, autocast_dtype))
                if self.step >= total_steps:
                    break
            self._after_epoch(loader, epoch, lambda: self._evaluate(model, recipe, manifest, loss_fn, device, autocast_dtype))
        self._mark("done")
        return {"rank": self.rank, "step": self.step, "metrics": self.last, "history": self.history}

    # ------------------------------------------------------------------ pieces
    # Shared by every strategy's loop: the throughput window, the metrics rows and log lines, the
    # checkpoint cadence and the end-of-epoch evaluation.

    def _begin(self, meta: dict[str, Any]) -> None:
        """Reset the per-run bookkeeping; `meta` is the resumed checkpoint's (its metrics stay the last row)."""
        self.metrics_file = self.spec.run_dir / "metrics.jsonl"
        self.window: dict[str, float] = {"loss": 0.0, "n": 0, "samples": 0, "t0": time.perf_counter()}
        self.history: list[dict[str, Any]] = []
        self.last: dict[str, Any] = dict(meta.get("metrics") or {})
        self._eval_step = -1  # the step last evaluated at

    def _count(self, loss_sum: float, samples: int, micro_batches: int = 1) -> None:
        """Add one optimizer step's `micro_batches` losses (summed) and samples to the throughput window."""
        self.window["loss"] += loss_sum
        self.window["n"] += micro_batches
        self.window["samples"] += samples

    def _after_step(self, recipe: Recipe, epoch: int, scheduler, device, checkpoint: Callable[[], None],
                    evaluate: Callable[[], dict[str, float]] | None) -> None:
        """Log a metrics row, evaluate (`train.eval_every_steps`) and checkpoint when `self.step` is due.

        Evaluation comes before the checkpoint, so the checkpoint's metrics (and what a reporter
        sees with it) hold the validation numbers of this very step. Checkpoint and evaluation time
        is left out of throughput.
        """
        t = self.spec.train
        if self.step % t.log_every_steps == 0 or self.step == self.total_steps:
            self.last = self._log_window(recipe, epoch, scheduler, device)
            self.history.append(self.last)
        if evaluate is not None and t.eval_every_steps and t.data.val_split and (self.step % t.eval_every_steps == 0 or self.step == self.total_steps):
            started = time.perf_counter()
            self._record_eval(epoch, evaluate())
            self.window["t0"] += time.perf_counter() - started
        if self.step % t.checkpoint.every_steps == 0 or self.step == self.total_steps:
            started = time.perf_counter()
            checkpoint()
            self.window["t0"] += time.perf_counter() - started

    def _after_epoch(self, loader: ShardLoader, epoch: int, evaluate: Callable[[], dict[str, float]] | None) -> None:
        """After the loader's pass: evaluate at the end of an epoch or of the run (`evaluate` None: never)."""
        if loader.epoch == epoch and self.step < self.total_steps:
            raise RuntimeError("the data loader yielded no batches")  # guards against an endless loop
        epoch_done = loader.batches_consumed == 0  # the loader moved on to the next epoch
        if evaluate is None or not self.spec.train.data.val_split or not (epoch_done or self.step >= self.total_steps) or self._eval_step == self.step:
            return
        self._record_eval(epoch, evaluate())

    def _record_eval(self, epoch: int, result: dict[str, float]) -> None:
        self._eval_step = self.step
        self.last = {**self.last, **result}
        if self.history and self.history[-1].get("step") == self.step:
            self.history[-1] = self.last
        if self.rank == 0:
            val = {k: v for k, v in self.last.items() if k.startswith("val_")}
            append_jsonl(self.metrics_file, {"step": self.step, "epoch": epoch, **val})
            log(f"epoch {epoch} step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))

    def _restore(self, ckpt: Checkpoint, meta: dict, optimizer, scheduler, scaler, loader: ShardLoader) -> None:
        opt_state = load_optimizer_state(ckpt)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(meta["scheduler"])
        apply_optimizer_settings(self.spec.train, optimizer, scheduler)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        loader.load_state_dict(meta["data"])

    def _checkpoint(self, root: Path, model, optimizer, scheduler, scaler, loader: ShardLoader, manifest: Manifest, metrics: dict, epoch: int) -> None:
        self._mark("checkpoint")
        saved = None
        if self.rank == 0:
            saved = save_checkpoint(root, step=self.step, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(), keep=self.spec.train.checkpoint.keep, meta={
                "epoch": epoch, "spec": json.loads(self.spec.to_json()), "data": loader.state_dict(), "metrics": metrics,
                "manifest_sha256": manifest.sha256, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "world_size": self.world_size, "total_steps": self.total_steps,
            })
        if dist.is_initialized():
            dist.barrier()  # no rank runs ahead of a checkpoint a restart would resume from
        if self.report is not None:
            self.report(dict(metrics, step=self.step, epoch=epoch), saved.path if saved is not None else None)

    def _log_window(self, recipe: Recipe, epoch: int, scheduler, device) -> dict[str, Any]:
        self._mark("log")
        window = self.window
        elapsed = max(1e-9, time.perf_counter() - window["t0"])
        stats = torch.tensor([window["loss"], window["n"], window["samples"]], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(stats)
        loss = float(stats[0] / stats[1])
        samples_per_s = float(stats[2]) / elapsed
        row: dict[str, Any] = {"step": self.step, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0], "samples_per_s": samples_per_s, "time": time.time()}
        if recipe.tokens_per_sample:
            row["tokens_per_s"] = samples_per_s * recipe.tokens_per_sample
            peak = peak_flops(device)
            if peak:
                row["mfu"] = row["tokens_per_s"] * recipe.flops_per_token / (peak * self.world_size)
        if self.rank == 0:
            append_jsonl(self.metrics_file, row)
            extra = f", {row['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in row else ""
            extra += f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
            # `raytron: step N/TOTAL` lines drive the progress bar of `raytron submit --wait` on a terminal.
            log(f"step {self.step}/{self.total_steps} epoch {epoch}: loss {loss:.4f}, lr {row['lr']:.2e}, {samples_per_s:,.0f} samples/s{extra}")
        if self.report is not None:
            self.report(row, None)
        window.update(loss=0.0, n=0, samples=0, t0=time.perf_counter())
        return row

    def _evaluate(self, model, recipe: Recipe, manifest: Manifest, loss_fn, device, autocast_dtype) -> dict[str, float]:
        t = self.spec.train
        if t.data.val_split not in manifest.splits:
            return {}
        self._mark("evaluate")
        batches = cached_batches(ReaderConfig(manifest=t.data.manifest, split=t.data.val_split, batch_size=max(1, t.global_batch_size // self.world_size),
                                              shuffle_buffer=0, rank=self.rank, world_size=self.world_size), manifest=manifest, limit_bytes=t.data.val_cache_bytes)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            for batch in batches:
                x, y = recipe.inputs(batch).to(device), recipe.targets(batch).to(device)
                out = model(x)
                totals[0] += float(compute_loss(loss_fn, out, y, t.loss)) * y.shape[0]
                if t.loss == "cross_entropy":
                    totals[1] += float((out.argmax(-1) == y).sum()) / (y[0].numel() if y.dim() > 1 else 1)
                totals[2] += y.shape[0]
        model.train()
        if dist.is_initialized():
            dist.all_reduce(totals)
        result = {"val_loss": float(totals[0] / totals[2])}
        if t.loss == "cross_entropy":
            result["val_accuracy"] = float(totals[1] / totals[2])
        return result
