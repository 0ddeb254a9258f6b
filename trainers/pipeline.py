"""The `gpt` recipe as a DeepSpeed `PipelineModule` of layer specs, and its weights back as a plain `GPT` state dict.

Layers, in order: the token embedding (tied with the output projection, as in `GPT`), the learned
positions, the blocks, the final norm, and the tied embedding again as the head. With
`pipeline_stages: N` DeepSpeed builds on each rank only the layers of its stage, splitting the
blocks evenly (`partition_method="type:Block"`); the first and last stages both hold the token
embedding and DeepSpeed all-reduces its gradient between them (`TiedLayerSpec`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from raytron.trainers.recipes import Block, SmallInitEmbedding

__all__ = ["gpt_pipeline", "gpt_state_name"]


class TokenEmbedding(SmallInitEmbedding):
    """First stage: token ids to vectors. Last stage (through `_project`): vectors to logits with the same weight."""


class PositionEmbedding(nn.Module):
    def __init__(self, seq_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)  # as GPT.pos (SmallInitEmbedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]]


def _project(embedding: TokenEmbedding, x: torch.Tensor) -> torch.Tensor:
    return x @ embedding.weight.t()  # GPT.head: Linear without bias whose weight is tok.weight


def _sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def gpt_pipeline(vocab_size: int, seq_len: int, *, num_stages: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0):
    """`GPT(vocab_size, seq_len, ...)` as a `PipelineModule` over `num_stages` stages (builds only this rank's layers)."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    layers = [
        TiedLayerSpec("tok", TokenEmbedding, vocab_size, d_model),
        LayerSpec(PositionEmbedding, seq_len, d_model),
        *(LayerSpec(Block, d_model, n_heads, dropout) for _ in range(n_layers)),
        LayerSpec(nn.LayerNorm, d_model),
        TiedLayerSpec("tok", TokenEmbedding, vocab_size, d_model, forward_fn=_project),
    ]
    return PipelineModule(layers=layers, num_stages=num_stages, loss_fn=_sequence_loss, partition_method="type:Block")


def gpt_state_name(pipeline_name: str, n_layers: int) -> list[str]:
    """The `GPT` state-dict key(s) of a `PipelineModule` parameter name (the tied embedding has two)."""
    if pipeline_name == "tied_modules.tok.weight":
        return ["tok.weight", "head.weight"]
    m = re.match(r"^(\d+)\.(.+)$", pipeline_name)
    if m is None:
        raise ValueError(f"unexpected pipeline parameter {pipeline_name!r}")
    index, rest = int(m.group(1)), m.group(2)
    if index == 1:
        return ["pos.weight"]
    if 2 <= index < 2 + n_layers:
        return [f"blocks.{index - 2}.{rest}"]
    if index == 2 + n_layers:
        return [f"norm.{rest}"]
    raise ValueError(f"unexpected pipeline parameter {pipeline_name!r}")
