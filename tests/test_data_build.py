"""Building shards: every source round-trips, the manifest is right, and an interrupted build
never leaves a manifest that lists a partial shard."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import RAYTRON, base_env, wait_for
from raytron.datasets.errors import SourceError
from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards


def build(tmp_path: Path, spec: str, **kw) -> Manifest:
    source_kw = {k: kw.pop(k) for k in ("features", "label", "seq_len", "batch_rows") if k in kw}
    return build_shards(BuildConfig(source=SourceConfig(spec=spec, **source_kw), out_dir=tmp_path / "shards", progress=False, **kw))


def read_all(manifest: Manifest, split: str = "train", **kw) -> dict[str, dict]:
    """Every sample of a split, decoded, keyed by its sample key."""
    loader = ShardLoader(ReaderConfig(manifest=manifest.location, split=split, batch_size=7, shuffle_buffer=0, **kw))
    out = {}
    for batch in loader:
        for i, key in enumerate(batch["__key__"]):
            out[key] = {name: value[i] for name, value in batch.items() if name != "__key__"}
    return out


def test_digits_round_trip_and_manifest(tmp_path):
    from sklearn.datasets import load_digits

    m = build(tmp_path, "digits", shard_size_bytes=20_000, val_fraction=0.2, seed=3)
    digits = load_digits()
    got = {**read_all(m, "train"), **read_all(m, "val")}
    assert len(got) == len(digits.target)
    for key, sample in got.items():
        i = int(key)
        np.testing.assert_array_equal(sample["x"].numpy(), digits.data[i].astype(np.float32))
        assert int(sample["y"]) == digits.target[i]
    assert 0.15 < m.num_samples("val") / len(digits.target) < 0.25
    for shard in m.shards:  # checksums, sizes and counts describe the files on disk
        data = (tmp_path / "shards" / shard.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.size_bytes
    assert sum(s.num_samples for s in m.shards) == len(digits.target)
    st = m.stats["x"]
    assert st["per_element"] and len(st["mean"]) == 64 and len(st["histogram"]) == 64
    np.testing.assert_allclose(st["mean"], digits.data.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(st["std"], digits.data.std(axis=0, ddof=1), atol=1e-4)
    assert m.stats["y"]["class_counts"]["0"] == int((digits.target == 0).sum())
    on_disk = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert on_disk["schema"][0] == {"name": "x", "encoding": "npy", "dtype": "float32", "shape": [64]}


def test_builds_are_reproducible(tmp_path):
    a = build(tmp_path / "a", "digits", shard_size_bytes=50_000)
    b = build(tmp_path / "b", "digits", shard_size_bytes=50_000)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3, 4)).astype(np.float32)
    y = rng.integers(0, 5, size=300)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    m = build(tmp_path, f"npz:{tmp_path / 'd.npz'}", shard_size_bytes=8_000, val_fraction=0.0)
    got = read_all(m)
    assert len(got) == 300
    for key, s in got.items():
        np.testing.assert_array_equal(s["x"].numpy(), x[int(key)])
        assert int(s["y"]) == y[int(key)]


def test_parquet_file_and_folder_stream_in_record_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    table = pa.table({"a": rng.normal(size=500), "b": rng.integers(0, 100, 500), "ignored": rng.normal(size=500), "label": rng.integers(0, 3, 500)})
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(table.slice(0, 200), folder / "part-0.parquet")
    pq.write_table(table.slice(200), folder / "part-1.parquet")
    for src in (folder / "part-0.parquet", folder):
        # batch_rows=64: the table is read 64 rows at a time, never whole
        m = build(tmp_path / src.name, f"parquet:{src}", features=["a", "b"], batch_rows=64, val_fraction=0.0, shard_size_bytes=4096)
        got = read_all(m)
        n = 200 if src.suffix else 500
        assert len(got) == n
        for key, s in got.items():
            i = int(key)
            np.testing.assert_allclose(s["x"].numpy(), [table["a"][i].as_py(), table["b"][i].as_py()], rtol=1e-6)
            assert int(s["y"]) == table["label"][i].as_py()
    with pytest.raises(SourceError, match="`--features` \\(nope\\)"):
        build(tmp_path / "bad", f"parquet:{folder}", features=["nope"])


def test_images_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    images = {}
    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, size=(8, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "img" / c / f"{i}.png")
            images[(c, i)] = arr
    m = build(tmp_path, f"images:{tmp_path / 'img'}", val_fraction=0.0, shard_size_bytes=4096)
    assert m.build["source_info"]["classes"] == ["cat", "dog"]
    got = read_all(m)
    assert len(got) == 12
    for key, s in got.items():
        i = int(key)
        cls, idx = ("cat", "dog")[i // 6], i % 6
        assert int(s["y"]) == i // 6
        np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), images[(cls, idx)])  # stored losslessly, read back CHW


def test_text_round_trip(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 40).encode()
    (tmp_path / "t.txt").write_bytes(text)
    m = build(tmp_path, f"text:{tmp_path / 't.txt'}", seq_len=16, val_fraction=0.0, shard_size_bytes=4096)
    got = read_all(m)
    assert len(got) == len(text) // 17
    for key, s in got.items():
        i = int(key)
        assert bytes(s["tokens"].numpy().astype(np.uint8)) == text[i * 17:(i + 1) * 17]


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="unknown kind 'csv'"):
        build(tmp_path, "csv:/x")
    with pytest.raises(SourceError, match="does not exist"):
        build(tmp_path, "npz:/no/such.npz")
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(SourceError, match="has 3 rows but 'y' has 4"):
        build(tmp_path, f"npz:{tmp_path / 'm.npz'}")


def test_failed_build_leaves_no_manifest_and_no_partial_shard(tmp_path):
    from PIL import Image

    (tmp_path / "img" / "a").mkdir(parents=True)
    for i in range(30):
        Image.fromarray(np.full((32, 32, 3), i, dtype=np.uint8)).save(tmp_path / "img" / "a" / f"{i:02d}.png")
    good = build(tmp_path, f"images:{tmp_path / 'img'}", shard_size_bytes=8192, val_fraction=0.0)
    assert (tmp_path / "shards" / "manifest.json").exists() and len(good.shards) > 2
    (tmp_path / "img" / "a" / "20.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SourceError, match="20.png: not a readable image"):
        build(tmp_path, f"images:{tmp_path / 'img'}", shard_size_bytes=8192, val_fraction=0.0)
    out = tmp_path / "shards"
    assert not (out / "manifest.json").exists()  # the old manifest went first: never paired with new shards
    assert not list(out.glob(".*"))
    (tmp_path / "img" / "a" / "20.png").unlink()
    again = build(tmp_path, f"images:{tmp_path / 'img'}", shard_size_bytes=8192, val_fraction=0.0)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s.name for s in again.shards)
    assert sum(s.num_samples for s in again.shards) == 29


@pytest.mark.slow
def test_killed_build_then_rebuild_is_consistent(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=rng.normal(size=(40_000, 256)).astype(np.float32), y=rng.integers(0, 10, 40_000))
    out = tmp_path / "shards"
    cmd = [RAYTRON, "data", "build", "--source", f"npz:{tmp_path / 'big.npz'}", "--out", str(out), "--shard-size-bytes", "1000000"]
    proc = subprocess.Popen(cmd, env=base_env(tmp_path / "home"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(out.glob("train-*.tar"))) >= 3 or proc.poll() is not None, timeout_s=120, interval_s=0.05,
                 what="three finished shards")
        assert proc.poll() is None, "the build finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "manifest.json").exists(), "an interrupted build must not leave a manifest"
    result = subprocess.run(cmd, env=base_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    m = Manifest.load(out)
    assert not list(out.glob(".*.partial"))
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s.name for s in m.shards)
    verify = subprocess.run([RAYTRON, "data", "inspect", str(out), "--verify"], env=base_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stderr
    assert f"all {len(m.shards)} shards verified" in verify.stderr


@pytest.mark.slow
def test_cli_build_and_inspect(tmp_path):
    env = base_env(tmp_path / "home")
    out = tmp_path / "d"
    built = subprocess.run([RAYTRON, "data", "build", "--source", "digits", "--out", str(out), "--shard-size-bytes", "50000", "--val-fraction", "0.1"], env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().endswith("manifest.json")
    shown = subprocess.run([RAYTRON, "data", "inspect", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "train" in shown.stdout and "val" in shown.stdout and "x.npy" in shown.stdout
    shard = sorted(out.glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's payload: the tar still parses, the checksum does not match
    shard.write_bytes(bytes(data))
    bad = subprocess.run([RAYTRON, "data", "inspect", str(out), "--verify"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert shard.name in bad.stderr and "sha256" in bad.stderr
    wrong = subprocess.run([RAYTRON, "data", "build", "--source", "digits", "--out", str(out), "--val-fraction", "1.5"], env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "--val-fraction" in wrong.stderr


def test_inspect_of_a_missing_directory_is_bad_input(tmp_path):
    result = subprocess.run([RAYTRON, "data", "inspect", str(tmp_path / "nowhere")], env=base_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no manifest.json at" in result.stderr and "raytron data build" in result.stderr
