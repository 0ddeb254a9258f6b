"""Built-in model recipes, sized from the shards' manifest: `mlp`, `cnn` and `gpt`.

A recipe gives the module and how to take its inputs and targets from a batch, so the training
loop (and later the exporter) need no model-specific code. Serving rebuilds a module for export
with `build_model(config, manifest)` and a checkpoint's state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raytron.cluster.spec import import_object
from raytron.datasets.manifest import Manifest
from raytron.trainers.errors import TrainError
from raytron.trainers.spec import ModelConfig

__all__ = ["Recipe", "build_model", "MLP", "CNN", "GPT"]


@dataclass
class Recipe:
    module: nn.Module
    inputs: Callable[[dict], torch.Tensor]
    targets: Callable[[dict], torch.Tensor]
    tokens_per_sample: int = 0
    """For language models: tokens a sample contributes (tokens/s); 0 otherwise."""
    flops_per_token: float = 0.0
    """Approximate training FLOPs per token (6 x parameters), for MFU on GPU."""


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        dims = [in_features] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(dims[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width * 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class SmallInitEmbedding(nn.Embedding):
    """An embedding initialised N(0, 0.02) as GPT-2 does, not N(0, 1): with the output head tied to the
    token embedding, unit-variance vectors give logits in the hundreds and a first loss far above
    ln(vocab). Done in `reset_parameters`, which runs inside the module's own constructor, so it also
    holds under DeepSpeed's `zero.Init` (which partitions each module's parameters right after it)."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)
        self._fill_padding_idx_with_zero()


class GPT(nn.Module):
    """A small decoder-only transformer (pre-norm blocks, learned positions, tied embeddings)."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise TrainError(f"`train.model.args.d_model` ({d_model}) must be divisible by `n_heads` ({n_heads})")
        self.tok = SmallInitEmbedding(vocab_size, d_model)
        self.pos = SmallInitEmbedding(seq_len, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.n2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.n_heads = n_heads
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.n1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.n2(x))


def build_model(config: ModelConfig, manifest: Manifest) -> Recipe:
    """The recipe's module, sized from the manifest (features, classes, image channels, vocabulary)."""
    if config.function:
        module = import_object(config.function)(manifest=manifest, **config.args)
        if not isinstance(module, nn.Module):
            raise TrainError(f"`train.model.function` ({config.function}) returned {type(module).__name__}, not a torch.nn.Module")
        x = _first_field(manifest, exclude=("y",))
        return Recipe(module=module, inputs=lambda b: b[x].float(), targets=lambda b: b["y"])
    fields = {f.name: f for f in manifest.schema}
    try:
        if config.recipe == "mlp":
            _need(fields, "x", "mlp")
            module = MLP(int(fields["x"].shape[0]), _num_classes(manifest), **config.args)
            return Recipe(module=module, inputs=lambda b: b["x"].float(), targets=lambda b: b["y"])
        if config.recipe == "cnn":
            _need(fields, "image", "cnn")
            module = CNN(int(fields["image"].shape[2]), _num_classes(manifest), **config.args)
            return Recipe(module=module, inputs=lambda b: b["image"].float() / 255.0, targets=lambda b: b["y"])
        _need(fields, "tokens", "gpt")
        seq_len = int(fields["tokens"].shape[0]) - 1
        vocab = int(manifest.build.get("source_info", {}).get("vocab_size", 256))
        module = GPT(vocab, seq_len, **config.args)
        params = sum(p.numel() for p in module.parameters())
        return Recipe(module=module, inputs=lambda b: b["tokens"][:, :-1].long(), targets=lambda b: b["tokens"][:, 1:].long(),
                      tokens_per_sample=seq_len, flops_per_token=6.0 * params)
    except TypeError as exc:  # unexpected keyword in `args`
        raise TrainError(f"`train.model.args` do not fit the {config.recipe} recipe: {exc}") from None


def _need(fields: dict, name: str, recipe: str) -> None:
    if name not in fields:
        raise TrainError(f"`train.model.recipe` ({recipe}) needs shards with a `{name}` field; these have: {', '.join(fields)}")


def _num_classes(manifest: Manifest) -> int:
    counts = manifest.stats.get("y", {}).get("class_counts")
    if not counts:
        raise TrainError("the shards have no integer `y` labels with class counts; classification recipes need them")
    return max(int(k) for k in counts) + 1


def _first_field(manifest: Manifest, exclude: tuple[str, ...]) -> str:
    return next(f.name for f in manifest.schema if f.name not in exclude)
