"""DeepSpeed training on a real local Ray head: 2 CPU ranks with gloo, real token shards.

DeepSpeed's CPU backend would JIT-compile a shared-memory comm op with gcc on first use (about a
minute); raytron turns that op off (it serves inference only), so no test pays the compile.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from helpers import JOBFUNCS, wait_for
from raytron.cluster import SpecError, parse_spec
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards
from raytron.trainers.checkpoint import list_checkpoints, load_model_state
from raytron.trainers.recipes import GPT

GPT_ARGS = {"d_model": 32, "n_layers": 2, "n_heads": 2}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("tokens")
    (tmp / "corpus.txt").write_bytes(("raytron trains a small decoder-only transformer on byte tokens with deepspeed. " * 200).encode())
    build_shards(BuildConfig(source=SourceConfig(spec=f"text:{tmp / 'corpus.txt'}", seq_len=32), out_dir=tmp / "shards",
                             shard_size_bytes=50_000, val_fraction=0.1, progress=False))
    return str(tmp / "shards")


def ds_spec(tmp_path: Path, tokens: str, name: str, deepspeed: dict | None = None, **train) -> Path:
    body = {
        "model": {"recipe": "gpt", "args": GPT_ARGS},
        "data": {"manifest": tokens, "shuffle_buffer": 100},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "steps": 20, "global_batch_size": 16, "precision": "bf16", "strategy": "deepspeed",
        "checkpoint": {"every_steps": 10, "keep": 5}, "log_every_steps": 5,
    }
    if deepspeed is not None:
        body["deepspeed"] = deepspeed
    body.update(train)
    spec = {"name": name, "kind": "train", "resources": {"num_workers": 2, "cpus_per_worker": 1},
            "runtime": {"working_dir": str(JOBFUNCS)}, "storage": {"path": str(tmp_path / "runs")}, "train": body}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def losses(tmp_path: Path, name: str) -> list[float]:
    rows = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def val_loss_of(state: dict[str, torch.Tensor], tokens: str) -> float:
    """The plain `GPT`'s validation loss with these weights, no DeepSpeed involved."""
    model = GPT(256, 32, **GPT_ARGS)
    model.load_state_dict(state)
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in ShardLoader(ReaderConfig(manifest=tokens, split="val", batch_size=8, shuffle_buffer=0)):
            x, y = batch["tokens"][:, :-1].long(), batch["tokens"][:, 1:].long()
            out = model(x)
            total += float(torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))) * len(y)
            count += len(y)
    return total / count


# ----------------------------------------------------------------------------- fast: validation, config


def base(deepspeed: dict | None = None, workers: int = 2, **train) -> dict:
    body = {"model": {"recipe": "gpt"}, "data": {"manifest": "/data"}, "steps": 10, "global_batch_size": 16, "strategy": "deepspeed"}
    if deepspeed is not None:
        body["deepspeed"] = deepspeed
    body.update(train)
    return {"name": "t", "kind": "train", "resources": {"num_workers": workers}, "train": body}


@pytest.mark.parametrize("data,path,words", [
    (base({"zero_stage": 2, "pipeline_stages": 2}), "train.deepspeed.zero_stage", "supports ZeRO stage 0 or 1 only"),
    (base({"zero_stage": 3, "pipeline_stages": 2}), "train.deepspeed.zero_stage", "cannot be combined with ZeRO stage 3"),
    (base({"zero_stage": 0, "offload": "cpu"}), "train.deepspeed.offload", "CPU offload needs ZeRO stage"),
    (base({"gradient_accumulation_steps": 3}), "train.global_batch_size", "a multiple of 6"),
    (base(global_batch_size=15), "train.global_batch_size", "data-parallel world size (2"),
    (base({"zero_stage": 1, "pipeline_stages": 2}, workers=3), "train.deepspeed.pipeline_stages", "`resources.num_workers` (3) must be divisible by `pipeline_stages` (2)"),
    (base(precision="fp16"), "train.precision", "fp16 needs a GPU"),
    (dict(base({"zero_stage": 3}), train={**base()["train"], "strategy": "ddp", "deepspeed": {"zero_stage": 3}}), "train.deepspeed", "only read with `train.strategy: deepspeed`"),
    (base({"zero_stage": 4}), "train.deepspeed.zero_stage", "3"),
    (base({"offload": "nvme"}), "train.deepspeed.offload", "cpu"),
    (base({"pipeline_stages": 0}), "train.deepspeed.pipeline_stages", "greater than or equal to 1"),
], ids=["pipeline-zero2", "pipeline-zero3", "offload-stage0", "accumulation-does-not-factor", "batch-does-not-factor",
        "workers-not-divisible-by-stages", "fp16-on-cpu", "section-with-ddp", "stage-4", "nvme", "zero-stages"])
def test_rejected_deepspeed_combinations_name_the_conflict(data, path, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert path in info.value.paths, str(info.value)
    assert words in str(info.value)


def test_deepspeed_config_is_generated_from_the_spec_and_the_real_world_size():
    from raytron.trainers.deepspeed import deepspeed_config
    from raytron.trainers.errors import TrainError

    spec = parse_spec(base({"zero_stage": 3, "offload": "cpu", "gradient_accumulation_steps": 2}, workers=2, global_batch_size=16,
                           precision="bf16", optimizer={"grad_clip_norm": 1.0}))
    config = deepspeed_config(spec, world_size=2)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (16, 4, 2)
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}
    assert config["bf16"] == {"enabled": True} and config["fp16"]["enabled"] is False
    assert config["gradient_clipping"] == 1.0
    # DeepSpeed would clip to 1.0 by default; unset in the spec means no clipping, as under DDP.
    assert deepspeed_config(parse_spec(base()), world_size=2)["gradient_clipping"] == 0.0
    assert deepspeed_config(spec, world_size=4)["train_micro_batch_size_per_gpu"] == 2
    with pytest.raises(TrainError, match="multiple of 6"):
        deepspeed_config(spec, world_size=3)  # e.g. Ray Train started another number of workers


# ----------------------------------------------------------------------------- slow: real training


@pytest.mark.slow
def test_zero3_follows_ddp_and_its_consolidated_weights_are_the_live_model(head, tokens, tmp_path):
    """fp32, same seed and batches: ZeRO-3's loss curve equals DDP's within 1e-3 (relative); the
    consolidated model.safetensors loads into plain `GPT` and evaluates to the engine's own val_loss."""
    z3 = head.cli("submit", str(ds_spec(tmp_path, tokens, "z3", {"zero_stage": 3}, precision="fp32")), "--wait", timeout_s=300)
    assert z3.returncode == 0, z3.output
    assert "DeepSpeed ZeRO-3" in z3.stdout and '"train_batch_size": 16' in z3.stdout, z3.stdout[-3000:]
    ddp = head.cli("submit", str(ds_spec(tmp_path, tokens, "ddp", strategy="ddp", precision="fp32")), "--wait", timeout_s=300)
    assert ddp.returncode == 0, ddp.output
    a, b = losses(tmp_path, "z3"), losses(tmp_path, "ddp")
    assert len(a) == len(b) == 4
    assert a[-1] < 0.7 * a[0], a  # from about ln(256) = 5.5 at N(0, 0.02) initialisation
    assert a == pytest.approx(b, rel=1e-3), (a, b)
    final = json.loads((tmp_path / "runs" / "z3" / "result.json").read_text())
    step_dir = list_checkpoints(tmp_path / "runs" / "z3" / "checkpoints")[-1].path
    assert (step_dir / "deepspeed").is_dir() and json.loads((step_dir / "meta.json").read_text())["strategy"] == "deepspeed"
    consolidated = load_model_state(tmp_path / "runs" / "z3")
    assert all(v.dtype == torch.float32 for v in consolidated.values())
    assert val_loss_of(consolidated, tokens) == pytest.approx(final["metrics"]["val_loss"], rel=1e-4)
    ddp_weights = load_model_state(tmp_path / "runs" / "ddp")
    for key, value in ddp_weights.items():
        torch.testing.assert_close(consolidated[key], value, atol=2e-3, rtol=1e-2)


@pytest.mark.slow
def test_zero2_bf16_loss_falls_and_resume_gives_the_uninterrupted_weights(head, tokens, tmp_path):
    """ZeRO-2, bf16, 2 micro-batches of 4 per rank per step: stopped at step 12 and resubmitted to 20,
    it ends with the weights of a run that went to 20 at once."""
    zero2 = {"zero_stage": 2, "gradient_accumulation_steps": 2}
    whole = head.cli("submit", str(ds_spec(tmp_path, tokens, "whole", zero2)), "--wait", timeout_s=300)
    assert whole.returncode == 0, whole.output
    a = losses(tmp_path, "whole")
    assert a[-1] < 0.7 * a[0], a  # from about ln(256) = 5.5 at N(0, 0.02) initialisation
    assert "micro-batch 4 x accumulation 2 x data-parallel 2" in whole.stdout, whole.stdout[-3000:]
    half = ds_spec(tmp_path, tokens, "halves", zero2, steps=12)
    first = head.cli("submit", str(half), "--wait", timeout_s=300)
    assert first.returncode == 0, first.output
    again = head.cli("submit", str(half), "--wait", "--set", "train.steps=20", timeout_s=300)
    assert again.returncode == 0, again.output
    assert "resumed from step-00000012" in again.stdout, again.stdout[-3000:]
    assert [c.step for c in list_checkpoints(tmp_path / "runs" / "halves" / "checkpoints")] == [10, 12, 20]
    x, y = load_model_state(tmp_path / "runs" / "whole"), load_model_state(tmp_path / "runs" / "halves")
    for key in x:
        torch.testing.assert_close(x[key], y[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_ray_train_launcher_runs_the_same_deepspeed_loop(head, tokens, tmp_path):
    """`launcher: ray_train`: deepspeed.initialize inside each Ray Train worker; same weights as the lean launcher."""
    lean = head.cli("submit", str(ds_spec(tmp_path, tokens, "lean", {"zero_stage": 2}, steps=10)), "--wait", timeout_s=300)
    assert lean.returncode == 0, lean.output
    viatrain = head.cli("submit", str(ds_spec(tmp_path, tokens, "viatrain", {"zero_stage": 2}, steps=10, launcher="ray_train")), "--wait", timeout_s=300)
    assert viatrain.returncode == 0, viatrain.output
    final = json.loads((tmp_path / "runs" / "viatrain" / "result.json").read_text())
    assert Path(final["ray_train"]["checkpoint"]).name == "step-00000010"
    x, y = load_model_state(tmp_path / "runs" / "lean"), load_model_state(tmp_path / "runs" / "viatrain")
    for key in x:
        torch.testing.assert_close(x[key], y[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_two_stage_pipeline_loss_falls_and_consolidates_into_plain_gpt(head, tokens, tmp_path):
    """`pipeline_stages: 2` over 2 ranks (ZeRO-1, bf16): each rank holds half the blocks; the stages'
    weights are gathered into one `GPT` state dict with the tied embedding under both names."""
    spec = ds_spec(tmp_path, tokens, "pipe", {"zero_stage": 1, "pipeline_stages": 2, "gradient_accumulation_steps": 2})
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 0, result.output
    assert "micro-batch 8 x accumulation 2 x data-parallel 1" in result.stdout, result.stdout[-3000:]
    a = losses(tmp_path, "pipe")
    assert a[-1] < 0.7 * a[0], a  # from about ln(256) = 5.5 at N(0, 0.02) initialisation
    state = load_model_state(tmp_path / "runs" / "pipe")
    assert torch.equal(state["tok.weight"], state["head.weight"])
    # The consolidated model is the trained one: its validation loss is near the last training loss.
    assert val_loss_of(state, tokens) < 1.2 * a[-1]


@pytest.mark.slow
def test_killed_worker_restarts_from_the_deepspeed_checkpoint_and_finishes(head, tmp_path):
    """SIGKILL one rank after the first ZeRO-2 checkpoint: the group restarts from it (`max_failures: 1`)
    and ends with the weights of an uninterrupted run."""
    digits = tmp_path / "digits"
    build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=digits, shard_size_bytes=100_000, val_fraction=0.1, progress=False))
    common = {"data": {"manifest": str(digits), "shuffle_buffer": 100}, "global_batch_size": 32, "precision": "fp32", "steps": 30,
              "optimizer": {"name": "sgd", "lr": 0.05}}
    reference = ds_spec(tmp_path, str(digits), "reference", {"zero_stage": 2}, model={"function": "jobfuncs:slow_mlp", "args": {"hidden": 32}}, **common)
    assert head.cli("submit", str(reference), "--wait", timeout_s=300).returncode == 0
    pid_dir = tmp_path / "pids"
    victim = ds_spec(tmp_path, str(digits), "victim", {"zero_stage": 2}, max_failures=1,
                     model={"function": "jobfuncs:slow_mlp", "args": {"hidden": 32, "delay_s": 0.2, "pid_dir": str(pid_dir)}}, **common)
    submitted = head.cli("submit", str(victim), "--id", "ds-victim-1")
    assert submitted.returncode == 0, submitted.output
    wait_for(lambda: list_checkpoints(tmp_path / "runs" / "victim" / "checkpoints"), timeout_s=180, what="the first checkpoint of ds-victim-1")
    os.kill(int((pid_dir / "rank1.pid").read_text()), signal.SIGKILL)

    record = head.wait_ended("ds-victim-1", timeout_s=300, what="ds-victim-1 ending after its worker was killed")
    logs = head.cli("logs", "ds-victim-1").stdout
    assert record["status"] == "SUCCEEDED", logs[-3000:]
    assert "restarting all 2 workers from the last checkpoint" in logs and "resumed from step-000000" in logs, logs[-3000:]
    a, b = load_model_state(tmp_path / "runs" / "reference"), load_model_state(tmp_path / "runs" / "victim")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
