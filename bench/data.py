"""Theme `data`: `ShardLoader` throughput with 0, 1 and 2 loader workers, against a raw read of the
same shard bytes (the I/O ceiling) and a map-style dataset reading one `.npy` file per sample, for
two sample sizes, with the files in the page cache (warm) and evicted from it (cold).

For each sample size (`--features` float32, 784 = 3 KB; `--large-features`, 16384 = 64 KB) one
synthetic dataset is written twice into a temporary folder: as raytron shards and as one file per
sample (see `_data_sources.py`). Then, in the same run, samples/s and MB/s (bytes of the files
read) are measured for:

- raw read: every train shard read start to end in 1 MiB chunks, no parsing;
- raytron decode-free (`decode=False`, shard order, checksums verified) at 0, 1, 2 workers;
- raytron decoded (`decode=True`, shard order, checksums verified) at 0, 1, 2 workers;
- file per sample: `torch.utils.data.DataLoader` over a Dataset whose `__getitem__` is one
  `np.load`, batch size and worker counts as raytron's;
- for information: decode-free without checksums (0 workers), and (small samples, warm) decoded
  with a shuffle buffer.

Warm: every reader makes one untimed warm-up pass first. Cold: before each timed pass the files
that pass reads (the shards, or the `.npy` files) are evicted from the page cache with
`posix_fadvise(DONTNEED)` (the benchmark's own files only; no root, no `drop_caches`). Each
repetition runs every case once, the order rotated, so background load falls on all alike. The
temporary folder (on disk: beside the checkout, not in a possibly memory-backed /tmp) is removed
at the end, also on failure.

    raytron bench data [--quick]
    python bench/data.py --num-samples 30000 --repeats 5
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _data_plot import plot_results
from _data_sources import (
    CHUNK_BYTES, COLD, DECODE_FREE, DECODED, FILE_PER_SAMPLE, GOAL_VS_FILE_PER_SAMPLE, GOAL_VS_RAW, NO_CHECKSUM, RAW, SEED, SHUFFLED, WARM,
    WORKERS, BenchData, check_same_samples, evict_from_page_cache, file_per_sample_loader, filesystem_of, label, make_data, profile,
    ratio_name, raw_read, read_files, read_shards, resident_bytes, sha256_mb_per_s, shard_loader, split_shards,
)
from _harness import BenchArgs, option, parse_args, summarize, write_results

from raytron.datasets.errors import DataError

REPO = Path(__file__).resolve().parents[1]
_MB = 1e6


@dataclass(kw_only=True)
class DataArgs(BenchArgs):
    """Options of the `data` theme."""

    num_samples: int | None = option(None, "Small samples in the dataset (default: 20000 with --quick, else 50000).")
    features: int = option(784, "float32 values per small sample (784: an MNIST-sized row, 3,136 bytes).")
    large_num_samples: int | None = option(None, "Large samples in the dataset (default: 2000 with --quick, else 6000: about 400 MB per layout).")
    large_features: int = option(16384, "float32 values per large sample (16384: 65,536 bytes).")
    shard_size_bytes: int = option(32 * 2**20, "Size at which the builder closes a shard.")
    batch_size: int = option(256, "Batch size of every loader.")
    shuffle_buffer: int = option(1000, "Shuffle buffer of the extra `raytron decoded, shuffled` case.")
    timeout_s: float = option(120.0, "Limit for one pass over the data; a pass past it is stopped and counted as failed.")
    budget_s: float = option(900.0, "Limit for all passes; those left when it is spent are not run.")
    work_dir: Path | None = option(None, "Folder the temporary data goes in (default: the checkout's root, on disk; /tmp may be memory-backed).")


@dataclass(frozen=True, kw_only=True)
class SampleSize:
    """One sample size and what is measured at it."""

    name: str
    """e.g. "3KB": the float32 payload per sample, rounded."""
    features: int
    num_samples: int
    cold_workers: tuple[int, ...]
    """Worker counts measured cold (each cold file-per-sample pass of small samples costs seconds)."""
    extras: bool
    """Also the informational cases (shuffled; no checksum)."""


@dataclass(kw_only=True)
class Case:
    """One reader at one worker count, size and cache state: `read()` makes one full pass and returns (samples, bytes read)."""

    family: str
    workers: int | None
    size: str
    cache: str
    read: Callable[[], tuple[int, int]]
    files: list[Path] = field(default_factory=list)
    """What the pass reads: evicted from the page cache before a cold pass."""

    @property
    def label(self) -> str:
        return label(self.family, self.workers, self.size, self.cache)


@dataclass(kw_only=True)
class Run:
    """One timed pass."""

    case: str
    family: str
    workers: int | None
    size: str
    cache: str
    repeat: int
    """0-based repetition; -1 for the untimed warm-up."""
    evict_s: float | None = None
    """Time spent evicting the pass's files before it (not timed), for a cold pass."""
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


def sample_sizes(args: DataArgs) -> list[SampleSize]:
    small = args.num_samples or (20_000 if args.quick else 50_000)
    large = args.large_num_samples or (2_000 if args.quick else 6_000)
    return [
        SampleSize(name=_size_name(args.features), features=args.features, num_samples=small, cold_workers=(0, 2), extras=True),
        SampleSize(name=_size_name(args.large_features), features=args.large_features, num_samples=large, cold_workers=WORKERS, extras=False),
    ]


def _size_name(features: int) -> str:
    return f"{max(1, round(features * 4 / 1024))}KB"


def cases(args: DataArgs, size: SampleSize, data: BenchData) -> list[Case]:
    bs = args.batch_size
    out = []
    for cache, workers in ((WARM, WORKERS), (COLD, size.cold_workers)):
        out.append(Case(family=RAW, workers=None, size=size.name, cache=cache, read=lambda: raw_read(data), files=data.shard_files))
        for w in workers:
            free, decoded = shard_loader(data, batch_size=bs, workers=w, decode=False), shard_loader(data, batch_size=bs, workers=w, decode=True)
            files = file_per_sample_loader(data, batch_size=bs, workers=w)
            out += [
                Case(family=DECODE_FREE, workers=w, size=size.name, cache=cache, read=lambda l=free: read_shards(l, data), files=data.shard_files),
                Case(family=DECODED, workers=w, size=size.name, cache=cache, read=lambda l=decoded: read_shards(l, data), files=data.shard_files),
                Case(family=FILE_PER_SAMPLE, workers=w, size=size.name, cache=cache, read=lambda l=files: read_files(l, data), files=data.sample_files),
            ]
            if size.extras and cache == WARM:
                shuffled = shard_loader(data, batch_size=bs, workers=w, decode=True, shuffle_buffer=args.shuffle_buffer)
                out.append(Case(family=SHUFFLED, workers=w, size=size.name, cache=cache, read=lambda l=shuffled: read_shards(l, data)))
        # What verifying checksums costs, in one process: the sha256 is per byte, the rest per sample.
        unverified = shard_loader(data, batch_size=bs, workers=0, decode=False, verify=False)
        out.append(Case(family=NO_CHECKSUM, workers=0, size=size.name, cache=cache, read=lambda l=unverified: read_shards(l, data), files=data.shard_files))
    return out


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


def time_pass(case: Case, repeat: int, expected: int, timeout_s: float, evicted: dict) -> Run:
    run = Run(case=case.label, family=case.family, workers=case.workers, size=case.size, cache=case.cache, repeat=repeat)
    try:
        if case.cache == COLD:
            t0 = time.perf_counter()
            evict_from_page_cache(case.files)
            run.evict_s = time.perf_counter() - t0
            layout = f"{case.size} {'sample files' if case.family == FILE_PER_SAMPLE else 'shards'}"
            if layout not in evicted:  # once per layout: did the eviction work? (fincore on up to 500 files)
                probe = case.files[:500]
                evicted[layout] = {"files_checked": len(probe), "bytes": sum(p.stat().st_size for p in probe), "resident_bytes_after_evict": resident_bytes(probe)}
        t0 = time.perf_counter()
        with time_limit(timeout_s):
            samples, bytes_read = case.read()
        run.seconds = time.perf_counter() - t0
        run.samples, run.bytes_read = samples, bytes_read
        if samples != expected:
            run.error = f"read {samples} samples, expected {expected}"
    except (PassTimeout, DataError, RuntimeError, OSError) as exc:  # a failed pass is recorded; the others still run
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def measure(args: DataArgs, size: SampleSize, data: BenchData, repeats: int, deadline: float, evicted: dict) -> list[Run]:
    all_cases = cases(args, size, data)
    # One warm-up pass per reader (not per worker count or cache state): afterwards every file is in the page cache.
    warm = [c for c in all_cases if c.cache == WARM and c.workers in (None, 0) and c.family in (RAW, DECODE_FREE, DECODED, FILE_PER_SAMPLE)]
    plan = [(c, -1) for c in warm]
    for i in range(repeats):
        shift = i % len(all_cases)
        plan += [(c, i) for c in all_cases[shift:] + all_cases[:shift]]
    runs = []
    for case, repeat in plan:
        left_s = deadline - time.monotonic()
        if left_s < 1:
            runs.append(Run(case=case.label, family=case.family, workers=case.workers, size=case.size, cache=case.cache, repeat=repeat,
                            error=f"not run: `--budget-s` {args.budget_s:g} spent"))
            continue
        run = time_pass(case, repeat, len(data.y), min(args.timeout_s, left_s), evicted)
        runs.append(run)
        label_ = "warm-up" if repeat < 0 else f"#{repeat + 1}/{repeats}"
        result = f"{run.samples_per_s:12,.0f} samples/s {run.mb_per_s:9,.1f} MB/s" if run.ok else f"FAILED: {run.error}"
        print(f"{case.label:44s} {label_:8s} {result}", file=sys.stderr)
    return runs


# --------------------------------------------------------------------------- report


def tabulate(runs: list[Run], sizes: list[SampleSize]) -> tuple[dict, dict, dict]:
    """The summary table (metric -> case -> statistics), median samples/s by case, and the ratios."""
    timed = [r for r in runs if r.repeat >= 0 and r.ok]
    labels = list(dict.fromkeys(r.case for r in runs))
    summary = {
        metric: {c: summarize([getattr(r, metric) for r in timed if r.case == c]) for c in labels}
        for metric in ("samples_per_s", "mb_per_s", "seconds")
    }
    med = {c: summary["samples_per_s"][c]["median"] for c in labels}

    def ratio(ours: str, theirs: str) -> float | None:
        return med[ours] / med[theirs] if med.get(ours) and med.get(theirs) else None

    ratios = {}
    for kind, ours, theirs in (("decode_free_vs_raw_read", DECODE_FREE, RAW), ("decoded_vs_file_per_sample", DECODED, FILE_PER_SAMPLE),
                               ("decode_free_vs_file_per_sample", DECODE_FREE, FILE_PER_SAMPLE)):
        for s in sizes:
            for cache, workers in ((WARM, WORKERS), (COLD, s.cold_workers)):
                for w in workers:
                    base = label(theirs, None if theirs == RAW else w, s.name, cache)
                    ratios[ratio_name(kind, s.name, cache, w, sizes[0].name)] = ratio(label(ours, w, s.name, cache), base)
    return summary, med, ratios


def goal_notes(sizes: list[SampleSize], med: dict, ratios: dict, info: dict, profiles: dict, sha_mb_per_s: float) -> list[str]:
    """Per sample size and cache state: is each goal met, and if not, what a sample costs on each side."""
    notes = []
    for s in sizes:
        for cache, workers in ((WARM, WORKERS), (COLD, s.cold_workers)):
            notes += _goal_notes(s, cache, workers, sizes[0].name, med, ratios, info[s.name], profiles.get(f"decode-free {s.name}", {}), sha_mb_per_s)
    return notes


def _goal_notes(s: SampleSize, cache: str, workers: tuple[int, ...], first: str, med: dict, ratios: dict, info: dict, profile_: dict,
                sha_mb_per_s: float) -> list[str]:
    def values(kind: str) -> dict[int, float | None]:
        return {w: ratios[ratio_name(kind, s.name, cache, w, first)] for w in workers}

    def us(family: str, w: int | None) -> str:
        v = med.get(label(family, w, s.name, cache))
        return f"{_us(1e6 / v)} us" if v else "n/a"

    raw = med.get(label(RAW, None, s.name, cache))
    head = f"{s.name} {cache}"
    why = ""
    if raw and not _all_met(values("decode_free_vs_raw_read"), GOAL_VS_RAW):
        parts = ", ".join(f"{k} {v:.0%}" for k, v in list(profile_.get("share_by_part", {}).items())[:3])
        sample_bytes = info["shard_bytes"] / info["num_samples"]
        why = (f" Per sample, the raw read costs {us(RAW, None)} ({raw * sample_bytes / _MB:,.0f} MB/s) and decode-free "
               + ", ".join(f"w{w} {us(DECODE_FREE, w)}" for w in workers)
               + f"; 0.8x needs <= {_us(1e6 / (raw * GOAL_VS_RAW))} us/sample. Verifying the sha256 alone costs {_us(sample_bytes / sha_mb_per_s)} us/sample "
               f"(sha256 runs at {sha_mb_per_s:,.0f} MB/s here); the rest is the reader's per-sample work in Python"
               + (f" (warm profile: {parts})." if parts else "."))
        unverified = med.get(label(NO_CHECKSUM, 0, s.name, cache))
        if unverified:
            why += f" Without checksums, decode-free w0 costs {us(NO_CHECKSUM, 0)}/sample: {_x(unverified / raw)} the raw read."
    return [
        f"Goal {head}: decode-free >= {GOAL_VS_RAW:g}x raw read: {_verdict(values('decode_free_vs_raw_read'), GOAL_VS_RAW)}.{why}",
        f"Goal {head}: decoded >= {GOAL_VS_FILE_PER_SAMPLE:g}x file per sample (like for like: both yield tensors): "
        f"{_verdict(values('decoded_vs_file_per_sample'), GOAL_VS_FILE_PER_SAMPLE)}; decode-free vs file per sample "
        f"(the issue's wording): {_verdict(values('decode_free_vs_file_per_sample'), GOAL_VS_FILE_PER_SAMPLE)}. "
        "Per sample: file per sample " + ", ".join(f"w{w} {us(FILE_PER_SAMPLE, w)}" for w in workers)
        + "; decoded " + ", ".join(f"w{w} {us(DECODED, w)}" for w in workers) + ".",
    ]


def _all_met(values: dict, goal: float) -> bool:
    return all(v is not None and v >= goal for v in values.values())


def _verdict(values: dict[int, float | None], goal: float) -> str:
    listed = ", ".join(f"w{w} {_x(v)}" for w, v in values.items())
    if any(v is None for v in values.values()):
        return f"not measured at every worker count ({listed})"
    met = [w for w, v in values.items() if v >= goal]
    verdict = "met at every worker count" if len(met) == len(values) else "NOT met" if not met else f"met only at {', '.join(f'w{w}' for w in met)}"
    return f"{verdict} ({listed})"


def _us(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def report(args: DataArgs, sizes: list[SampleSize], repeats: int, runs: list[Run], info: dict, profiles: dict, evicted: dict,
           started_load: float, work_fs: dict, sha_mb_per_s: float) -> int:
    summary, med, ratios = tabulate(runs, sizes)
    failed = [r for r in runs if not r.ok]
    notes = goal_notes(sizes, med, ratios, info, profiles, sha_mb_per_s)
    checked = "; ".join(f"{k}: {v['resident_bytes_after_evict']} of {v['bytes']:,} bytes in the first {v['files_checked']} files" if v["resident_bytes_after_evict"] is not None
                        else f"{k}: not checked (no fincore)" for k, v in evicted.items())
    cold_raw = {s.name: med.get(label(RAW, None, s.name, COLD)) for s in sizes}
    notes += [
        "Warm: one untimed warm-up pass per reader, the files stay in the page cache, and the raw read is a memory copy. "
        f"Cold: before each cold pass the files it reads are evicted (fsync + posix_fadvise DONTNEED; resident right after eviction: {checked}). "
        f"The data sit on {work_fs['device']} ({work_fs['type']}, mounted at {work_fs['mount']}), a virtual disk: the host may still cache it, so cold here "
        "is the guest's storage path (raw read " + ", ".join(f"{k} {v * info[k]['shard_bytes'] / info[k]['num_samples'] / _MB:,.0f} MB/s" for k, v in cold_raw.items() if v)
        + "), faster than a network file system and slower than memory. Cold file per sample still finds inodes and directory entries cached "
        "(only data pages are evicted), so it pays no metadata reads: a lower bound on its cost.",
    ]
    for s in sizes:
        i = info[s.name]
        notes.append(f"Data {s.name}: {s.num_samples:,} samples of {s.features} float32 + an int label; {i['num_shards']} train shard(s), "
                     f"{i['shard_bytes'] / _MB:,.1f} MB of tar ({i['shard_bytes'] / s.num_samples:,.0f} B/sample: two 512-byte tar headers and padding per field); "
                     f"{i['sample_bytes'] / _MB:,.1f} MB of .npy files ({i['sample_bytes'] / s.num_samples:,.0f} B/sample). MB/s counts the bytes of the files each reader reads.")
    notes += [
        f"Ratios compare median samples/s over {repeats} passes (higher is better); names without a size and cache state are {sizes[0].name} warm, as in earlier results. "
        f"Checksums are verified in every raytron case but `{NO_CHECKSUM}`; `{SHUFFLED}` has shuffle_buffer={args.shuffle_buffer}.",
        f"The machine has {os.cpu_count()} cores: with 2 workers the 2 workers and the main process share them. "
        f"Load average (1 min) was {started_load:.2f} at the start (another developer may be running tests).",
    ]
    per_sample = {c: 1e6 / med[label(c, w, sizes[0].name, WARM)] for c, w in ((RAW, None), (DECODE_FREE, 0), (NO_CHECKSUM, 0), (DECODED, 0), (FILE_PER_SAMPLE, 0))
                  if med.get(label(c, w, sizes[0].name, WARM))}
    notes.append(f"Cost per sample in one process, {sizes[0].name} warm (median, us): " + ", ".join(f"{c} {_us(us)}" for c, us in per_sample.items()) + ".")
    notes += _profile_notes(profiles)
    for s in sizes:
        for w, split in info[s.name]["worker_split"].items():
            if split["shards_split"]:
                checked_all = "each is checksummed by the worker that reads its tail" if not split["shards_not_checksummed"] else \
                    f"{split['shards_not_checksummed']} is never checksummed"
                notes.append(f"{s.name}, {w} workers: {split['shards_split']} shard(s) split between workers ({checked_all}); the worker starting mid-shard "
                             f"parses and drops {split['samples_parsed_and_dropped']:,} samples ({split['samples_parsed_and_dropped'] / s.num_samples:.0%} of the epoch).")
    notes.append(f"{len(failed)} of {len(runs)} passes failed or were not run." if failed else f"All {len(runs)} passes (including warm-ups) read every sample.")
    config = {
        **asdict(args), "sizes": [asdict(s) for s in sizes], "repeats": repeats, "seed": SEED, "workers": list(WORKERS), "raw_read_chunk_bytes": CHUNK_BYTES,
        "work_filesystem": work_fs,
        "raytron_reader": "ShardLoader(ReaderConfig(split='train', shuffle_buffer=0, verify_checksums=True, decode=False|True))",
        "baseline_raw_read": "open(shard, 'rb', buffering=0).readinto(1 MiB buffer) for every train shard, in order",
        "baseline_file_per_sample": "DataLoader(Dataset whose __getitem__ is np.load(one .npy file), shuffle=False, same batch size and workers)",
        "cold": "before each cold pass: os.fsync + os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) on every file the pass reads (all shards, or all .npy files)",
        "order": "per size: one untimed warm-up per reader, then each repetition runs every case (warm and cold) once, the order rotated",
    }
    results = {"summary": summary, "runs": [_row(r) for r in runs], "profiles": profiles, "data": info, "eviction_check": evicted,
               "sha256_mb_per_s": sha_mb_per_s}
    write_results("data", config, results, ratios, notes, lambda plt: plot_results(plt, sizes, med, ratios, profiles, repeats), out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    return 1 if failed else 0


def _profile_notes(profiles: dict) -> list[str]:
    notes = []
    for name, p in profiles.items():
        parts = ", ".join(f"{k} {v:.0%}" for k, v in p["share_by_part"].items() if v >= 0.02)
        top = ", ".join(f"{f['function']} {f['share']:.0%}" for f in p["top_functions"][:5])
        notes.append(f"Where time goes, {name} (cProfile, 0 workers, warm, first {p['samples']} samples, {p['total_s'] / p['samples'] * 1e6:.0f} us/sample "
                     f"under the profiler): {parts}. Top functions by own time: {top}.")
    return notes


def _row(r: Run) -> dict:
    row = {k: v for k, v in asdict(r).items() if k != "error" or v}
    row["samples_per_s"], row["mb_per_s"] = r.samples_per_s, r.mb_per_s
    return row


# --------------------------------------------------------------------------- main


def run_size(args: DataArgs, size: SampleSize, root: Path, repeats: int, deadline: float, evicted: dict, profiles: dict) -> tuple[list[Run], dict]:
    """Write one size's data, measure it, profile what is below its goal, and delete the data."""
    if size.num_samples < args.batch_size:
        raise SystemExit(f"{size.name}: the number of samples ({size.num_samples}) must be >= `--batch-size` ({args.batch_size})")
    folder = root / size.name
    data = make_data(size.features, size.num_samples, args.shard_size_bytes, folder)
    try:
        check_same_samples(data, args.batch_size)
        runs = measure(args, size, data, repeats, deadline, evicted)
        _, _, ratios = tabulate(runs, [size])
        n = min(size.num_samples, 10_000 if size.features <= 4096 else 2_000)
        # A path below its goal (warm) is profiled: where the in-process reader spends its time.
        if any(v is None or v < GOAL_VS_RAW for k, v in ratios.items() if k.startswith("decode_free_vs_raw_read_w")):
            profiles[f"decode-free {size.name}"] = profile(data, batch_size=args.batch_size, decode=False, max_samples=n)
        if any(v is None or v < GOAL_VS_FILE_PER_SAMPLE for k, v in ratios.items() if k.startswith("decoded_vs_file_per_sample_w")):
            profiles[f"decoded {size.name}"] = profile(data, batch_size=args.batch_size, decode=True, max_samples=n)
        info = {"num_samples": size.num_samples, "num_shards": len(data.shard_files), "shard_bytes": data.shard_bytes, "sample_bytes": data.sample_bytes,
                "worker_split": {w: split_shards(data, args.batch_size, w) for w in WORKERS}}
        return runs, info
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # frees the disk before the next size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(DataArgs, "ShardLoader throughput against a raw read of the same shards and a file-per-sample dataset, warm and cold.", argv)
    repeats = args.pick_repeats(quick=2, full=3)
    sizes = sample_sizes(args)
    # A SIGTERM (e.g. from a CI timeout) must still reach the `finally` that removes the temporary data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started_load = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix=".raytron-bench-data-", dir=args.work_dir or REPO))
    work_fs = filesystem_of(root)
    if work_fs["type"] in ("tmpfs", "ramfs"):
        shutil.rmtree(root, ignore_errors=True)
        raise SystemExit(f"{root} is on {work_fs['type']}: its files live in memory and cannot be read cold; pass `--work-dir` on a disk")
    deadline = time.monotonic() + args.budget_s
    runs, info, evicted, profiles = [], {}, {}, {}
    try:
        for size in sizes:
            size_runs, info[size.name] = run_size(args, size, root, repeats, deadline, evicted, profiles)
            runs += size_runs
        return report(args, sizes, repeats, runs, info, profiles, evicted, started_load, work_fs, sha256_mb_per_s())
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
