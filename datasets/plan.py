"""Which samples each rank and loader worker reads in an epoch, and in which batches: pure arithmetic.

The plan for one epoch:

1. The split's shards are put in an order drawn from `(seed, epoch)` (or kept in name order without
   shuffling). Concatenated, their samples have global positions 0..N-1.
2. Rank r gets one contiguous range of positions; the ranges' sizes differ by at most one, so
   without resampling every sample is read exactly once per epoch.
3. Every rank yields the same number of batches K = ceil(ceil(N / R) / B): DDP hangs when ranks
   disagree. A rank is cut into full batches and a last partial one; a rank one sample short of a
   full last batch splits its last two batches instead, so no batch is empty. With
   `drop_last`, every rank yields floor(min_r n_r / B) full batches and the rest is dropped.
4. A rank's batches are split into contiguous chunks, one per loader worker. PyTorch's DataLoader
   takes one item from each worker in turn, so the order the trainer sees is fixed by the plan;
   `consumed_per_worker` inverts it for an exact mid-epoch resume (which worker produced how many,
   and whose turn is next).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytron.datasets.errors import DataError
from raytron.datasets.manifest import ShardInfo

__all__ = ["ShardSlice", "WorkerPlan", "plan_epoch", "consumed_per_worker"]


@dataclass(frozen=True)
class ShardSlice:
    """Samples [start, stop) of one shard (counted in the shard's own order)."""

    shard: ShardInfo
    start: int
    stop: int


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads in an epoch."""

    slices: list[ShardSlice]
    batch_sizes: list[int]

    @property
    def num_samples(self) -> int:
        return sum(self.batch_sizes)


def plan_epoch(
    shards: list[ShardInfo], *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
    batch_size: int, drop_last: bool, num_workers: int,
) -> list[WorkerPlan]:
    """The plan of each loader worker (at least one) of `rank` for `epoch`.

    Raises:
        DataError: the split is too small to give every rank the same number of batches.
    """
    order = list(range(len(shards)))
    if shuffle:
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(shards))]
    ordered = [shards[i] for i in order]
    total = sum(s.num_samples for s in ordered)
    base, extra = divmod(total, world_size)
    sizes = [base + (1 if r < extra else 0) for r in range(world_size)]
    start = sum(sizes[:rank])
    n = sizes[rank]
    if drop_last:
        k = min(sizes) // batch_size
        if k == 0:
            raise DataError(f"the split has {total} samples: too few for one full batch of {batch_size} on each of {world_size} ranks; lower `batch_size` or set drop_last=False")
        batches = [batch_size] * k
    else:
        k = -(-max(sizes) // batch_size)
        if min(sizes) < k:  # judged on the smallest rank, so every rank agrees
            raise DataError(
                f"the split has {total} samples over {world_size} ranks with batch size {batch_size}: every rank cannot get "
                f"the same number of batches ({k}) without repeating samples; use a batch size above 1, fewer ranks, or drop_last=True"
            )
        batches = [batch_size] * (n // batch_size)
        if n % batch_size:
            batches.append(n % batch_size)
        if len(batches) < k:  # one sample short of another batch: split the last full one in two
            last = batches.pop()
            batches += [last - last // 2, last // 2]
    used = sum(batches)
    workers = max(1, num_workers)
    plans = []
    offset = start
    for w in range(workers):
        chunk = batches[len(batches) * w // workers: len(batches) * (w + 1) // workers]
        count = sum(chunk)
        plans.append(WorkerPlan(slices=_slices(ordered, offset, offset + count), batch_sizes=chunk))
        offset += count
    assert offset == start + used  # internal invariant, not user input
    return plans


def consumed_per_worker(batch_counts: list[int], consumed: int) -> tuple[list[int], int]:
    """Batches each worker had produced when the trainer had taken `consumed`, and which worker
    the DataLoader would have asked next.

    The DataLoader asks its workers in a fixed cycle and skips those that are done; a resumed
    loader must start its cycle at the returned worker to continue the same order.
    """
    workers = len(batch_counts)
    taken = [0] * workers
    pointer = 0
    if consumed > sum(batch_counts):
        raise DataError(f"resume point {consumed} is past the epoch's {sum(batch_counts)} batches")
    for _ in range(consumed):
        for step in range(workers):
            w = (pointer + step) % workers
            if taken[w] < batch_counts[w]:
                taken[w] += 1
                pointer = (w + 1) % workers
                break
    for _ in range(workers):  # the next worker that still has batches
        if taken[pointer] < batch_counts[pointer]:
            break
        pointer = (pointer + 1) % workers
    return taken, pointer


def _slices(ordered: list[ShardInfo], lo: int, hi: int) -> list[ShardSlice]:
    out = []
    pos = 0
    for shard in ordered:
        a, b = max(lo, pos), min(hi, pos + shard.num_samples)
        if a < b:
            out.append(ShardSlice(shard=shard, start=a - pos, stop=b - pos))
        pos += shard.num_samples
        if pos >= hi:
            break
    return out
