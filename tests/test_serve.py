"""`raytron serve`: a real exported repository (ONNX and TorchScript), real tritonserver replicas
behind the gateway, called with tritonclient; a killed replica is replaced; Ctrl-C drains and stops."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from helpers import RAYTRON, REPO, base_env, interrupt, wait_for
from raytron.datasets.manifest import Manifest
from raytron.serving.export import export_checkpoint
from raytron.serving.modelconfig import read_model_config
from raytron.serving.triton import free_port
from raytron.trainers.checkpoint import save_checkpoint
from raytron.trainers.recipes import MLP
from raytron.trainers.spec import TrainJobSpec

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model repository with `digits` (ONNX) and `digits-torchscript`, exported from a checkpoint."""
    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    root = tmp_path_factory.mktemp("serve")
    manifest: Manifest = build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=root / "digits", shard_size_bytes=100_000,
                                                  val_fraction=0.1, progress=False))
    spec = TrainJobSpec.model_validate({"name": "digits-mlp", "kind": "train", "storage": {"path": str(root / "runs")},
                                        "train": {"model": {"recipe": "mlp", "args": {"hidden": 16}}, "data": {"manifest": manifest.location}, "steps": 1}})
    torch.manual_seed(0)
    model = MLP(64, 10, hidden=16).eval()
    save_checkpoint(spec.run_dir / "checkpoints", step=1, model_state=model.state_dict(), optimizer_state=None, keep=1,
                    meta={"epoch": 0, "spec": json.loads(spec.to_json()), "metrics": {}, "manifest_sha256": manifest.sha256, "world_size": 1})
    export_checkpoint(spec.run_dir, name="digits", repo=root / "repo", format="both")
    return root / "repo", model


def _serve(repo: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([RAYTRON, "serve", str(repo), "--port", str(port), *args], env=base_env(tmp_path / "home"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    return proc, port, log


def _stop(proc: subprocess.Popen) -> int:
    return interrupt(proc)


def test_serve_answers_tritonclient_replaces_a_dead_replica_and_stops_cleanly(exported, tmp_path):
    import tritonclient.grpc as grpcclient

    repo, model = exported
    proc, port, log = _serve(repo, tmp_path, "--replicas", "2")
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        wait_for(lambda: _ready(client), timeout_s=120, what="raytron serve becoming ready")
        x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
        expected = model(torch.from_numpy(x)).detach().numpy()
        for name, inp, out in (("digits", "x", "logits"), ("digits-torchscript", "x__0", "logits__0")):
            request = grpcclient.InferInput(inp, list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            got = client.infer(name, [request]).as_numpy(out)
            np.testing.assert_allclose(got, expected, atol=1e-5)
            # What clients see is the production config, not the local Python-backend twin.
            production = read_model_config(repo / name)
            seen = client.get_model_config(name).config
            assert seen.platform == production.platform and seen.max_batch_size == production.max_batch_size
            assert [(i.name, i.data_type, list(i.dims)) for i in seen.input] == [(i.name, i.data_type, list(i.dims)) for i in production.input]

        # SIGKILL one replica's whole process group: the server notices and starts a replacement.
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        assert len(servers) == 2, [p.name() for p in servers]
        victim = servers[0]
        victim.kill()
        wait_for(lambda: "starting a replacement" in log.read_text() and "serving on" in log.read_text().split("starting a replacement")[-1],
                 timeout_s=120, what="a replacement replica")
        for _ in range(20):  # every request still answers: the gateway routes around the dead one
            client.infer("digits", [_input(x)])
        client.close()
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert "draining and stopping" in log.read_text()
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "processes left behind after raytron serve stopped"


def test_serve_refuses_a_repository_it_cannot_serve(tmp_path):
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "tensorrt_plan"\nmax_batch_size: 1\n')
    proc, _, log = _serve(tmp_path / "repo", tmp_path)
    assert proc.wait(timeout=60) == 2, log.read_text()
    assert "platform 'tensorrt_plan' cannot be served locally" in log.read_text()


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def _input(x: np.ndarray):
    import tritonclient.grpc as grpcclient

    request = grpcclient.InferInput("x", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    return request


def test_a_minimal_onnx_config_is_completed_from_the_model_as_triton_does(tmp_path):
    """Many ONNX repositories give only `platform`: the tensors come from the model, and a model
    whose every first dimension is dynamic batches with Triton's default max_batch_size of 4."""
    import tritonclient.grpc as grpcclient

    from raytron.serving.serve import ServeConfig, Server

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh()).eval()
    (tmp_path / "repo" / "tiny" / "1").mkdir(parents=True)
    torch.onnx.export(model, (torch.zeros(2, 6),), str(tmp_path / "repo" / "tiny" / "1" / "model.onnx"), input_names=["features"],
                      output_names=["scores"], dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    (tmp_path / "repo" / "tiny" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    with Server(ServeConfig(repo=tmp_path / "repo", port=0, startup_timeout_s=60), log=lambda _: None) as server:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        seen = client.get_model_config("tiny").config
        assert (seen.platform, seen.max_batch_size) == ("onnxruntime_onnx", 4)
        assert [(t.name, t.data_type, list(t.dims)) for t in seen.input] == [("features", 11, [6])]  # 11: TYPE_FP32
        assert [(t.name, list(t.dims)) for t in seen.output] == [("scores", [3])]
        x = np.random.default_rng(1).random((4, 6), dtype=np.float32)
        request = grpcclient.InferInput("features", [4, 6], "FP32")
        request.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("tiny", [request]).as_numpy("scores"), model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
        client.close()
