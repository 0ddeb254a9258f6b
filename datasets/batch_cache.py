"""Decoded batches of a split, kept in this process's memory for the next pass that reads them the same way.

An evaluation reads its split in shard order with no shuffling, so every pass yields the same
batches. A training loop that evaluates often (a Tune trial evaluates at every iteration) would
otherwise parse the tars and decode every sample again each time; on the digits recipe that was
most of a trial iteration's CPU. The first pass streams from the shards (checksums verified as
usual) and keeps the batches if they fit the byte limit; later passes, also by the next training
run in the same process (Tune reuses a trial's process for the next trial), yield copies from
memory, so a model that changes its input in place cannot change what the next pass sees.

    for batch in cached_batches(ReaderConfig(manifest=m, split="val", batch_size=64, shuffle_buffer=0), limit_bytes=256 << 20):
        ...
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader

__all__ = ["cached_batches", "clear_cache", "cached_bytes"]

# (manifest sha256, reader settings) -> (batches, their size in bytes); the least recently used first.
_CACHE: OrderedDict[tuple, tuple[list[dict[str, Any]], int]] = OrderedDict()


def cached_batches(config: ReaderConfig, *, manifest: Manifest | None = None, limit_bytes: int) -> Iterator[dict[str, Any]]:
    """The batches of `config`'s split, from memory when this process read them the same way before.

    `config` must read in a fixed order (`shuffle_buffer=0`); `limit_bytes` bounds what this
    process keeps for all splits together (the least recently read go first). A split whose
    tensors take more is streamed from its shards at every pass; 0 never keeps anything.

    Raises:
        ValueError: `config` shuffles, so passes differ and nothing can be reused.
    """
    if config.shuffle_buffer:
        raise ValueError(f"cached_batches reads in a fixed order: `shuffle_buffer` must be 0, not {config.shuffle_buffer}")
    manifest = manifest or Manifest.load(config.manifest)
    key = (manifest.sha256, config.split, config.batch_size, config.rank, config.world_size, config.num_workers, config.drop_last, config.on_error)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        for batch in hit[0]:
            yield _copy(batch)
        return
    kept: list[dict[str, Any]] | None = [] if limit_bytes > 0 else None
    size = 0
    loader = ShardLoader(config, manifest=manifest)
    for batch in loader:
        if kept is not None:
            size += _nbytes(batch) if isinstance(batch, dict) else limit_bytes + 1  # raw samples (decode=False) are not kept
            if size <= limit_bytes:
                kept.append(_copy(batch))
            else:
                kept = None  # over the limit: stream every pass
        yield batch
    # Only a whole, clean pass is kept: one that skipped unreadable samples is read again next time.
    if kept is not None and not loader.skipped_last_epoch:
        _CACHE[key] = (kept, size)
        while cached_bytes() > limit_bytes:
            _CACHE.popitem(last=False)


def _copy(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch whose tensors and key lists are its own, so neither the cache nor its reader can change the other's."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in batch.items()}


def _nbytes(batch: dict[str, Any]) -> int:
    # Tensors by their elements; sample keys (short strings) by a generous estimate.
    return sum(v.element_size() * v.nelement() if isinstance(v, torch.Tensor) else sum(len(str(k)) + 50 for k in v) for v in batch.values())


def cached_bytes() -> int:
    """Bytes this process keeps for all splits."""
    return sum(s for _, s in _CACHE.values())


def clear_cache() -> None:
    """Forget every kept split (the next pass streams from the shards again)."""
    _CACHE.clear()
