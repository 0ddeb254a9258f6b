"""Data-parallel training on a real local Ray head: 2 CPU workers with gloo, real shards."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import JOBFUNCS, REPO, wait_for
from raytron.cluster import SpecError, parse_spec
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards
from raytron.trainers.checkpoint import list_checkpoints, load_model_state
from raytron.trainers.recipes import MLP


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("digits")
    build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=out, shard_size_bytes=100_000, val_fraction=0.1, progress=False))
    return str(out)


def train_spec(tmp_path: Path, digits: str, name: str, workers: int = 2, model: dict | None = None, **train) -> Path:
    body = {
        "model": model or {"recipe": "mlp", "args": {"hidden": 32}},
        "data": {"manifest": digits, "shuffle_buffer": 100},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "steps": 20, "global_batch_size": 64, "precision": "fp32",
        "checkpoint": {"every_steps": 10, "keep": 5}, "log_every_steps": 5,
    }
    body.update(train)
    spec = {"name": name, "kind": "train", "resources": {"num_workers": workers, "cpus_per_worker": 1},
            "runtime": {"working_dir": str(JOBFUNCS)}, "storage": {"path": str(tmp_path / "runs")}, "train": body}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def metrics(tmp_path: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_model_state(tmp_path / "runs" / name)


# ----------------------------------------------------------------------------- fast: validation


def base(**train) -> dict:
    body = {"model": {"recipe": "mlp"}, "data": {"manifest": "/data"}, "steps": 10}
    body.update(train)
    return {"name": "t", "kind": "train", "resources": {"num_workers": 2}, "train": body}


@pytest.mark.parametrize("data,path,words", [
    (base(global_batch_size=63), "train.global_batch_size", "divisible by `resources.num_workers` (2)"),
    (base(precision="fp16"), "train.precision", "fp16 needs a GPU"),
    (base(model={"recipe": "mlp", "function": "m:f"}), "train.model", "exactly one"),
    (base(steps=None), "train.epochs", "set `epochs` or `steps`"),
    (base(precision="fp8"), "train.precision", "bf16"),
    (base(optimizer={"lr": 0}), "train.optimizer.lr", "greater than 0"),
    (base(model={"recipe": "resnet"}), "train.model.recipe", "mlp"),
    (dict(base(), resources={"num_workers": 2, "gpus_per_worker": 0.5}), "resources.gpus_per_worker", "whole device"),
], ids=["batch-not-divisible", "fp16-on-cpu", "recipe-and-function", "no-length", "bad-precision", "zero-lr", "unknown-recipe", "shared-gpu"])
def test_invalid_train_specs_name_the_field(data, path, words):
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert path in info.value.paths, str(info.value)
    assert words in str(info.value)


def test_example_train_spec_resolves_its_manifest_relative_to_the_file():
    from raytron.cluster import load_spec

    spec = load_spec(REPO / "examples" / "train-digits.yaml")
    assert spec.train.data.manifest == str((REPO / ".demo" / "digits").resolve())


# ----------------------------------------------------------------------------- slow: real training


@pytest.mark.slow
def test_two_workers_bf16_loss_falls_and_checkpoint_loads_outside_ray(head, digits, tmp_path):
    spec = train_spec(tmp_path, digits, "falls", precision="bf16", steps=60, optimizer={"name": "adamw", "lr": 0.01}, log_every_steps=10)
    # stderr treated as a terminal (rich's TTY_COMPATIBLE), stdout a pipe: the step bar is drawn on
    # stderr and the plain log goes to stdout.
    result = head.cli("submit", str(spec), "--wait", timeout_s=300, extra_env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"})
    assert result.returncode == 0, result.output
    assert "step 60/60" in result.stderr and "loss" in result.stderr, result.stdout[-3000:] + result.stderr
    assert "raytron: step 60/60 epoch" in result.stdout
    rows = [r for r in metrics(tmp_path, "falls") if "loss" in r]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], rows
    final = json.loads((tmp_path / "runs" / "falls" / "result.json").read_text())
    assert final["metrics"]["val_accuracy"] > 0.85
    # The checkpoint is a plain state dict: load it into the ordinary module, no Ray, no DDP prefix.
    model = MLP(64, 10, hidden=32)
    model.load_state_dict(weights(tmp_path, "falls"))
    loader = ShardLoader(ReaderConfig(manifest=digits, split="val", batch_size=256, shuffle_buffer=0))
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            correct += int((model(batch["x"]).argmax(-1) == batch["y"]).sum())
            total += len(batch["y"])
    assert correct / total == pytest.approx(final["metrics"]["val_accuracy"], abs=0.02)


@pytest.mark.slow
def test_ddp_equals_one_process_averaging_the_same_global_batches(head, digits, tmp_path):
    """2-worker DDP against a single process that steps on the mean loss of both ranks' batches:
    equal weights prove gradient averaging and the data split."""
    spec = train_spec(tmp_path, digits, "ddp", steps=20)
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 0, result.output
    torch.manual_seed(0)
    model = MLP(64, 10, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loaders = [ShardLoader(ReaderConfig(manifest=digits, batch_size=32, shuffle_buffer=100, seed=0, rank=r, world_size=2)) for r in range(2)]
    ce = torch.nn.CrossEntropyLoss()
    for _, (b0, b1) in zip(range(20), zip(*loaders)):
        loss = (ce(model(b0["x"]), b0["y"]) + ce(model(b1["x"]), b1["y"])) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = weights(tmp_path, "ddp")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_resubmitting_resumes_and_ends_with_the_uninterrupted_weights(head, digits, tmp_path):
    whole = train_spec(tmp_path, digits, "whole", steps=30)
    first = head.cli("submit", str(whole), "--wait", timeout_s=300)
    assert first.returncode == 0, first.output
    half = train_spec(tmp_path, digits, "halves", steps=12)
    second = head.cli("submit", str(half), "--wait", timeout_s=300)
    assert second.returncode == 0, second.output
    assert [c.step for c in list_checkpoints(tmp_path / "runs" / "halves" / "checkpoints")] == [10, 12]
    again = head.cli("submit", str(half), "--wait", "--set", "train.steps=30", timeout_s=300)
    assert again.returncode == 0, again.output
    assert "resumed from step-00000012" in again.stdout
    a, b = weights(tmp_path, "whole"), weights(tmp_path, "halves")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    # The same spec once more: the driver sees the final checkpoint of this exact spec and starts no workers.
    noop = head.cli("submit", str(half), "--wait", "--set", "train.steps=30", timeout_s=300)
    assert noop.returncode == 0, noop.output
    assert "already trained to step 30 with this exact spec" in noop.stdout and "TrainWorker" not in noop.stdout, noop.stdout
    assert [c.step for c in list_checkpoints(tmp_path / "runs" / "halves" / "checkpoints")] == [10, 12, 20, 30]


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint_and_finishes(head, digits, tmp_path):
    pid_dir = tmp_path / "pids"
    model = {"function": "jobfuncs:slow_mlp", "args": {"hidden": 32, "delay_s": 0.15, "pid_dir": str(pid_dir)}}
    spec = train_spec(tmp_path, digits, "victim", model=model, steps=40, max_failures=1)
    reference = train_spec(tmp_path, digits, "reference", model={"function": "jobfuncs:slow_mlp", "args": {"hidden": 32}}, steps=40)
    assert head.cli("submit", str(reference), "--wait", timeout_s=300).returncode == 0
    submitted = head.cli("submit", str(spec), "--id", "victim-1")
    assert submitted.returncode == 0, submitted.output
    ckpts = tmp_path / "runs" / "victim" / "checkpoints"
    wait_for(lambda: list_checkpoints(ckpts), timeout_s=120, what="the first checkpoint of victim-1")
    os.kill(int((pid_dir / "rank1.pid").read_text()), signal.SIGKILL)

    record = head.wait_ended("victim-1", timeout_s=240, what="victim-1 ending after its worker was killed")
    logs = head.cli("logs", "victim-1").stdout
    assert record["status"] == "SUCCEEDED", logs
    assert "restarting all 2 workers from the last checkpoint" in logs
    assert json.loads((tmp_path / "runs" / "victim" / "result.json").read_text())["attempts"] == 2
    a, b = weights(tmp_path, "reference"), weights(tmp_path, "victim")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_hung_rank_is_reported_by_number(head, digits, tmp_path):
    model = {"function": "jobfuncs:slow_mlp", "args": {"hidden": 32, "hang_rank": 1, "hang_at_call": 4}}
    spec = train_spec(tmp_path, digits, "hung", model=model, steps=20, collective_timeout_s=4)
    started = time.monotonic()
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 1, result.output
    assert time.monotonic() - started < 120
    logs = result.stdout + result.stderr
    assert "missing rank(s) [1]" in logs, logs
    assert "rank 1: step 3, step" in logs


@pytest.mark.slow
def test_a_bug_in_the_model_function_ends_the_job_with_its_traceback_in_the_logs(head, digits, tmp_path):
    spec = train_spec(tmp_path, digits, "broken", workers=1, model={"function": "jobfuncs:broken_model"})
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 1, result.output
    logs = result.stdout + result.stderr
    assert "raytron: train job 'broken' failed: WorkerFailed: worker rank 0 failed: RuntimeError: model function broke on purpose" in logs, logs
    # Where it broke: the rank's own traceback, down to the user's line.
    assert "raytron: worker rank 0 raised (its traceback)" in logs and 'jobfuncs.py", line' in logs and "in broken_model" in logs, logs


@pytest.mark.slow
def test_gpt_on_token_shards_reports_tokens_per_second(head, tmp_path):
    text = ("raytron trains a small decoder-only transformer on byte tokens. " * 200).encode()
    (tmp_path / "corpus.txt").write_bytes(text)
    out = tmp_path / "tokens"
    build_shards(BuildConfig(source=SourceConfig(spec=f"text:{tmp_path / 'corpus.txt'}", seq_len=32), out_dir=out, shard_size_bytes=50_000, val_fraction=0.1, progress=False))
    spec = train_spec(tmp_path, str(out), "gpt", model={"recipe": "gpt", "args": {"d_model": 32, "n_layers": 1, "n_heads": 2}},
                      steps=30, global_batch_size=16, precision="bf16", optimizer={"name": "adamw", "lr": 0.01}, log_every_steps=10)
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 0, result.output
    rows = [r for r in metrics(tmp_path, "gpt") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 32) for r in rows)
    assert "mfu" not in rows[-1]  # MFU is estimated on GPUs only


@pytest.mark.slow
def test_cnn_on_image_shards(head, tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "img" / f"c{c}").mkdir(parents=True)
        for i in range(40):
            base = np.full((12, 12, 3), 40 + 170 * c, dtype=np.uint8)  # dark vs bright: learnable
            Image.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)).save(tmp_path / "img" / f"c{c}" / f"{i}.png")
    out = tmp_path / "imgshards"
    build_shards(BuildConfig(source=SourceConfig(spec=f"images:{tmp_path / 'img'}"), out_dir=out, shard_size_bytes=20_000, val_fraction=0.2, progress=False))
    spec = train_spec(tmp_path, str(out), "cnn", workers=1, model={"recipe": "cnn", "args": {"width": 8}}, steps=25, global_batch_size=16,
                      optimizer={"name": "adamw", "lr": 0.01})
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 0, result.output
    final = json.loads((tmp_path / "runs" / "cnn" / "result.json").read_text())
    assert final["metrics"]["val_accuracy"] >= 0.9


@pytest.mark.slow
def test_ray_train_launcher_reports_metrics_and_checkpoints_to_ray_train(head, digits, tmp_path):
    """`launcher: ray_train` runs the same loop in TorchTrainer: same weights as the lean group, and
    Ray Train's Result carries the last metrics and a copy of the last checkpoint."""
    spec = train_spec(tmp_path, digits, "viatrain", steps=20, launcher="ray_train")
    result = head.cli("submit", str(spec), "--wait", timeout_s=300)
    assert result.returncode == 0, result.output
    final = json.loads((tmp_path / "runs" / "viatrain" / "result.json").read_text())
    ray_train = final["ray_train"]
    assert ray_train["metrics"]["step"] == 20 and ray_train["metrics"]["loss"] == pytest.approx(final["metrics"]["loss"])
    assert Path(ray_train["checkpoint"]).name == "step-00000020"
    copied = load_model_state(ray_train["checkpoint"])
    ours = weights(tmp_path, "viatrain")
    lean = train_spec(tmp_path, digits, "lean", steps=20)
    assert head.cli("submit", str(lean), "--wait", timeout_s=300).returncode == 0
    for key, value in weights(tmp_path, "lean").items():
        torch.testing.assert_close(copied[key], ours[key], atol=0, rtol=0)
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=0)
