"""`raytron data`: build WebDataset shards and inspect or verify them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "data"
app = typer.Typer(help="Build WebDataset shards (train/val, manifest with checksums and statistics) and inspect them.", no_args_is_help=True)


@app.command("build")
def build(
    source: Annotated[str, typer.Option("--source", help="parquet:PATH (file or folder), npz:PATH, images:DIR (a subfolder per class), text:PATH, or digits.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the shards and manifest.json.", show_default=False)],
    shard_size_bytes: Annotated[int, typer.Option("--shard-size-bytes", min=1024, help="Close a shard once it holds this many bytes.")] = 64 * 2**20,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.99, help="Fraction of samples assigned to the val split at random.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val assignment.")] = 0,
    features: Annotated[Optional[str], typer.Option("--features", help="Parquet: comma-separated numeric feature columns (default: all but the label). NPZ: the feature array's name (default x).")] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Parquet: the label column (default: `label` if present). NPZ: the label array (default y).")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="Text: tokens per sequence (byte-level tokens).")] = 128,
) -> int:
    """Build train-NNNNNN.tar and val-NNNNNN.tar shards plus manifest.json from a source.

    Shards are written under temporary names and renamed when complete; the manifest is written
    last, so an interrupted build never leaves a manifest listing a partial shard. Run it again to
    finish cleanly.
    """
    import time

    from raytron.cluster.cli._common import err, out as stdout
    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    feature_list = [f.strip() for f in features.split(",") if f.strip()] if features else None
    config = BuildConfig(
        source=SourceConfig(spec=source, features=feature_list, label=label, seq_len=seq_len),
        out_dir=out, shard_size_bytes=shard_size_bytes, val_fraction=val_fraction, seed=seed,
    )
    started = time.monotonic()
    manifest = build_shards(config)
    elapsed = time.monotonic() - started
    total_bytes = sum(s.size_bytes for s in manifest.shards)
    for split in manifest.splits:
        err.print(f"{split}: {manifest.num_samples(split):,} samples in {len(manifest.split(split))} shards")
    err.print(f"[green]built[/] {total_bytes / 1e6:,.1f} MB in {elapsed:.1f} s ({total_bytes / 1e6 / max(elapsed, 1e-6):,.1f} MB/s); manifest sha256 {manifest.sha256[:16]}...")
    stdout.print(str(Path(out) / "manifest.json"))
    return 0


@app.command("inspect")
def inspect(
    location: Annotated[str, typer.Argument(metavar="DIR", help="Shard directory, manifest.json, or its http(s)/s3 URL.", show_default=False)],
    verify: Annotated[bool, typer.Option("--verify", help="Read every shard and check its sha256 and sample count.")] = False,
) -> int:
    """Print a shard directory's manifest summary; with --verify, check every shard's checksum (exit 1 if any fails)."""
    from rich.table import Table

    from raytron.cluster.cli._common import err, out
    from raytron.datasets.errors import ShardError
    from raytron.datasets.manifest import Manifest
    from raytron.datasets.reader import iter_shard

    manifest = Manifest.load(location)
    build_info = manifest.build
    out.print(f"[bold]{manifest.location}[/]  source: {build_info.get('source_description', build_info.get('source', '?'))}")
    splits = Table("SPLIT", "SHARDS", "SAMPLES", "SIZE", box=None, header_style="bold")
    for split in manifest.splits:
        shards = manifest.split(split)
        splits.add_row(split, str(len(shards)), f"{manifest.num_samples(split):,}", f"{sum(s.size_bytes for s in shards) / 1e6:,.2f} MB")
    out.print(splits)
    schema = Table("FIELD", "STORED AS", "DTYPE", "SHAPE", "MEAN", "STD", "MIN", "MAX", box=None, header_style="bold")
    for f in manifest.schema:
        st = manifest.stats.get(f.name, {})
        cells = [_summary(st.get(k)) for k in ("mean", "std", "min", "max")]
        schema.add_row(f.name, f"*.{f.extension}", f.dtype, str(f.shape), *cells)
    out.print(schema)
    out.print(f"manifest sha256: {manifest.sha256}")
    if not verify:
        return 0
    failures = 0
    for shard in manifest.shards:
        url = manifest.url(shard)
        try:
            count = sum(1 for _ in iter_shard(url, manifest.schema, sha256=shard.sha256))
            if count != shard.num_samples:
                raise ShardError(f"shard {url} has {count} samples, the manifest says {shard.num_samples}", url=url)
        except ShardError as exc:
            failures += 1
            err.print(f"[red]FAIL[/] {exc}")
    if failures:
        err.print(f"[red]{failures} of {len(manifest.shards)} shards failed verification[/]")
        return 1
    err.print(f"[green]all {len(manifest.shards)} shards verified[/] (sha256 and sample counts)")
    return 0


def _summary(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"[{min(value):.3g} .. {max(value):.3g}]" if value else "-"
    return f"{value:.4g}"
