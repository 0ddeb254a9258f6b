"""The `train` job kind: model, data, loss, optimizer, schedule, precision, strategy, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from raytron.cluster.errors import SpecProblem
from raytron.cluster.spec import JobSpec, SpecModel, is_object_path

__all__ = ["TrainJobSpec", "TrainConfig", "ModelConfig", "DataConfig", "OptimizerConfig", "ScheduleConfig", "CheckpointConfig", "DeepSpeedConfig", "RECIPES"]

RECIPES = ("mlp", "cnn", "gpt")


class ModelConfig(SpecModel):
    """Which model to train: a built-in recipe or a user function returning a `torch.nn.Module`."""

    recipe: Literal["mlp", "cnn", "gpt"] | None = None
    """`mlp` (feature vectors, e.g. digits), `cnn` (image shards), `gpt` (a small decoder-only transformer on token shards)."""
    function: str | None = None
    """`module:function` called with `args` and the shards' manifest (keyword `manifest`); returns the module."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the recipe (e.g. `hidden` for mlp; `d_model`, `n_layers`, `n_heads` for gpt)."""

    @field_validator("function")
    @classmethod
    def _object_path(cls, value: str | None) -> str | None:
        if value is not None and not is_object_path(value):
            raise ValueError("must be `module:function`")
        return value


class DataConfig(SpecModel):
    """Shards to train on (built by `raytron data build`)."""

    manifest: str
    """Shard directory, manifest.json, or an http(s)/s3 URL; relative paths are relative to the spec file."""
    split: str = "train"
    val_split: str | None = "val"
    """Split evaluated at the end of each epoch (None: no evaluation)."""
    shuffle_buffer: int = Field(1000, ge=0)
    loader_workers: int = Field(0, ge=0, le=32)
    """DataLoader worker processes per training worker."""
    val_cache_bytes: int = Field(256 * 2**20, ge=0)
    """Decoded `val_split` batches each training process keeps in memory between evaluations (it is
    read in the same order every time); a split that takes more is read from its shards at every
    evaluation. 0: always read from the shards."""


class OptimizerConfig(SpecModel):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD only."""
    grad_clip_norm: float | None = Field(None, gt=0)


class ScheduleConfig(SpecModel):
    name: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)


class CheckpointConfig(SpecModel):
    every_steps: int = Field(100, ge=1)
    """Write a checkpoint every this many optimizer steps (and always at the end)."""
    keep: int = Field(3, ge=1)
    """How many recent checkpoints to keep."""


class DeepSpeedConfig(SpecModel):
    """`strategy: deepspeed`: ZeRO sharding, CPU offload, pipeline stages. The DeepSpeed JSON config is
    generated from this and the rest of the spec (`raytron.trainers.deepspeed.deepspeed_config`)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload: Literal["none", "cpu"] = "none"
    """`cpu`: keep the optimizer state (and, at stage 3, the parameters) in host memory."""
    pipeline_stages: int = Field(1, ge=1)
    """Split the model over this many ranks (gpt recipe only); data-parallel world = num_workers / pipeline_stages."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each data-parallel rank."""


class TrainConfig(SpecModel):
    """Body of a `kind: train` spec."""

    model: ModelConfig
    data: DataConfig
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (instead of, or before, `epochs`)."""
    global_batch_size: int = Field(64, ge=1)
    """Samples per optimizer step across all workers; split evenly between them."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    """`ddp`: torch DistributedDataParallel. `deepspeed`: DeepSpeed ZeRO / pipeline parallel (see `deepspeed`)."""
    deepspeed: DeepSpeedConfig | None = None
    """Settings of `strategy: deepspeed` (defaults: ZeRO-2, no offload, 1 stage, no accumulation)."""
    launcher: Literal["raytron", "ray_train"] = "raytron"
    """How the workers are started. `raytron`: one lean Ray actor per rank (about 2 s to start on a
    small machine; a collective timeout names the ranks that never arrived). `ray_train`: Ray Train's
    TorchTrainer, for metrics and checkpoints reported to Ray Train (its Result, its dashboard views,
    its storage layout); 10-15 s more start-up and teardown, and a collective timeout is Ray Train's
    plain error. Checkpoints, resume, metrics.jsonl and `max_failures` behave the same in both."""
    seed: int = 0
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    max_failures: int = Field(0, ge=0, le=100)
    """Restarts from the last checkpoint when a worker dies or a collective times out."""
    collective_timeout_s: float = Field(120.0, gt=0)
    """A collective waiting longer than this fails and names the ranks that did not arrive."""
    log_every_steps: int = Field(10, ge=1)
    eval_every_steps: int | None = Field(None, ge=1)
    """Also evaluate `data.val_split` every this many steps (default: at the end of each epoch and of the run only)."""


class TrainJobSpec(JobSpec):
    """Data-parallel training of one model on shards."""

    KIND = "train"
    RUNNER = "raytron.trainers.job:run_train_job"

    train: TrainConfig

    def problems(self) -> list[SpecProblem]:
        t, r = self.train, self.resources
        problems = []
        if (t.model.recipe is None) == (t.model.function is None):
            problems.append(SpecProblem("train.model", "name exactly one of `recipe` (mlp, cnn, gpt) or `function` (module:function)", t.model.model_dump(exclude_defaults=True)))
        if t.epochs is None and t.steps is None:
            problems.append(SpecProblem("train.epochs", "set `epochs` or `steps` (or both: training stops at whichever comes first)", None))
        if t.strategy == "deepspeed":
            problems += _deepspeed_problems(t, r.num_workers)
        elif t.deepspeed is not None:
            problems.append(SpecProblem("train.deepspeed", "is only read with `train.strategy: deepspeed` (the strategy is `ddp`); set the strategy or remove the section", t.deepspeed.model_dump()))
        if t.strategy == "ddp" and t.global_batch_size % r.num_workers:
            problems.append(SpecProblem("train.global_batch_size",
                                        f"must be divisible by `resources.num_workers` ({r.num_workers}); e.g. {t.global_batch_size - t.global_batch_size % r.num_workers or r.num_workers}", t.global_batch_size))
        if t.precision == "fp16" and r.gpus_per_worker == 0:
            problems.append(SpecProblem("train.precision", "fp16 needs a GPU (loss scaling on CPU is not supported by torch.autocast); use bf16 on CPU, or set `resources.gpus_per_worker`", t.precision))
        if r.gpus_per_worker not in (0, 1):
            problems.append(SpecProblem("resources.gpus_per_worker", "each worker gets one whole device: use 0 (CPU) or 1 (NCCL cannot share a GPU between ranks)", r.gpus_per_worker))
        return problems

    def entrypoint_resources(self) -> tuple[float, float]:
        return (0.0, 0.0)  # the driver only coordinates; workers hold the resources

    @property
    def run_dir(self) -> Path:
        """`<storage.path>/<name>`: checkpoints, metrics and result of every attempt and resubmission."""
        return Path(os.path.expanduser(self.storage.path)) / self.name

    def resolve_paths(self, base_dir) -> "TrainJobSpec":
        manifest = self.train.data.manifest
        if "://" in manifest or manifest.startswith("~") or Path(manifest).is_absolute():
            return self
        data = self.train.data.model_copy(update={"manifest": str((Path(base_dir) / manifest).resolve())})
        return self.model_copy(update={"train": self.train.model_copy(update={"data": data})})


def _deepspeed_problems(t: TrainConfig, num_workers: int) -> list[SpecProblem]:
    """Combinations DeepSpeed would reject at runtime (or silently mis-train), rejected before launch."""
    ds = t.deepspeed or DeepSpeedConfig()
    problems = []
    if ds.pipeline_stages > 1 and ds.zero_stage >= 2:
        # PipelineEngine.__init__ (deepspeed/runtime/pipe/engine.py) asserts
        # zero_optimization_stage() < ZeroStageEnum.gradients: "ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism".
        problems.append(SpecProblem("train.deepspeed.zero_stage", f"`pipeline_stages` ({ds.pipeline_stages}) cannot be combined with ZeRO stage {ds.zero_stage}: "
                                    "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only; set `zero_stage: 1` or `pipeline_stages: 1`", ds.zero_stage))
    if ds.pipeline_stages > 1 and ds.offload == "cpu":
        problems.append(SpecProblem("train.deepspeed.offload", "CPU offload is not supported together with `pipeline_stages` > 1 (DeepSpeed's pipeline engine "
                                    "supports neither ZeRO-2/3 nor their offload); set `offload: none`", ds.offload))
    if ds.offload == "cpu" and ds.zero_stage == 0:
        problems.append(SpecProblem("train.deepspeed.offload", "CPU offload needs ZeRO stage 1 or 2 (optimizer state) or 3 (optimizer state and parameters); "
                                    "stage 0 keeps everything on the device: set `zero_stage` or `offload: none`", ds.offload))
    if num_workers % ds.pipeline_stages:
        problems.append(SpecProblem("train.deepspeed.pipeline_stages", f"`resources.num_workers` ({num_workers}) must be divisible by `pipeline_stages` ({ds.pipeline_stages}): "
                                    "each data-parallel replica is one full pipeline", ds.pipeline_stages))
    else:
        dp = num_workers // ds.pipeline_stages
        per_step = dp * ds.gradient_accumulation_steps
        if t.global_batch_size % per_step:
            ok = max(per_step, t.global_batch_size - t.global_batch_size % per_step)
            problems.append(SpecProblem("train.global_batch_size", f"({t.global_batch_size}) must equal micro-batch x `deepspeed.gradient_accumulation_steps` "
                                        f"({ds.gradient_accumulation_steps}) x data-parallel world size ({dp} = `resources.num_workers` {num_workers} / "
                                        f"`pipeline_stages` {ds.pipeline_stages}), so a multiple of {per_step}; e.g. {ok}", t.global_batch_size))
    if t.model.recipe != "gpt" and ds.pipeline_stages > 1:
        problems.append(SpecProblem("train.model.recipe", "`deepspeed.pipeline_stages` > 1 needs the `gpt` recipe (the model is split into embedding, blocks and head)", t.model.recipe))
    return problems
