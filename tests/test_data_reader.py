"""Reading shards: even splits across ranks and workers, exact coverage, determinism, exact
resume, named errors for bad data, and remote (http, pipe:) shards."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import pytest

from raytron.datasets.errors import ChecksumMismatch, DataError, MissingKey, ShardError
from raytron.datasets.manifest import Manifest, ShardInfo
from raytron.datasets.plan import consumed_per_worker, plan_epoch
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Manifest:
    """1,797 digits in an uneven number of train shards (not divisible by ranks or workers)."""
    out = tmp_path_factory.mktemp("digits")
    m = build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=out, shard_size_bytes=60_000, val_fraction=0.0, progress=False))
    assert len(m.split("train")) % 4 != 0
    return m


def keys(loader) -> list[list[str]]:
    return [batch["__key__"] for batch in loader]


def config(m: Manifest, **kw) -> ReaderConfig:
    base = dict(manifest=m.location, batch_size=32, shuffle_buffer=200, seed=5)
    base.update(kw)
    return ReaderConfig(**base)


@pytest.mark.parametrize("batch_size", [32, 50])
def test_two_ranks_two_workers_equal_batches_every_sample_once(shards, batch_size):
    per_rank = []
    seen: list[str] = []
    for rank in range(2):
        loader = ShardLoader(config(shards, rank=rank, world_size=2, num_workers=2, batch_size=batch_size))
        batches = keys(loader)
        per_rank.append(len(batches))
        assert all(batches), "no empty batch"
        seen += [k for b in batches for k in b]
    assert per_rank[0] == per_rank[1] == len(ShardLoader(config(shards, rank=0, world_size=2, batch_size=batch_size)))
    assert len(seen) == len(set(seen)) == shards.num_samples("train")


def test_uneven_ranks_still_get_equal_batch_counts():
    # 9 samples, 2 ranks, batch 4: rank 0 has 5 (4+1), rank 1 has 4, split into 2+2, not 4.
    shard_list = [ShardInfo(name=f"s{i}", split="train", num_samples=n, size_bytes=1, sha256="") for i, n in enumerate([4, 5])]
    plans = [plan_epoch(shard_list, seed=0, epoch=0, shuffle=False, rank=r, world_size=2, batch_size=4, drop_last=False, num_workers=1)[0] for r in range(2)]
    assert [p.batch_sizes for p in plans] == [[4, 1], [2, 2]]
    dropped = [plan_epoch(shard_list, seed=0, epoch=0, shuffle=False, rank=r, world_size=2, batch_size=4, drop_last=True, num_workers=1)[0] for r in range(2)]
    assert [p.batch_sizes for p in dropped] == [[4], [4]]
    with pytest.raises(DataError, match="same number of batches"):
        plan_epoch(shard_list, seed=0, epoch=0, shuffle=False, rank=0, world_size=2, batch_size=1, drop_last=False, num_workers=1)


def test_consumed_per_worker_follows_the_dataloader_cycle():
    assert consumed_per_worker([3, 2], 0) == ([0, 0], 0)
    assert consumed_per_worker([3, 2], 3) == ([2, 1], 1)
    assert consumed_per_worker([3, 1], 3) == ([2, 1], 0)  # worker 1 is done: worker 0 goes on
    with pytest.raises(DataError):
        consumed_per_worker([1, 1], 3)


def test_order_is_deterministic_per_seed_and_epoch(shards):
    a = ShardLoader(config(shards, num_workers=2))
    b = ShardLoader(config(shards, num_workers=2))
    epoch0 = keys(a)
    assert epoch0 == keys(b)
    epoch1 = keys(a)  # the loader moved on to epoch 1 by itself
    assert epoch1 != epoch0 and sorted(sum(epoch1, [])) == sorted(sum(epoch0, []))
    assert keys(ShardLoader(config(shards, num_workers=2, seed=6))) != epoch0


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 5, 17])
def test_resume_yields_exactly_the_uninterrupted_samples(shards, workers, stop_after):
    full = keys(ShardLoader(config(shards, num_workers=workers)))
    first = ShardLoader(config(shards, num_workers=workers))
    it = iter(first)
    head = [next(it)["__key__"] for _ in range(stop_after)]
    state = first.state_dict()
    del it
    resumed = ShardLoader(config(shards, num_workers=workers))
    resumed.load_state_dict(state)
    assert head + keys(resumed) == full


def test_resume_in_a_later_epoch(shards):
    ref = ShardLoader(config(shards))
    keys(ref)
    epoch1 = keys(ref)
    first = ShardLoader(config(shards))
    keys(first)
    it = iter(first)
    head = [next(it)["__key__"] for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 1
    resumed = ShardLoader(config(shards))
    resumed.load_state_dict(state)
    assert head + keys(resumed) == epoch1


def test_resume_with_different_settings_is_refused(shards):
    state = ShardLoader(config(shards, batch_size=32)).state_dict()
    with pytest.raises(DataError, match="`batch_size` \\(32 saved, 16 now\\)"):
        ShardLoader(config(shards, batch_size=16)).load_state_dict(state)


def test_bad_reader_settings_name_the_field(shards):
    with pytest.raises(DataError, match="`rank` \\(2\\)"):
        config(shards, rank=2, world_size=2)
    with pytest.raises(DataError, match="`split` \\('test'\\)"):
        ShardLoader(config(shards, split="test"))


def copy_shards(m: Manifest, dest: Path) -> Manifest:
    import shutil

    shutil.copytree(m.location, dest)
    return Manifest.load(dest)


def test_truncated_shard_names_url_and_sample_and_skip_counts(shards, tmp_path):
    m = copy_shards(shards, tmp_path / "c")
    victim = m.split("train")[1]
    path = Path(m.url(victim))
    path.write_bytes(path.read_bytes()[: victim.size_bytes // 2])
    with pytest.raises(ShardError) as info:
        keys(ShardLoader(config(m, shuffle_buffer=0)))
    assert info.value.url == str(path) and str(path) in str(info.value)
    assert info.value.sample_key is not None and info.value.sample_key in str(info.value)
    loader = ShardLoader(config(m, shuffle_buffer=0, on_error="skip"))
    got = sum(len(b) for b in keys(loader))
    assert loader.skipped_last_epoch > 0
    assert got + loader.skipped_last_epoch == m.num_samples("train")


def test_checksum_mismatch_is_named(shards, tmp_path):
    m = copy_shards(shards, tmp_path / "c")
    victim = m.split("train")[0]
    path = Path(m.url(victim))
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # payload byte: the tar parses, the bytes differ
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as info:
        keys(ShardLoader(config(m, shuffle_buffer=0)))
    assert str(path) in str(info.value) and "sha256" in str(info.value)
    keys(ShardLoader(config(m, shuffle_buffer=0, verify_checksums=False)))  # an explicit opt-out reads it


def test_sample_missing_a_key_is_named(shards, tmp_path):
    import io
    import tarfile

    m = copy_shards(shards, tmp_path / "c")
    victim = m.split("train")[0]
    path = Path(m.url(victim))
    src = tarfile.open(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            if member.name.endswith(".y.cls") and member.name.startswith(src.getmembers()[0].name.split(".")[0]):
                missing = member.name.split(".")[0]
                continue
            dst.addfile(member, src.extractfile(member))
    path.write_bytes(buf.getvalue())
    with pytest.raises(MissingKey) as info:
        keys(ShardLoader(config(m, shuffle_buffer=0, verify_checksums=False)))
    assert info.value.sample_key == missing and str(path) in str(info.value) and "y.cls" in str(info.value)


def test_http_source_on_loopback_matches_local(shards):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=shards.location)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        remote = ShardLoader(config(Manifest.load(url), num_workers=2))
        assert remote.manifest.sha256 == shards.sha256
        assert keys(remote) == keys(ShardLoader(config(shards, num_workers=2)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_pipe_shard_urls(shards):
    piped = dataclasses.replace(shards, shards=[dataclasses.replace(s, name=f"pipe:cat {shards.url(s)}") for s in shards.shards])
    assert keys(ShardLoader(config(piped, shuffle_buffer=0), manifest=piped)) == keys(ShardLoader(config(shards, shuffle_buffer=0)))


def test_a_shard_split_between_workers_is_still_checksummed(shards, tmp_path):
    """The worker that reads a shard's tail has read all of it (tars are read from byte 0) and
    checks it; the error keeps its type across the DataLoader's process boundary."""
    m = copy_shards(shards, tmp_path / "c")
    loader = ShardLoader(config(m, shuffle_buffer=0, num_workers=2))
    split = [sl for sl in loader._plans(0)[0].slices if sl.stop < sl.shard.num_samples]
    assert split, "the plan splits a shard between the two workers"
    path = Path(m.url(split[0].shard))
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=path.name):
        keys(loader)


def test_rank_zeros_state_resumes_every_rank(shards):
    """A trainer checkpoints rank 0's reader state; rank 1 resumes from it at its own next sample."""
    full = keys(ShardLoader(config(shards, rank=1, world_size=2)))
    rank0 = ShardLoader(config(shards, rank=0, world_size=2))
    it = iter(rank0)
    for _ in range(4):
        next(it)
    state = rank0.state_dict()
    rank1 = ShardLoader(config(shards, rank=1, world_size=2))
    rank1.load_state_dict(state)
    assert keys(rank1) == full[4:]
    with pytest.raises(DataError, match="`world_size`"):
        ShardLoader(config(shards, rank=0, world_size=1)).load_state_dict(state)
