"""Checkpoints: safetensors + JSON round trip, pruning, and partial directories never chosen."""

from __future__ import annotations

import json

import pytest
import torch

from raytron.trainers.checkpoint import latest_checkpoint, list_checkpoints, load_model_state, load_optimizer_state, save_checkpoint
from raytron.trainers.errors import CheckpointError
from raytron.trainers.recipes import GPT


def trained_pair():
    torch.manual_seed(0)
    model = GPT(vocab_size=50, seq_len=8, d_model=16, n_layers=1, n_heads=2)  # has tied weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randint(0, 50, (4, 8))).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_and_optimizer_exactly(tmp_path):
    model, opt = trained_pair()
    ckpt = save_checkpoint(tmp_path, step=3, model_state=model.state_dict(), optimizer_state=opt.state_dict(), meta={"epoch": 0, "note": "x"}, keep=2)
    assert ckpt.meta["step"] == 3 and ckpt.meta["note"] == "x"
    fresh = GPT(vocab_size=50, seq_len=8, d_model=16, n_layers=1, n_heads=2)
    fresh.load_state_dict(load_model_state(tmp_path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(load_optimizer_state(ckpt))
    for (_, a), (_, b) in zip(sorted(opt.state_dict()["state"].items()), sorted(fresh_opt.state_dict()["state"].items())):
        for name in a:
            torch.testing.assert_close(torch.as_tensor(b[name]), torch.as_tensor(a[name]), rtol=0, atol=0)
    assert not list(ckpt.path.glob("*.pkl")) and json.loads((ckpt.path / "meta.json").read_text())["format"] == "raytron-checkpoint-1"


def test_keeps_the_newest_and_ignores_partial_directories(tmp_path):
    model, _ = trained_pair()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step=step, model_state=model.state_dict(), optimizer_state=None, meta={}, keep=2)
    (tmp_path / "step-00000040").mkdir()  # a crash before meta.json: not a checkpoint
    (tmp_path / ".step-00000050.abc").mkdir()  # a temporary directory: not a checkpoint
    assert [c.step for c in list_checkpoints(tmp_path)] == [20, 30]
    assert latest_checkpoint(tmp_path).step == 30


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model_state(tmp_path)
