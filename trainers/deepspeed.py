"""The DeepSpeed strategy: ZeRO-0/1/2/3 (with optional CPU offload) on the same loop, data and checkpoints as DDP.

The DeepSpeed config is generated from the spec by `deepspeed_config` (never written by hand) and
its batch sizes are checked against the real world size before `deepspeed.initialize`. Each rank
runs `DeepSpeedLoop`, a `TrainLoop` whose model is a DeepSpeed engine: the recipe, the data split
(per data-parallel rank), the metrics rows and log lines, the evaluation and the checkpoint layout
are the DDP loop's own.

Checkpoints: every rank writes its ZeRO shards with `engine.save_checkpoint` into one hidden
staging directory under `<run_dir>/checkpoints/`; rank 0 then consolidates the fp32 master weights
into a plain `model.safetensors` (DeepSpeed's `zero_to_fp32` for stages 1-3), writes the same
`meta.json` as DDP, and renames the directory into place. DeepSpeed's shards are `torch.save`
files (pickle): they stay DeepSpeed's private resume state, read back only by DeepSpeed when the
same run resumes at the same world size; `model.safetensors` is what users exchange and export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.trainers.checkpoint import latest_checkpoint, save_checkpoint
from raytron.trainers.errors import CheckpointError, TrainError
from raytron.trainers.loop import TrainLoop
from raytron.trainers.recipes import build_model
from raytron.trainers.spec import DeepSpeedConfig, TrainJobSpec
from raytron.trainers.steps import apply_optimizer_settings, build_optimizer, compute_loss, log, lr_schedule

__all__ = ["deepspeed_config", "DeepSpeedLoop"]

_STATE_DIR = "deepspeed"  # DeepSpeed's own shards inside a step directory
_TAG = "state"


def deepspeed_config(spec: TrainJobSpec, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for `spec` on `world_size` ranks.

    `train_batch_size = micro batch x gradient_accumulation_steps x data-parallel world size`, the
    identity DeepSpeed asserts in `DeepSpeedConfig._batch_assertion`; data-parallel world size is
    `world_size / pipeline_stages`.

    Raises:
        TrainError: the global batch does not factor over this world size (e.g. Ray Train started
            another number of workers than the spec validated against).
    """
    t = spec.train
    ds = t.deepspeed or DeepSpeedConfig()
    if world_size % ds.pipeline_stages:
        raise TrainError(f"the world size ({world_size}) is not divisible by `train.deepspeed.pipeline_stages` ({ds.pipeline_stages})")
    dp = world_size // ds.pipeline_stages
    per_step = dp * ds.gradient_accumulation_steps
    if t.global_batch_size % per_step:
        raise TrainError(f"`train.global_batch_size` ({t.global_batch_size}) does not factor into micro-batch x `gradient_accumulation_steps` "
                         f"({ds.gradient_accumulation_steps}) x data-parallel world size ({dp}); make it a multiple of {per_step}")
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
        if ds.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.global_batch_size // per_step,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        # Dynamic loss scaling (loss_scale 0); DeepSpeed raises once the scale is at its minimum and still overflows.
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16, "min_loss_scale": 1},
        # The optimizer is raytron's own torch AdamW/SGD, as under DDP, so both strategies follow the same math.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # offload with a torch optimizer, no JIT-built DeepSpeedCPUAdam
        "steps_per_print": 2**31 - 1,  # raytron logs its own metrics
        "wall_clock_breakdown": False,
    }
    # DeepSpeed clips gradients to norm 1.0 unless told otherwise (GRADIENT_CLIPPING_DEFAULT in
    # deepspeed/runtime/constants.py); DDP clips only when `grad_clip_norm` is set, so say it explicitly.
    config["gradient_clipping"] = t.optimizer.grad_clip_norm or 0.0
    return config


def _import_deepspeed(on_gpu: bool):
    """Import DeepSpeed for this process's device; the accelerator is fixed at first import."""
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError as exc:
        raise TrainError(f"`train.strategy: deepspeed` needs DeepSpeed in the workers' environment: pip install 'raytron[deepspeed]' ({exc})") from None
    # DeepSpeed's TorchBackend JIT-compiles a shared-memory all-reduce op with gcc on CPU (about a
    # minute, deepspeed/comm/torch.py build_shm_op) whenever it is "compatible". That op serves only
    # `inference_all_reduce` (tensor-parallel inference, deepspeed/module_inject); training uses the
    # process group's collectives, so raytron turns it off rather than paying the compile.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


class DeepSpeedLoop(TrainLoop):
    """One rank of a DeepSpeed run; `join`, `leave`, `progress`, metrics and evaluation are `TrainLoop`'s."""

    def run(self) -> dict[str, Any]:
        spec, t = self.spec, self.spec.train
        on_gpu = bool(spec.resources.gpus_per_worker and torch.cuda.is_available())
        deepspeed = _import_deepspeed(on_gpu)
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        # DeepSpeed reads these even when the process group exists (engine._do_args_sanity_check).
        # Each lean worker sees only its own device, so its local rank is 0; Ray Train sets its own.
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size))
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
        ds = t.deepspeed or DeepSpeedConfig()
        config = deepspeed_config(spec, self.world_size)
        run_dir, ckpt_root = spec.run_dir, spec.run_dir / "checkpoints"
        manifest = Manifest.load(t.data.manifest)
        torch.manual_seed(t.seed)
        # At ZeRO-3 each parameter is partitioned as soon as its module is built (zero.Init), so no
        # rank ever holds the whole model. In fp32 the values are those DDP starts from (same seed,
        # same order). In bf16/fp16 zero.Init creates them in that dtype, and PyTorch's CPU RNG
        # kernels fill a 16-bit tensor in another order than an fp32 one: same distribution, other
        # values, so a 16-bit ZeRO-3 run does not start where the same seed's DDP run does.
        with deepspeed.zero.Init(config_dict_or_path=config) if ds.zero_stage == 3 else contextlib.nullcontext():
            recipe = build_model(t.model, manifest)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision, torch.float32)
        # The engine holds 16-bit weights in bf16/fp16: float inputs are cast to match (token ids stay integers).
        inputs = recipe.inputs
        recipe = dataclasses.replace(recipe, inputs=lambda b: _cast(inputs(b), dtype))
        dp_world = self.world_size // ds.pipeline_stages
        loader = ShardLoader(ReaderConfig(
            manifest=t.data.manifest, split=t.data.split, batch_size=config["train_micro_batch_size_per_gpu"], shuffle_buffer=t.data.shuffle_buffer,
            seed=t.seed, rank=self.rank % dp_world, world_size=dp_world, num_workers=t.data.loader_workers,
        ), manifest=manifest)
        accum = ds.gradient_accumulation_steps
        steps_per_epoch = len(loader) // accum
        if steps_per_epoch == 0:
            raise TrainError(f"an epoch has {len(loader)} micro-batches per rank, fewer than `gradient_accumulation_steps` ({accum}): use a smaller batch or more data")
        total_steps = min(x for x in (t.steps, (t.epochs or 0) * steps_per_epoch or None) if x)
        pipelined = ds.pipeline_stages > 1
        module = recipe.module
        if pipelined:
            from raytron.trainers.pipeline import gpt_pipeline

            # Only this rank's stage is built; the recipe's GPT gave the sizes read from the manifest.
            module = gpt_pipeline(recipe.module.tok.num_embeddings, recipe.module.pos.num_embeddings, num_stages=ds.pipeline_stages, **t.model.args)
        optimizer = build_optimizer(t, module)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(t, total_steps))
        engine, _, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.engine, self.total_steps, self.config = engine, total_steps, config
        resume = latest_checkpoint(ckpt_root)
        meta: dict[str, Any] = {}
        if resume is not None:
            meta = self._restore(resume, manifest, engine, scheduler, loader)
        self.step = int(meta.get("step", 0))
        loss_fn = nn.CrossEntropyLoss() if t.loss == "cross_entropy" else nn.MSELoss()
        self._begin(meta)
        if self.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            log(f"training {spec.name} with DeepSpeed ZeRO-{ds.zero_stage}{' + CPU offload' if ds.offload == 'cpu' else ''}: {self.world_size} worker(s) on {device.type}, "
                 f"{t.precision}, global batch {t.global_batch_size} = micro-batch {config['train_micro_batch_size_per_gpu']} x accumulation {accum} x data-parallel {dp_world}, "
                 f"{steps_per_epoch} steps/epoch, {total_steps} steps in all; DeepSpeed config {json.dumps(config, sort_keys=True)}"
                 + (f"; resumed from {resume.path.name}" if resume else "")
                 + ("; already trained that far, nothing to do" if self.step >= total_steps else ""))
        micro = 0
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        if pipelined and t.data.val_split and self.rank == 0:
            log("evaluation is not run with `pipeline_stages` > 1; evaluate the consolidated model.safetensors instead")
        while self.step < total_steps:
            epoch = loader.epoch
            for batch in loader:
                self._mark("step")
                x = recipe.inputs(batch).to(device, non_blocking=True)
                y = recipe.targets(batch).to(device, non_blocking=True)
                if pipelined:
                    # The pipeline engine pulls `gradient_accumulation_steps` micro-batches per
                    # `train_batch` and returns their mean loss, already averaged over data-parallel
                    # ranks and sent to every stage.
                    pending.append((x, y))
                    if len(pending) < accum:
                        continue
                    self._mark("backward")
                    loss = engine.train_batch(data_iter=iter(pending))
                    pending.clear()
                    micro += accum
                    # Every stage reads the same samples: only the first stage counts them.
                    self._count(float(loss) * accum, int(y.shape[0]) * accum if engine.is_first_stage() else 0, accum)
                else:
                    out = engine(x)
                    loss = compute_loss(loss_fn, out, y, t.loss)
                    self._mark("backward")  # ZeRO's reduce-scatter / all-gather happen in here and in step()
                    engine.backward(loss)
                    try:
                        engine.step()
                    except Exception as exc:
                        if "loss scale already at minimum" in str(exc):
                            raise FloatingPointError(f"fp16 loss scale collapsed to its minimum (1) at step {self.step + 1} and the gradients still overflow: "
                                                     "the loss overflows in fp16; use `train.precision: bf16`") from None
                        raise
                    micro += 1
                    self._count(float(loss.detach()), int(y.shape[0]))
                if micro % accum:
                    continue
                self.step += 1
                self._after_step(recipe, epoch, scheduler, device,
                                 lambda epoch=epoch: self._ds_checkpoint(ckpt_root, engine, scheduler, loader, manifest, self.last, epoch),
                                 None if pipelined else lambda: self._evaluate(engine, recipe, manifest, loss_fn, device, None))
                if self.step >= total_steps:
                    break
            # The pipeline engine's stages cannot run a whole-model forward: evaluation is skipped there.
            self._after_epoch(loader, epoch, None if pipelined else lambda: self._evaluate(engine, recipe, manifest, loss_fn, device, None))
        self._mark("done")
        return {"rank": self.rank, "step": self.step, "metrics": self.last, "history": self.history}

    def _restore(self, ckpt, manifest: Manifest, engine, scheduler, loader: ShardLoader) -> dict[str, Any]:
        meta = ckpt.meta
        if meta.get("manifest_sha256") != manifest.sha256:
            raise CheckpointError(f"{ckpt.path} was written for other shards (manifest sha256 {str(meta.get('manifest_sha256'))[:16]}...); "
                                  "use another `name` or `storage.path` to start afresh")
        if not (ckpt.path / _STATE_DIR).is_dir():
            raise CheckpointError(f"{ckpt.path} holds no DeepSpeed state (it was written by `strategy: {meta.get('spec', {}).get('train', {}).get('strategy', 'ddp')}`); "
                                  "a DeepSpeed run resumes only from its own checkpoints: use another `name` to start afresh")
        if meta.get("world_size") != self.world_size:
            raise CheckpointError(f"{ckpt.path} was written by {meta.get('world_size')} ranks, this run has {self.world_size}: DeepSpeed's ZeRO shards "
                                  "resume only at the same world size; set `resources.num_workers` back, or start afresh from its model.safetensors under another `name`")
        # DeepSpeed loads its own torch.save shards here (its private resume state): module,
        # optimizer partitions, loss scaler and the lr scheduler.
        engine.load_checkpoint(str(ckpt.path / _STATE_DIR), tag=_TAG)
        # The spec's optimizer settings win over the restored ones (a PBT exploit changes them).
        apply_optimizer_settings(self.spec.train, scheduler.optimizer, scheduler)
        loader.load_state_dict(meta["data"])
        return meta

    def _ds_checkpoint(self, root: Path, engine, scheduler, loader: ShardLoader, manifest: Manifest, metrics: dict, epoch: int) -> None:
        self._mark("checkpoint")
        staging = root / f".step-{self.step:08d}.deepspeed"  # one name every rank can compute
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)  # left over from an attempt that died here
            staging.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(staging / _STATE_DIR), tag=_TAG, save_latest=False)
        dist.barrier()  # every rank's shards are on disk
        model_state = self._consolidated(engine, staging)
        saved = None
        if self.rank == 0:
            saved = save_checkpoint(root, step=self.step, model_state=model_state, optimizer_state=None,
                                    keep=self.spec.train.checkpoint.keep, staging=staging, meta={
                                        "epoch": epoch, "spec": json.loads(self.spec.to_json()), "data": loader.state_dict(), "metrics": metrics,
                                        "manifest_sha256": manifest.sha256, "scheduler": scheduler.state_dict(), "scaler": None,
                                        "world_size": self.world_size, "total_steps": self.total_steps, "strategy": "deepspeed",
                                        "deepspeed": {"config": self.config, "state_dir": _STATE_DIR, "tag": _TAG},
                                    })
        dist.barrier()
        if self.report is not None:
            self.report(dict(metrics, step=self.step, epoch=epoch), saved.path if saved is not None else None)

    def _consolidated(self, engine, staging: Path) -> dict[str, torch.Tensor]:
        """The plain fp32 state dict of the ordinary module on rank 0 (empty on the others); called on every rank."""
        ds = self.spec.train.deepspeed or DeepSpeedConfig()
        if ds.pipeline_stages > 1:
            return self._consolidated_pipeline(engine)
        if self.rank != 0:
            return {}
        if ds.zero_stage == 0:
            # No ZeRO partitions: the module holds the whole model (its bf16/fp16 copy under 16-bit precision).
            return {k: v.float() if v.is_floating_point() else v for k, v in engine.module.state_dict().items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # Reads the fp32 master partitions of every rank back from the shards just written and
        # stitches them into full tensors, restoring tied parameters under both names.
        state = get_fp32_state_dict_from_zero_checkpoint(str(staging / _STATE_DIR), tag=_TAG)
        expected = set(engine.module.state_dict())
        if set(state) != expected:
            raise CheckpointError(f"consolidating the ZeRO-{ds.zero_stage} shards gave keys that do not match the module: "
                                  f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        return state

    def _consolidated_pipeline(self, engine) -> dict[str, torch.Tensor]:
        """Each stage's fp32 master weights under `GPT`'s names, gathered to rank 0."""
        from deepspeed.utils import safe_get_full_fp32_param

        from raytron.trainers.pipeline import gpt_state_name

        n_layers = int(self.spec.train.model.args.get("n_layers", 2))
        local: dict[str, torch.Tensor] = {}
        for name, param in engine.module.named_parameters():
            # The fp32 master copy held by the bf16/ZeRO-1 optimizer (a collective over the
            # data-parallel group); with fp32 training and no ZeRO there is none: the parameter is it.
            full = safe_get_full_fp32_param(param)
            value = (full if full is not None else param.detach()).float().cpu().clone()
            for key in gpt_state_name(name, n_layers):
                local[key] = value
        # Gathering objects pickles them over the process group: internal to the run, never stored.
        gathered: list[dict[str, torch.Tensor] | None] = [None] * self.world_size if self.rank == 0 else []
        dist.gather_object(local, gathered if self.rank == 0 else None, dst=0)
        if self.rank != 0:
            return {}
        state: dict[str, torch.Tensor] = {}
        for part in gathered:
            state.update(part or {})
        return state


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x
