"""Building WebDataset shards from a source, safely.

Each shard is written under a hidden temporary name and renamed into place only when complete;
`manifest.json` is written last, atomically, and a build first removes any old manifest. So at any
moment a directory either has no manifest (a build is running or died) or one whose every shard is
complete and checksummed. Running the build again always ends with a clean, consistent directory:
stale partial files and shards the new manifest does not list are removed.

Shards are reproducible: the same source, seed and sizes give byte-identical tars.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from raytron.datasets.errors import SourceError
from raytron.datasets.manifest import FORMAT_VERSION, MANIFEST_NAME, FieldSpec, Manifest, ShardInfo
from raytron.datasets.sources import SourceConfig, open_source
from raytron.datasets.stats import FieldStats

__all__ = ["BuildConfig", "build_shards", "encode_field"]

_PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """How to build shards (the options of `raytron data build`)."""

    source: SourceConfig
    out_dir: Path
    """Directory for the shards and manifest.json (created if missing)."""
    shard_size_bytes: int = 64 * 2**20
    """A shard is closed once it holds at least this many bytes (the last shard of a split may be smaller)."""
    val_fraction: float = 0.1
    """Fraction of samples assigned to the `val` split, chosen at random with `seed`."""
    seed: int = 0
    """Seed of the train/val assignment."""
    progress: bool = True
    """Show a progress bar (samples, shards, MB/s) on stderr."""

    def __post_init__(self) -> None:
        if self.shard_size_bytes < 1024:
            raise SourceError(f"`--shard-size-bytes` ({self.shard_size_bytes}) must be >= 1024")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SourceError(f"`--val-fraction` ({self.val_fraction}) must be >= 0 and < 1")


def encode_field(spec: FieldSpec, value: Any) -> bytes:
    """Encode one field's value as it is stored in the tar (never with pickle)."""
    if spec.encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(value, dtype=spec.dtype), allow_pickle=False)
        return buf.getvalue()
    if spec.encoding == "cls":
        return str(int(value)).encode()
    if spec.encoding in ("png", "jpg"):
        return bytes(value)
    raise ValueError(f"unknown encoding {spec.encoding!r}")


class _HashingFile:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size_bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self.size_bytes


@dataclass
class _OpenShard:
    split: str
    index: int
    path: Path
    tmp: Path
    file: BinaryIO
    hasher: _HashingFile
    writer: Any
    num_samples: int = 0


@dataclass
class _Progress:
    samples: int = 0
    bytes: int = 0
    """Bytes of the shards closed so far."""
    shards: int = 0
    started: float = field(default_factory=time.monotonic)


def build_shards(config: BuildConfig) -> Manifest:
    """Write train/val shards and `manifest.json` from `config.source`.

    Returns:
        The manifest written.

    Raises:
        SourceError: the source is malformed (the directory is then left without a manifest and
            without partial files; build again after fixing the source).
    """
    import webdataset as wds

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # No manifest while shards are being replaced: a reader must never pair an old manifest with
    # new (or half-written) shards.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for stale in out.glob(f".*{_PARTIAL_SUFFIX}"):
        stale.unlink()

    source = open_source(config.source)
    stats = {f.name: FieldStats(f, seed=config.seed) for f in source.schema}
    rng = np.random.default_rng(config.seed)
    shards: list[ShardInfo] = []
    open_shards: dict[str, _OpenShard] = {}
    counters = {"train": 0, "val": 0}
    progress = _Progress()

    def open_shard(split: str) -> _OpenShard:
        index = counters[split]
        counters[split] += 1
        path = out / f"{split}-{index:06d}.tar"
        tmp = out / f".{path.name}{_PARTIAL_SUFFIX}"
        f = open(tmp, "wb")
        hasher = _HashingFile(f)
        writer = wds.TarWriter(hasher, encoder=False, mtime=0)  # fixed int mtime: reproducible tars (a float adds a PAX header per member)
        return _OpenShard(split=split, index=index, path=path, tmp=tmp, file=f, hasher=hasher, writer=writer)

    def close_shard(shard: _OpenShard) -> None:
        shard.writer.close()
        shard.file.flush()
        os.fsync(shard.file.fileno())
        shard.file.close()
        os.replace(shard.tmp, shard.path)
        shards.append(ShardInfo(name=shard.path.name, split=shard.split, num_samples=shard.num_samples,
                                size_bytes=shard.hasher.size_bytes, sha256=shard.hasher.sha256.hexdigest()))
        progress.shards += 1
        progress.bytes += shard.hasher.size_bytes

    bar = _bar(config.progress, source.num_samples)
    try:
        for index, sample in enumerate(source.samples):
            missing = [f.name for f in source.schema if f.name not in sample]
            if missing:
                raise SourceError(f"{source.description}: sample {index} lacks field(s) {', '.join(missing)}")
            split = "val" if config.val_fraction and rng.random() < config.val_fraction else "train"
            shard = open_shards.get(split)
            if shard is None:
                shard = open_shards[split] = open_shard(split)
            record = {"__key__": f"{index:09d}"}
            for spec in source.schema:
                record[spec.extension] = encode_field(spec, sample[spec.name])
                stats[spec.name].add(sample[spec.name])
            shard.writer.write(record)
            shard.num_samples += 1
            progress.samples += 1
            if shard.hasher.size_bytes >= config.shard_size_bytes:
                close_shard(shard)
                del open_shards[split]
            if bar is not None and index % 256 == 0:
                _update(bar, progress, progress.bytes + sum(s.hasher.size_bytes for s in open_shards.values()))
        for shard in list(open_shards.values()):
            close_shard(shard)
        open_shards.clear()
    except BaseException:
        for shard in open_shards.values():
            try:
                shard.writer.close()  # else the tar's finaliser later writes to the closed file
            except Exception:
                pass
            shard.file.close()
            shard.tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            _update(bar, progress, progress.bytes)
            bar.stop()
    if not shards:
        raise SourceError(f"{source.description}: the source has no samples")

    manifest = Manifest(
        format_version=FORMAT_VERSION,
        shards=sorted(shards, key=lambda s: s.name),
        schema=source.schema,
        stats={name: s.result() for name, s in stats.items()},
        build={
            "source": config.source.spec, "source_description": source.description, "source_info": source.info,
            "seed": config.seed, "val_fraction": config.val_fraction, "shard_size_bytes": config.shard_size_bytes,
            "num_samples": progress.samples, "versions": _versions(),
        },
        location=str(out),
    )
    listed = {s.name for s in manifest.shards}
    for old in out.glob("*.tar"):
        if old.name not in listed:  # from an earlier, larger build
            old.unlink()
    from raytron.cluster.storage import write_bytes_atomic

    write_bytes_atomic(out / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def _bar(enabled: bool, total: int | None):
    if not enabled:
        return None
    import sys

    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("building shards"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
    bar.start()
    bar.add_task("build", total=total, info="")
    return bar


def _update(bar, progress: _Progress, written_bytes: int) -> None:
    elapsed = max(1e-6, time.monotonic() - progress.started)
    mb = written_bytes / 1e6
    info = f"{progress.samples:,} samples, {progress.shards} shards, {mb:,.1f} MB, {mb / elapsed:,.1f} MB/s"
    bar.update(bar.task_ids[0], completed=progress.samples, info=info)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("raytron", "webdataset", "numpy", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
