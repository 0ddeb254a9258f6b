"""The `data` theme's synthetic data on disk, its readers, page-cache control and profiling.

The same seeded float32 rows (and int labels) are written twice: as raytron shards (`build_shards`
from an npz) and as one `.npy` file per sample. A cold pass first evicts the benchmark's own files
from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)` (after `fsync`, since dirty pages
are not evicted); nothing else on the machine is touched, and no root is needed.
"""

from __future__ import annotations

import cProfile
import hashlib
import os
import pstats
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from raytron.datasets.manifest import Manifest
from raytron.datasets.plan import plan_epoch
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards

WORKERS = (0, 1, 2)
WARM, COLD = "warm", "cold"
GOAL_VS_RAW = 0.8
GOAL_VS_FILE_PER_SAMPLE = 3.0
RAW = "raw read"
DECODE_FREE = "raytron decode-free"
DECODED = "raytron decoded"
FILE_PER_SAMPLE = "file per sample"
SHUFFLED = "raytron decoded, shuffled"
NO_CHECKSUM = "raytron decode-free, no checksum"
SEED = 0
"""Seed of the synthetic data (a fixed constant: the harness takes only positive numbers as options)."""
CHUNK_BYTES = 1 << 20
_MB = 1e6


def label(family: str, workers: int | None, size: str, cache: str) -> str:
    """A case's name, e.g. `raytron decoded w2, 64KB cold`."""
    return f"{family}{'' if workers is None else f' w{workers}'}, {size} {cache}"


def ratio_name(kind: str, size: str, cache: str, workers: int, first: str) -> str:
    """Ratio names: the first (small) size's warm case keeps the names of earlier results (`decode_free_vs_raw_read_w0`)."""
    return f"{kind}_w{workers}" if (size == first and cache == WARM) else f"{kind}_{cache}_{size}_w{workers}"


@dataclass
class BenchData:
    """The synthetic data of one sample size on disk, in both layouts, and the in-memory reference."""

    x: np.ndarray
    y: np.ndarray
    shards: Path
    manifest: Manifest
    sample_dir: Path
    shard_files: list[Path]
    sample_files: list[Path]
    shard_bytes: int
    sample_bytes: int


def make_data(features: int, n: int, shard_size_bytes: int, root: Path) -> BenchData:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    root.mkdir(parents=True)
    npz = root / "source.npz"
    np.savez(npz, x=x, y=y)
    t0 = time.monotonic()
    manifest = build_shards(BuildConfig(source=SourceConfig(spec=f"npz:{npz}"), out_dir=root / "shards",
                                        shard_size_bytes=shard_size_bytes, val_fraction=0.0, progress=False))
    print(f"built {len(manifest.split('train'))} shards of {n} samples x {features} float32 in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    npz.unlink()  # keeps the disk in use at shards + sample files
    sample_dir = root / "samples"
    sample_dir.mkdir()
    t0 = time.monotonic()
    sample_files = [sample_dir / f"{i:08d}.npy" for i in range(n)]
    for i, path in enumerate(sample_files):
        np.save(path, x[i], allow_pickle=False)
    print(f"wrote {n} .npy files in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    shard_files = [Path(manifest.url(s)) for s in manifest.split("train")]
    return BenchData(x=x, y=y, shards=root / "shards", manifest=manifest, sample_dir=sample_dir, shard_files=shard_files, sample_files=sample_files,
                     shard_bytes=sum(s.size_bytes for s in manifest.split("train")), sample_bytes=sum(p.stat().st_size for p in sample_files))


class FilePerSample(Dataset):
    """The baseline: a map-style dataset that loads one `.npy` file per sample; labels sit in memory."""

    def __init__(self, folder: Path, labels: np.ndarray):
        self.folder = folder
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.load(self.folder / f"{i:08d}.npy", allow_pickle=False)), self.labels[i]


# --------------------------------------------------------------------------- page cache


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop `paths`' pages from the page cache: their next read comes from the storage."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # DONTNEED leaves dirty pages in place
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(paths: list[Path]) -> int | None:
    """Bytes of `paths` in the page cache (util-linux `fincore`), or None where it cannot tell."""
    if not paths or shutil.which("fincore") is None:
        return None
    try:
        done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, paths)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return sum(int(line) for line in done.stdout.split()) if done.returncode == 0 else None
    except ValueError:
        return None


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount (device, type) holding `path`, from /proc/mounts: a tmpfs would make "cold" meaningless."""
    path = path.resolve()
    best = {"mount": "/", "device": "?", "type": "?"}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        device, mount, kind = line.split()[:3]
        if (path == Path(mount) or Path(mount) in path.parents) and len(mount) >= len(best["mount"]):
            best = {"mount": mount, "device": device, "type": kind}
    return best


def sha256_mb_per_s(size_bytes: int = 64 * 2**20) -> float:
    """hashlib's sha256 speed here (best of 3 over `size_bytes` in memory): what verifying checksums costs per byte."""
    data = np.random.default_rng(SEED).bytes(size_bytes)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        hashlib.sha256(data).digest()
        best = min(best, time.perf_counter() - t0)
    return size_bytes / best / _MB


# --------------------------------------------------------------------------- readers


def raw_read(data: BenchData) -> tuple[int, int]:
    """Every train shard start to end in 1 MiB chunks, no parsing: the I/O ceiling."""
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    for path in data.shard_files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return len(data.y), total


def shard_loader(data: BenchData, *, batch_size: int, workers: int, decode: bool, shuffle_buffer: int = 0, verify: bool = True) -> ShardLoader:
    return ShardLoader(ReaderConfig(manifest=str(data.shards), split="train", batch_size=batch_size, shuffle_buffer=shuffle_buffer,
                                    num_workers=workers, decode=decode, verify_checksums=verify), manifest=data.manifest)


def read_shards(loader: ShardLoader, data: BenchData) -> tuple[int, int]:
    decode = loader.config.decode
    samples = sum(len(batch["x"]) if decode else len(batch) for batch in loader)
    return samples, data.shard_bytes


def file_per_sample_loader(data: BenchData, *, batch_size: int, workers: int) -> DataLoader:
    # Workers start anew each pass, as ShardLoader's do (persistent_workers=False in both).
    return DataLoader(FilePerSample(data.sample_dir, data.y), batch_size=batch_size, shuffle=False, num_workers=workers)


def read_files(loader: DataLoader, data: BenchData) -> tuple[int, int]:
    return sum(len(x) for x, _ in loader), data.sample_bytes


def check_same_samples(data: BenchData, batch_size: int) -> None:
    """Both layouts hold the same first batch as the source arrays: the comparison is like for like."""
    n = min(batch_size, len(data.y))
    batch = next(iter(shard_loader(data, batch_size=batch_size, workers=0, decode=True)))
    x, y = next(iter(file_per_sample_loader(data, batch_size=batch_size, workers=0)))
    for name, got_x, got_y in (("raytron decoded", batch["x"], batch["y"]), ("file per sample", x, y)):
        if not (np.array_equal(got_x.numpy(), data.x[:n]) and np.array_equal(got_y.numpy(), data.y[:n])):
            raise SystemExit(f"{name}: the first batch differs from the source arrays; the comparison would not be like for like")


def split_shards(data: BenchData, batch_size: int, workers: int) -> dict[str, int]:
    """What splitting the epoch between `workers` costs: a worker whose part starts inside a shard
    reads the shard from its first byte and parses (and drops) the samples before its start."""
    plans = plan_epoch(data.manifest.split("train"), seed=0, epoch=0, shuffle=False, rank=0, world_size=1,
                       batch_size=batch_size, drop_last=False, num_workers=workers)
    slices = [sl for plan in plans for sl in plan.slices]
    split = {sl.shard.name for sl in slices if not (sl.start == 0 and sl.stop == sl.shard.num_samples)}
    # The reader checksums a shard in the slice that reads its tail; a shard with none is never checked.
    tails = {sl.shard.name for sl in slices if sl.stop == sl.shard.num_samples}
    return {"samples_parsed_and_dropped": sum(sl.start for sl in slices), "shards_split": len(split),
            "shards_not_checksummed": len({sl.shard.name for sl in slices} - tails)}


# --------------------------------------------------------------------------- profile


def profile(data: BenchData, *, batch_size: int, decode: bool, max_samples: int) -> dict:
    """cProfile of the in-process reader (0 workers, warm) over its first `max_samples` samples: where time goes."""
    loader = shard_loader(data, batch_size=batch_size, workers=0, decode=decode)
    profiler = cProfile.Profile()
    seen = 0
    profiler.enable()
    for batch in loader:
        seen += len(batch["x"]) if decode else len(batch)
        if seen >= max_samples:
            break
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values()) or 1e-9
    buckets: dict[str, float] = {}
    for func, (_, _, tottime, _, callers) in stats.items():
        bucket = _bucket(func)
        if bucket is None:  # a C builtin: its time goes to the bucket of whoever called it
            for caller, caller_stats in callers.items():
                name = _bucket(caller) or "other"
                buckets[name] = buckets.get(name, 0.0) + caller_stats[2]
        else:
            buckets[bucket] = buckets.get(bucket, 0.0) + tottime
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
    return {
        "samples": seen, "total_s": total,
        "share_by_part": {k: v / total for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
        "top_functions": [{"function": _func_name(f), "calls": s[1], "tottime_s": s[2], "share": s[2] / total} for f, s in top],
    }


def _bucket(func: tuple[str, int, str]) -> str | None:
    path, _, name = func
    if path == "~":
        if "_hashlib" in name:
            return "sha256 checksum"
        if "_io." in name or "readinto" in name:
            return "file I/O"
        return None
    if path.endswith("_tar.py"):
        return "tar headers (_tar.py)"
    if "webdataset" in path:
        return "sample grouping (webdataset)"
    if "numpy" in path or path.endswith(("ast.py", "tokenize.py")):
        return "numpy (npy decode, stack)"
    if "torch" in path:
        return "torch"
    if "datasets" in path:
        return "raytron reader"
    return "other"


def _func_name(func: tuple[str, int, str]) -> str:
    path, line, name = func
    return name if path == "~" else f"{Path(path).name}:{line}({name})"
