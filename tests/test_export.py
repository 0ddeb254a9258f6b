"""`raytron export`: real exports of tiny models into a model repository, read back and run.

Checkpoints are written with `save_checkpoint` directly (no Ray), exported files are run with
onnxruntime and torch.jit.load, and configs are parsed back with tritonclient's protobuf schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from helpers import base_env, run_cli
from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.serving.errors import ExportError, ParityError
from raytron.serving.export import LINEAGE_FILE, export_checkpoint, export_module
from raytron.serving.modelconfig import list_models, read_model_config
from raytron.trainers.checkpoint import save_checkpoint
from raytron.trainers.recipes import MLP
from raytron.trainers.spec import TrainJobSpec

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Manifest:
    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    out = tmp_path_factory.mktemp("digits")
    return build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=out, shard_size_bytes=100_000, val_fraction=0.1, progress=False))


def make_run(storage: Path, manifest: Manifest, *, manifest_location: str | None = None, step: int = 5) -> tuple[Path, MLP]:
    """A run directory with one checkpoint of a tiny (untrained) MLP, as the training loop writes it."""
    spec = TrainJobSpec.model_validate({
        "name": "digits-mlp", "kind": "train", "storage": {"path": str(storage)},
        "train": {"model": {"recipe": "mlp", "args": {"hidden": 16, "layers": 1}}, "data": {"manifest": manifest_location or manifest.location}, "steps": 10},
    })
    torch.manual_seed(step)
    model = MLP(64, 10, hidden=16, layers=1)
    meta = {"epoch": 0, "spec": json.loads(spec.to_json()), "metrics": {"loss": 2.3}, "manifest_sha256": manifest.sha256, "world_size": 1}
    save_checkpoint(spec.run_dir / "checkpoints", step=step, model_state=model.state_dict(), optimizer_state=None, meta=meta, keep=1)
    return spec.run_dir, model.eval()


def val_batch(manifest: Manifest, n: int) -> np.ndarray:
    loader = ShardLoader(ReaderConfig(manifest=manifest.location, split="val", batch_size=n, shuffle_buffer=0), manifest=manifest)
    return next(iter(loader))["x"].numpy()


def snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def tensors(ios) -> list[tuple]:
    return [(io.name, io.data_type, list(io.dims), list(io.reshape.shape) if io.HasField("reshape") else None) for io in ios]


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_exports_both_formats_that_match_the_eager_model(digits, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    run_dir, model = make_run(tmp_path / "runs", digits)
    repo = tmp_path / "repo"
    result = export_checkpoint(run_dir, name="digits", repo=repo, format="both")

    assert [(m.name, m.version, m.platform, m.config_status) for m in result.models] == [
        ("digits", 1, "onnxruntime_onnx", "created"), ("digits-torchscript", 1, "pytorch_libtorch", "created")]
    assert [(m.name, m.versions) for m in list_models(repo)] == [("digits", (1,)), ("digits-torchscript", (1,))]
    fp32 = mc.DataType.Value("TYPE_FP32")
    for model_name, platform, x, logits in (("digits", "onnxruntime_onnx", "x", "logits"), ("digits-torchscript", "pytorch_libtorch", "x__0", "logits__0")):
        config = read_model_config(repo / model_name)
        assert (config.name, config.platform, config.max_batch_size) == (model_name, platform, 64)
        assert tensors(config.input) == [(x, fp32, [64], None)]
        assert tensors(config.output) == [(logits, fp32, [10], None)]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]

    # The files on disk, run by the runtimes Triton uses, give the checkpoint's outputs on real samples.
    x = val_batch(digits, 7)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"x": x})[0], expected, rtol=0, atol=1e-5)
    traced = torch.jit.load(str(repo / "digits-torchscript" / "1" / "model.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(traced(torch.from_numpy(x))[0].numpy(), expected, rtol=0, atol=1e-5)

    lineage = json.loads((repo / "digits" / "1" / LINEAGE_FILE).read_text())
    step_dir = run_dir / "checkpoints" / "step-00000005"
    assert lineage["source"]["checkpoint"] == str(step_dir.resolve()) and lineage["source"]["step"] == 5
    assert lineage["source"]["model_safetensors_sha256"] == hashlib.sha256((step_dir / "model.safetensors").read_bytes()).hexdigest()
    assert lineage["source"]["manifest_sha256"] == digits.sha256
    assert lineage["model_sha256"] == hashlib.sha256((repo / "digits" / "1" / "model.onnx").read_bytes()).hexdigest()
    parity = lineage["parity"]
    assert parity["passed"] and parity["batch_sizes"] == [1, 64] and parity["sample_source"]["split"] == "val" and parity["samples"] == 64
    assert parity["outputs"]["logits"]["atol"] == 1e-4 and parity["outputs"]["logits"]["max_abs_diff"] <= 1e-4
    assert {"raytron", "torch", "onnx", "onnxruntime"} <= set(lineage["versions"])
    assert [t["tensor"] for t in json.loads((repo / "digits-torchscript" / "1" / LINEAGE_FILE).read_text())["inputs"]] == ["x__0"]

    # A step directory exports too, as the next version, and still knows its run.
    again = export_checkpoint(step_dir, name="digits", repo=repo).models[0]
    assert (again.version, again.config_status) == (2, "unchanged")
    assert json.loads(again.lineage_path.read_text())["source"]["run_dir"] == str(run_dir.resolve())


def test_checkpoint_errors_name_the_path(digits, tmp_path):
    with pytest.raises(ExportError, match="is not a checkpoint") as exc:
        export_checkpoint(tmp_path, name="m", repo=tmp_path / "repo")
    assert str(tmp_path) in str(exc.value)

    step_dir = tmp_path / "bare" / "step-00000001"
    step_dir.mkdir(parents=True)
    (step_dir / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError, match=f"{step_dir} has no meta.json"):
        export_checkpoint(step_dir, name="m", repo=tmp_path / "repo")

    moved = str(tmp_path / "shards-moved-away")
    run_dir, _ = make_run(tmp_path / "runs", digits, manifest_location=moved)
    with pytest.raises(ExportError, match="cannot be loaded") as exc:
        export_checkpoint(run_dir, name="m", repo=tmp_path / "repo")
    assert moved in str(exc.value) and "--manifest" in str(exc.value)
    with pytest.raises(ExportError, match="`format`"):
        export_checkpoint(run_dir, name="m", repo=tmp_path / "repo", format="tflite", manifest=digits.location)
    assert not (tmp_path / "repo").exists()

    # The same shards elsewhere (same manifest content): the run exports.
    result = export_checkpoint(run_dir, name="m", repo=tmp_path / "repo", manifest=digits.location)
    assert result.models[0].model_file.is_file()


# --------------------------------------------------------------------------- any module


class Policy(nn.Module):
    """An RL-style policy: int32 observations and float features in; an int64 action and a value out."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.body = nn.Linear(8 + 3, 6)
        self.value = nn.Linear(6, 1)

    def forward(self, obs: torch.Tensor, feat: torch.Tensor):
        h = torch.tanh(self.body(torch.cat([self.embed(obs.long()).mean(1), feat], dim=1)))
        return h.argmax(dim=1), self.value(h)


def test_multi_input_multi_output_module_with_integer_tensors(tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    policy = Policy().train()
    obs, feat = rng.integers(0, 10, (12, 4), dtype=np.int32), rng.normal(size=(12, 3)).astype(np.float32)
    repo = tmp_path / "repo"
    result = export_module(policy, {"obs": obs, "feat": feat}, ["action", "value"], repo=repo, name="policy", format="both",
                           max_batch_size=8, max_queue_delay_us=0, instance_count=2, kind="gpu", lineage={"note": "test"})
    assert policy.training, "the module's train/eval mode is restored"
    assert [m.name for m in result.models] == ["policy", "policy-torchscript"]

    t = mc.DataType.Value
    onnx_config, ts_config = read_model_config(repo / "policy"), read_model_config(repo / "policy-torchscript")
    # A scalar per sample (the action) is `dims: [1]` with an empty reshape: Triton rejects empty dims.
    assert tensors(onnx_config.input) == [("obs", t("TYPE_INT32"), [4], None), ("feat", t("TYPE_FP32"), [3], None)]
    assert tensors(onnx_config.output) == [("action", t("TYPE_INT64"), [1], []), ("value", t("TYPE_FP32"), [1], None)]
    assert [io[0] for io in tensors(ts_config.input) + tensors(ts_config.output)] == ["obs__0", "feat__1", "action__0", "value__1"]
    for config in (onnx_config, ts_config):
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]

    new_obs, new_feat = rng.integers(0, 10, (3, 4), dtype=np.int32), rng.normal(size=(3, 3)).astype(np.float32)
    with torch.no_grad():
        action, value = (t.numpy() for t in policy.eval()(torch.from_numpy(new_obs), torch.from_numpy(new_feat)))
    session = ort.InferenceSession(str(result.models[0].model_file), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(int32)", "tensor(float)"]
    got_action, got_value = session.run(["action", "value"], {"obs": new_obs, "feat": new_feat})
    assert got_action.dtype == np.int64 and np.array_equal(got_action, action)
    np.testing.assert_allclose(got_value, value, rtol=0, atol=1e-5)
    with torch.no_grad():
        ts_action, ts_value = torch.jit.load(str(result.models[1].model_file))(torch.from_numpy(new_obs), torch.from_numpy(new_feat))
    assert np.array_equal(ts_action.numpy(), action)
    np.testing.assert_allclose(ts_value.numpy(), value, rtol=0, atol=1e-5)
    assert json.loads(result.models[0].lineage_path.read_text())["source"] == {"note": "test"}


def test_versions_count_up_and_existing_ones_are_refused(tmp_path):
    repo = tmp_path / "repo"
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)

    def export(module=None, **fields):
        torch.manual_seed(0)
        return export_module(module or nn.Linear(5, 3), {"x": x}, ["y"], repo=repo, name="lin", **fields).models[0]

    assert [export().version, export().version, export(version=5).version, export().version] == [1, 2, 5, 6]
    before = snapshot(repo)
    with pytest.raises(ExportError, match="version 2 of model `lin` already exists at") as exc:
        export(version=2)
    assert str(repo / "lin" / "2") in str(exc.value)
    with pytest.raises(ExportError, match="describes a different model") as exc:
        export(nn.Linear(5, 4))  # another output shape cannot be a version of the same model
    assert "y TYPE_FP32 [3]" in str(exc.value) and "y TYPE_FP32 [4]" in str(exc.value)
    assert snapshot(repo) == before and not list((repo / "lin").glob(".*"))

    # Serving settings given explicitly update the shared config; omitted ones keep it.
    assert export(max_batch_size=16).config_status == "updated"
    assert export().config_status == "unchanged"
    assert read_model_config(repo / "lin").max_batch_size == 16


class Branchy(nn.Module):
    """Data-dependent Python control flow: tracing records only the branch its example took."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def test_parity_failure_names_the_difference_and_writes_nothing(tmp_path):
    repo = tmp_path / "repo"
    rng = np.random.default_rng(0)
    export_module(nn.Linear(4, 2), {"x": rng.normal(size=(3, 4)).astype(np.float32)}, ["y"], repo=repo, name="good")
    before = snapshot(repo)

    torch.manual_seed(0)
    module = Branchy()
    x = np.abs(rng.normal(size=(16, 4))).astype(np.float32)
    x[0] = -5.0  # the full batch sums > 0 (the traced branch); sample 0 alone takes the other one
    with torch.no_grad():
        expected_diff = float(2 * module.lin(torch.from_numpy(x[:1])).abs().max())
    with pytest.raises(ParityError) as exc:
        export_module(module, {"x": x}, ["y"], repo=repo, name="branchy", format="both")
    message = str(exc.value)
    assert "ONNX export of `branchy`" in message and "output `y`" in message
    assert f"by up to {expected_diff:.3g} (max absolute difference, batch size 1)" in message
    assert "tolerance 0.0001" in message and "--atol" in message and "Nothing was written" in message
    assert "Python boolean" in message  # the tracer's own warning says why
    assert exc.value.exit_code == 1
    assert snapshot(repo) == before


# --------------------------------------------------------------------------- CLI


def test_cli_exports_a_run_and_reports_parity(digits, tmp_path):
    run_dir, _ = make_run(tmp_path / "runs", digits)
    result = run_cli("export", str(run_dir), "--name", "digits", env=base_env(tmp_path / "home"), cwd=tmp_path)
    assert result.returncode == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(Path("model_repository") / "digits" / "1")
    assert (tmp_path / "model_repository" / "digits" / "1" / "model.onnx").is_file()
    assert "parity on 64 `val` samples at batch sizes 1, 64" in result.stderr and "config.pbtxt created" in result.stderr


def test_cli_bad_checkpoint_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "runs" / "no-such-run"
    result = run_cli("export", str(missing), "--name", "m", "--repo", str(tmp_path / "repo"), env=base_env(tmp_path / "home"), cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_torchscript_that_hard_codes_the_cpu_is_refused_for_gpu_instances(tmp_path):
    from raytron.trainers.recipes import GPT

    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 50, (4, 8))
    gpt = GPT(50, 8, d_model=16, n_layers=1, n_heads=2)  # forward() makes positions with torch.arange(t, device=tokens.device)
    with pytest.raises(ExportError, match=r"fixed device \(cpu at recipes.py:\d+\).*--format onnx"):
        export_module(gpt, {"tokens": tokens}, ["logits"], repo=tmp_path / "repo", name="gpt", format="torchscript", kind="gpu")
    assert not (tmp_path / "repo").exists()
    assert export_module(gpt, {"tokens": tokens}, ["logits"], repo=tmp_path / "repo", name="gpt", kind="gpu").models[0].format == "onnx"
