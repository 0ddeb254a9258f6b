"""Evaluation batches kept in memory: the same batches as the shards give, no second read of the
shards, nothing a consumer changes in place leaks into the next pass, and the byte limit holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from raytron.datasets.batch_cache import cached_batches, cached_bytes, clear_cache
from raytron.datasets.errors import DataError
from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards


@pytest.fixture()
def digits(tmp_path) -> Manifest:
    """The digits with a val split over several shards (a fresh copy per test: some tests remove it)."""
    clear_cache()
    yield build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=tmp_path / "digits", shard_size_bytes=60_000, val_fraction=0.3, progress=False))
    clear_cache()


def val(m: Manifest, batch_size: int = 64) -> ReaderConfig:
    return ReaderConfig(manifest=m.location, split="val", batch_size=batch_size, shuffle_buffer=0)


def remove_shards(m: Manifest) -> None:
    for shard in m.split("val"):
        Path(m.url(shard)).unlink()


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["__key__"] == y["__key__"] and torch.equal(x["x"], y["x"]) and torch.equal(x["y"], y["y"]) for x, y in zip(a, b))


def test_the_second_pass_comes_from_memory_and_equals_the_shards(digits):
    from_shards = list(ShardLoader(val(digits), manifest=digits))
    first = list(cached_batches(val(digits), manifest=digits, limit_bytes=1 << 30))
    assert same(first, from_shards)
    assert cached_bytes() > 0
    remove_shards(digits)  # a pass that read the shards again would fail now
    again = list(cached_batches(val(digits), manifest=digits, limit_bytes=1 << 30))
    assert same(again, from_shards)
    with pytest.raises(DataError):  # another batch size is another pass: read from the shards, which are gone
        list(cached_batches(val(digits, batch_size=50), manifest=digits, limit_bytes=1 << 30))


def test_changing_a_yielded_batch_in_place_does_not_change_the_next_pass(digits):
    expected = list(ShardLoader(val(digits), manifest=digits))
    for _ in range(2):
        for batch in cached_batches(val(digits), manifest=digits, limit_bytes=1 << 30):
            batch["x"].mul_(0)  # a model that scales its input in place
            batch["__key__"].clear()
    assert same(list(cached_batches(val(digits), manifest=digits, limit_bytes=1 << 30)), expected)


def test_a_split_over_the_limit_is_streamed_every_pass(digits):
    list(cached_batches(val(digits), manifest=digits, limit_bytes=10_000))  # the val split decodes to ~140 kB
    assert cached_bytes() == 0
    remove_shards(digits)
    with pytest.raises(DataError):
        list(cached_batches(val(digits), manifest=digits, limit_bytes=10_000))


def test_the_least_recently_read_split_goes_first_when_the_limit_is_reached(digits):
    list(cached_batches(val(digits, batch_size=64), manifest=digits, limit_bytes=1 << 30))
    one = cached_bytes()
    list(cached_batches(val(digits, batch_size=50), manifest=digits, limit_bytes=int(one * 1.5)))
    assert cached_bytes() <= one * 1.5
    remove_shards(digits)
    list(cached_batches(val(digits, batch_size=50), manifest=digits, limit_bytes=int(one * 1.5)))  # kept
    with pytest.raises(DataError):
        list(cached_batches(val(digits, batch_size=64), manifest=digits, limit_bytes=int(one * 1.5)))  # evicted


def test_rebuilt_shards_are_not_served_from_the_old_batches(digits, tmp_path):
    old = list(cached_batches(val(digits), manifest=digits, limit_bytes=1 << 30))
    root = Path(digits.location)
    shutil.rmtree(root)
    rebuilt = build_shards(BuildConfig(source=SourceConfig(spec="digits"), out_dir=root, shard_size_bytes=60_000, val_fraction=0.3, seed=7, progress=False))
    new = list(cached_batches(val(rebuilt), manifest=rebuilt, limit_bytes=1 << 30))
    assert not same(new, old) and same(new, list(ShardLoader(val(rebuilt), manifest=rebuilt)))


def test_a_shuffled_reader_is_refused(digits):
    with pytest.raises(ValueError, match="shuffle_buffer"):
        list(cached_batches(ReaderConfig(manifest=digits.location, split="val", shuffle_buffer=10), manifest=digits, limit_bytes=1 << 30))
