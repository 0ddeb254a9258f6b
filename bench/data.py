"""Theme `data`: `ShardLoader` throughput with 0, 1 and 2 loader workers, against a raw read of the
same shard bytes (the I/O ceiling) and a map-style dataset reading one `.npy` file per sample.

One synthetic dataset (seeded float32 rows of `--features` values and int labels) is written
twice into a temporary folder: as raytron shards (`build_shards` from an npz) and as one file
per sample. Then, in the same run, samples/s and MB/s (bytes of the files read) are measured for:

- raw read: every train shard read start to end in 1 MiB chunks, no parsing;
- raytron decode-free (`decode=False`, shard order, checksums verified) at 0, 1, 2 workers;
- raytron decoded (`decode=True`, shard order, checksums verified) at 0, 1, 2 workers;
- file per sample: `torch.utils.data.DataLoader` over a Dataset whose `__getitem__` is one
  `np.load`, batch size and worker counts as raytron's;
- for information: decoded with a shuffle buffer, and decode-free without checksums.

Every reader makes one untimed warm-up pass first, so all are measured with the files in the page
cache. Then each repetition runs every case once, the order rotated each time, so background load
falls on all alike. The temporary folder is removed at the end, also on failure.

    raytron bench data [--quick]
    python bench/data.py --num-samples 30000 --repeats 5
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _harness import BenchArgs, option, parse_args, summarize, write_results
from torch.utils.data import DataLoader, Dataset

from raytron.datasets.manifest import Manifest
from raytron.datasets.reader import ReaderConfig, ShardLoader
from raytron.datasets.sources import SourceConfig
from raytron.datasets.writer import BuildConfig, build_shards

WORKERS = (0, 1, 2)
GOAL_VS_RAW = 0.8
GOAL_VS_FILE_PER_SAMPLE = 3.0
CHUNK_BYTES = 1 << 20
RAW = "raw read"
DECODE_FREE = "raytron decode-free"
DECODED = "raytron decoded"
FILE_PER_SAMPLE = "file per sample"
SHUFFLED = "raytron decoded, shuffled"
NO_CHECKSUM = "raytron decode-free, no checksum"
_MB = 1e6


@dataclass(kw_only=True)
class DataArgs(BenchArgs):
    """Options of the `data` theme."""

    num_samples: int | None = option(None, "Samples in the synthetic dataset (default: 20000 with --quick, else 50000).")
    features: int = option(784, "float32 values per sample (784: an MNIST-sized row, 3,136 bytes).")
    shard_size_bytes: int = option(32 * 2**20, "Size at which the builder closes a shard.")
    batch_size: int = option(256, "Batch size of every loader.")
    shuffle_buffer: int = option(1000, "Shuffle buffer of the extra `raytron decoded, shuffled` case.")
    seed: int = option(0, "Seed of the synthetic data.")
    timeout_s: float = option(120.0, "Limit for one pass over the data; a pass past it is stopped and counted as failed.")
    budget_s: float = option(900.0, "Limit for all passes; those left when it is spent are not run.")
    work_dir: Path | None = option(None, "Folder the temporary data goes in (default: the system's temporary folder).")


@dataclass(kw_only=True)
class Case:
    """One reader at one worker count: `read()` makes one full pass and returns (samples, bytes read)."""

    family: str
    workers: int | None
    read: Callable[[], tuple[int, int]]

    @property
    def label(self) -> str:
        return self.family if self.workers is None else f"{self.family} w{self.workers}"


@dataclass(kw_only=True)
class Run:
    """One timed pass."""

    case: str
    family: str
    workers: int | None
    repeat: int
    """0-based repetition; -1 for the untimed warm-up."""
    seconds: float | None = None
    samples: int | None = None
    bytes_read: int | None = None
    error: str | None = None

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.seconds if self.ok else None

    @property
    def mb_per_s(self) -> float | None:
        return self.bytes_read / self.seconds / _MB if self.ok else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seconds)


class PassTimeout(RuntimeError):
    """A pass over the data ran past `--timeout-s`."""


# --------------------------------------------------------------------------- data


@dataclass
class Dataset_:
    """The synthetic data on disk, in both layouts, and the in-memory reference."""

    x: np.ndarray
    y: np.ndarray
    shards: Path
    manifest: Manifest
    sample_dir: Path
    shard_bytes: int
    sample_bytes: int


def make_data(args: DataArgs, n: int, root: Path) -> Dataset_:
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((n, args.features), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    npz = root / "source.npz"
    np.savez(npz, x=x, y=y)
    t0 = time.monotonic()
    manifest = build_shards(BuildConfig(source=SourceConfig(spec=f"npz:{npz}"), out_dir=root / "shards",
                                        shard_size_bytes=args.shard_size_bytes, val_fraction=0.0, progress=False))
    print(f"built {len(manifest.split('train'))} shards of {n} samples in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    npz.unlink()  # keeps the disk in use at shards + sample files
    sample_dir = root / "samples"
    sample_dir.mkdir()
    t0 = time.monotonic()
    for i in range(n):
        np.save(sample_dir / f"{i:08d}.npy", x[i], allow_pickle=False)
    np.save(root / "labels.npy", y, allow_pickle=False)
    print(f"wrote {n} .npy files in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    shard_bytes = sum(s.size_bytes for s in manifest.split("train"))
    sample_bytes = sum(p.stat().st_size for p in sample_dir.iterdir())
    return Dataset_(x=x, y=y, shards=root / "shards", manifest=manifest, sample_dir=sample_dir, shard_bytes=shard_bytes, sample_bytes=sample_bytes)


class FilePerSample(Dataset):
    """The baseline: a map-style dataset that loads one `.npy` file per sample; labels sit in memory."""

    def __init__(self, folder: Path, labels: np.ndarray):
        self.folder = folder
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.load(self.folder / f"{i:08d}.npy", allow_pickle=False)), self.labels[i]


# --------------------------------------------------------------------------- readers


def raw_read(data: Dataset_) -> tuple[int, int]:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    for shard in data.manifest.split("train"):
        with open(data.manifest.url(shard), "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return sum(s.num_samples for s in data.manifest.split("train")), total


def shard_loader(args: DataArgs, data: Dataset_, *, workers: int, decode: bool, shuffle_buffer: int = 0, verify: bool = True) -> ShardLoader:
    return ShardLoader(ReaderConfig(manifest=str(data.shards), split="train", batch_size=args.batch_size, shuffle_buffer=shuffle_buffer,
                                    num_workers=workers, decode=decode, verify_checksums=verify), manifest=data.manifest)


def read_shards(loader: ShardLoader, data: Dataset_) -> tuple[int, int]:
    decode = loader.config.decode
    samples = sum(len(batch["x"]) if decode else len(batch) for batch in loader)
    return samples, data.shard_bytes


def file_per_sample_loader(args: DataArgs, data: Dataset_, workers: int) -> DataLoader:
    # Workers start anew each pass, as ShardLoader's do (persistent_workers=False in both).
    return DataLoader(FilePerSample(data.sample_dir, data.y), batch_size=args.batch_size, shuffle=False, num_workers=workers)


def read_files(loader: DataLoader, data: Dataset_) -> tuple[int, int]:
    return sum(len(x) for x, _ in loader), data.sample_bytes


def cases(args: DataArgs, data: Dataset_) -> list[Case]:
    out = [Case(family=RAW, workers=None, read=lambda: raw_read(data))]
    for w in WORKERS:
        free, decoded = shard_loader(args, data, workers=w, decode=False), shard_loader(args, data, workers=w, decode=True)
        files = file_per_sample_loader(args, data, w)
        shuffled = shard_loader(args, data, workers=w, decode=True, shuffle_buffer=args.shuffle_buffer)
        out += [
            Case(family=DECODE_FREE, workers=w, read=lambda l=free: read_shards(l, data)),
            Case(family=DECODED, workers=w, read=lambda l=decoded: read_shards(l, data)),
            Case(family=FILE_PER_SAMPLE, workers=w, read=lambda l=files: read_files(l, data)),
            Case(family=SHUFFLED, workers=w, read=lambda l=shuffled: read_shards(l, data)),
        ]
    unverified = shard_loader(args, data, workers=0, decode=False, verify=False)
    out.append(Case(family=NO_CHECKSUM, workers=0, read=lambda: read_shards(unverified, data)))
    return out


def check_same_samples(args: DataArgs, data: Dataset_) -> None:
    """Both layouts hold the same first batch as the source arrays: the comparison is like for like."""
    n = min(args.batch_size, len(data.y))
    batch = next(iter(shard_loader(args, data, workers=0, decode=True)))
    x, y = next(iter(file_per_sample_loader(args, data, 0)))
    for name, got_x, got_y in ((DECODED, batch["x"], batch["y"]), (FILE_PER_SAMPLE, x, y)):
        if not (np.array_equal(got_x.numpy(), data.x[:n]) and np.array_equal(got_y.numpy(), data.y[:n])):
            raise SystemExit(f"{name}: the first batch differs from the source arrays; the comparison would not be like for like")


# --------------------------------------------------------------------------- measuring


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise PassTimeout(f"pass ran past {seconds:g} s (`--timeout-s`)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def time_pass(case: Case, repeat: int, expected: int, timeout_s: float) -> Run:
    run = Run(case=case.label, family=case.family, workers=case.workers, repeat=repeat)
    t0 = time.perf_counter()
    try:
        with time_limit(timeout_s):
            samples, bytes_read = case.read()
        run.seconds = time.perf_counter() - t0
        run.samples, run.bytes_read = samples, bytes_read
        if samples != expected:
            run.error = f"read {samples} samples, expected {expected}"
    except (PassTimeout, RuntimeError, OSError) as exc:  # a failed pass is recorded; the others still run
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def measure(args: DataArgs, data: Dataset_, repeats: int) -> list[Run]:
    all_cases = cases(args, data)
    expected = len(data.y)
    deadline = time.monotonic() + args.budget_s
    # One warm-up pass per reader (not per worker count): afterwards every file is in the page cache.
    warm = [c for c in all_cases if c.workers in (None, 0) and c.family in (RAW, DECODE_FREE, DECODED, FILE_PER_SAMPLE)]
    plan = [(c, -1) for c in warm]
    for i in range(repeats):
        shift = i % len(all_cases)
        plan += [(c, i) for c in all_cases[shift:] + all_cases[:shift]]
    runs = []
    for case, repeat in plan:
        left_s = deadline - time.monotonic()
        if left_s < 1:
            runs.append(Run(case=case.label, family=case.family, workers=case.workers, repeat=repeat, error=f"not run: `--budget-s` {args.budget_s:g} spent"))
            continue
        run = time_pass(case, repeat, expected, min(args.timeout_s, left_s))
        runs.append(run)
        label = "warm-up" if repeat < 0 else f"#{repeat + 1}/{repeats}"
        result = f"{run.samples_per_s:12,.0f} samples/s {run.mb_per_s:9,.1f} MB/s" if run.ok else f"FAILED: {run.error}"
        print(f"{case.label:36s} {label:8s} {result}", file=sys.stderr)
    return runs


def profile(args: DataArgs, data: Dataset_, decode: bool, max_samples: int) -> dict:
    """cProfile of the in-process reader (0 workers) over its first `max_samples` samples: where time goes."""
    loader = shard_loader(args, data, workers=0, decode=decode)
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
    if path.endswith("tarfile.py"):
        return "tarfile (tar headers)"
    if "webdataset" in path:
        return "webdataset (tar iteration, grouping)"
    if "numpy" in path or path.endswith(("ast.py", "tokenize.py")):
        return "np.load (incl. header parsing)"
    if "torch" in path:
        return "torch"
    if "datasets" in path:
        return "raytron reader"
    return "other"


def _func_name(func: tuple[str, int, str]) -> str:
    path, line, name = func
    return name if path == "~" else f"{Path(path).name}:{line}({name})"


# --------------------------------------------------------------------------- report


def report(args: DataArgs, n: int, repeats: int, data: Dataset_, runs: list[Run], profiles: dict, started_load: float) -> int:
    timed = [r for r in runs if r.repeat >= 0 and r.ok]
    labels = list(dict.fromkeys(r.case for r in runs))
    summary = {
        "samples_per_s": {c: summarize([r.samples_per_s for r in timed if r.case == c]) for c in labels},
        "mb_per_s": {c: summarize([r.mb_per_s for r in timed if r.case == c]) for c in labels},
        "seconds": {c: summarize([r.seconds for r in timed if r.case == c]) for c in labels},
    }
    med = {c: summary["samples_per_s"][c]["median"] for c in labels}

    def ratio(ours: str, theirs: str) -> float | None:
        return med[ours] / med[theirs] if med.get(ours) and med.get(theirs) else None

    ratios = {f"decode_free_vs_raw_read_w{w}": ratio(f"{DECODE_FREE} w{w}", RAW) for w in WORKERS}
    ratios |= {f"decoded_vs_file_per_sample_w{w}": ratio(f"{DECODED} w{w}", f"{FILE_PER_SAMPLE} w{w}") for w in WORKERS}
    failed = [r for r in runs if not r.ok]
    notes = [
        _goal(f"decode-free ShardLoader >= {GOAL_VS_RAW:g}x the raw read of the same shard bytes", ratios, "decode_free_vs_raw_read", GOAL_VS_RAW),
        _goal(f"decoded ShardLoader >= {GOAL_VS_FILE_PER_SAMPLE:g}x a file-per-sample map-style dataset at the same worker count", ratios,
              "decoded_vs_file_per_sample", GOAL_VS_FILE_PER_SAMPLE),
        "All measurements are warm-cache (one untimed warm-up pass per reader; the page cache is not dropped, which needs root): "
        "the raw read is a memory-bandwidth ceiling, not a disk one, and the file-per-sample baseline pays no seeks. "
        "From cold or network storage both the raw read and the file-per-sample dataset would be far slower.",
        f"Data: {n} samples of {args.features} float32 + an int label; {len(data.manifest.split('train'))} train shards, "
        f"{data.shard_bytes / _MB:,.1f} MB of tar ({data.shard_bytes / n:,.0f} B/sample: two 512-byte tar headers per sample); "
        f"{data.sample_bytes / _MB:,.1f} MB of .npy files ({data.sample_bytes / n:,.0f} B/sample). MB/s counts the bytes of the files each reader reads.",
        f"Ratios compare median samples/s over {repeats} passes (higher is better). Checksums are verified in every raytron case but `{NO_CHECKSUM}`.",
        f"The machine has {_cores()} cores: with 2 workers the 2 workers and the main process share them. "
        f"Load average (1 min) was {started_load:.2f} at the start (another developer may be running tests).",
    ]
    notes += _profile_notes(profiles)
    notes.append(f"{len(failed)} of {len(runs)} passes failed or were not run." if failed else f"All {len(runs)} passes (including warm-ups) read every sample.")
    config = {
        **asdict(args), "num_samples": n, "repeats": repeats, "workers": list(WORKERS), "raw_read_chunk_bytes": CHUNK_BYTES,
        "raytron_reader": "ShardLoader(ReaderConfig(split='train', shuffle_buffer=0, verify_checksums=True, decode=False|True))",
        "baseline_raw_read": "open(shard, 'rb', buffering=0).readinto(1 MiB buffer) for every train shard, in order",
        "baseline_file_per_sample": "DataLoader(Dataset whose __getitem__ is np.load(one .npy file), shuffle=False, same batch size and workers)",
        "order": "one untimed warm-up per reader, then each repetition runs every case once, the order rotated",
    }
    results = {"summary": summary, "runs": [_row(r) for r in runs], "profiles": profiles}

    def plot(plt):
        return _plot(plt, med, ratios, profiles, n, repeats)

    write_results("data", config, results, ratios, notes, plot, out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    return 1 if failed else 0


def _goal(text: str, ratios: dict, prefix: str, goal: float) -> str:
    values = {w: ratios[f"{prefix}_w{w}"] for w in WORKERS}
    if any(v is None for v in values.values()):
        return f"Goal: {text}: not measured at every worker count."
    met = [w for w, v in values.items() if v >= goal]
    verdict = "met at every worker count" if len(met) == len(WORKERS) else "NOT met" if not met else f"met only at {', '.join(f'w{w}' for w in met)}"
    return f"Goal: {text}: {verdict} (" + ", ".join(f"w{w} {v:.2f}x" for w, v in values.items()) + ")."


def _profile_notes(profiles: dict) -> list[str]:
    notes = []
    for name, p in profiles.items():
        parts = ", ".join(f"{k} {v:.0%}" for k, v in p["share_by_part"].items() if v >= 0.02)
        top = ", ".join(f"{f['function']} {f['share']:.0%}" for f in p["top_functions"][:5])
        notes.append(f"Where time goes, {name} (cProfile, 0 workers, first {p['samples']} samples, {p['total_s'] / p['samples'] * 1e6:.0f} us/sample "
                     f"under the profiler): {parts}. Top functions by own time: {top}.")
    return notes


def _row(r: Run) -> dict:
    row = {k: v for k, v in asdict(r).items() if k != "error" or v}
    row["samples_per_s"], row["mb_per_s"] = r.samples_per_s, r.mb_per_s
    return row


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def _plot(plt, med: dict, ratios: dict, profiles: dict, n: int, repeats: int):
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    families = [(DECODE_FREE, "#1f77b4"), (DECODED, "#2ca02c"), (SHUFFLED, "#98df8a"), (FILE_PER_SAMPLE, "#ff7f0e")]
    width = 0.2
    for k, (family, color) in enumerate(families):
        xs = [g + (k - 1.5) * width for g in range(len(WORKERS))]
        values = [med.get(f"{family} w{w}") or 0 for w in WORKERS]
        ax.bar(xs, values, width * 0.92, color=color, label=family)
        for x, v in zip(xs, values):
            if v:
                ax.text(x, v * 1.08, f"{v / 1e3:,.1f}k", ha="center", va="bottom", fontsize=8, rotation=90)
    raw = med.get(RAW)
    if raw:
        ax.axhline(raw, color="black", linestyle="--", linewidth=1.2, label=f"{RAW} (I/O ceiling): {raw / 1e3:,.0f}k")
        ax.axhline(raw * GOAL_VS_RAW, color="gray", linestyle=":", linewidth=1.2, label=f"goal for decode-free: {GOAL_VS_RAW:g}x raw read")
    for g, w in enumerate(WORKERS):
        free, dec = ratios.get(f"decode_free_vs_raw_read_w{w}"), ratios.get(f"decoded_vs_file_per_sample_w{w}")
        text = f"decode-free / raw: {_x(free)}\ndecoded / file per sample: {_x(dec)}"
        ax.text(g, 0.02, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8.5,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e3, top=(raw or max(v or 1 for v in med.values())) * 4)
    ax.set_xticks(range(len(WORKERS)), [f"{w} loader workers" for w in WORKERS])
    ax.set_ylabel("samples/s (log scale, higher is better)")
    ax.set_title(f"median of {repeats} warm-cache passes over {n:,} samples")
    ax.legend(fontsize=8.5, loc="upper right", ncol=2)
    # Where the decode-free and decoded paths spend their time (0 workers, cProfile).
    names = list(profiles)
    parts = list(dict.fromkeys(k for p in profiles.values() for k in p["share_by_part"]))
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        left = 0.0
        for j, part in enumerate(parts):
            share = profiles[name]["share_by_part"].get(part, 0.0)
            bx.barh(i, share, left=left, color=colors(j % 10), edgecolor="white", label=part if i == 0 else None)
            if share >= 0.06:
                bx.text(left + share / 2, i, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += share
    bx.set_yticks(range(len(names)), [f"{name}\n{profiles[name]['total_s'] / profiles[name]['samples'] * 1e6:.0f} us/sample" for name in names])
    bx.set_xlim(0, 1)
    bx.invert_yaxis()
    bx.set_xlabel("share of reader time (cProfile, 0 workers)")
    bx.set_title("where the time goes")
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("data: raytron ShardLoader vs a raw read of the same bytes and a file-per-sample dataset", fontsize=12)
    fig.tight_layout()
    return fig


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(DataArgs, "ShardLoader throughput against a raw read of the same shards and a file-per-sample dataset.", argv)
    repeats = args.pick_repeats(quick=2, full=3)
    n = args.num_samples or (20_000 if args.quick else 50_000)
    if n < args.batch_size:
        raise SystemExit(f"`--num-samples` ({n}) must be >= `--batch-size` ({args.batch_size})")
    # A SIGTERM (e.g. from a CI timeout) must still reach the `finally` that removes the temporary data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started_load = __import__("os").getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="raytron-bench-data-", dir=args.work_dir))
    try:
        data = make_data(args, n, root)
        check_same_samples(args, data)
        runs = measure(args, data, repeats)
        # Below the goal (it is, for small samples): where the in-process reader spends its time.
        profiles = {name: profile(args, data, decode, min(n, 10_000)) for name, decode in (("decode-free", False), ("decoded", True))}
        return report(args, n, repeats, data, runs, profiles, started_load)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
