"""`raytron bench`: run a benchmark theme from the repository's bench/ folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from raytron.cluster.cli._common import AddressOption

NAME = "bench"
#: Options `raytron bench` does not know go on to bench/THEME.py (its seeds, methods, output folder).
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def bench_dir() -> Path | None:
    """bench/ of the source checkout: $RAYTRON_BENCH_DIR, ./bench, or beside the installed sources."""
    candidates = [os.environ.get("RAYTRON_BENCH_DIR"), Path.cwd() / "bench", Path(__file__).resolve().parents[2] / "bench"]
    for c in candidates:
        if c and (Path(c) / "_harness.py").is_file():
            return Path(c)
    return None


def themes(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.py") if not p.name.startswith("_"))


def command(
    ctx: typer.Context,
    theme: Annotated[str, typer.Argument(metavar="THEME", help="Which benchmark: a file bench/THEME.py (e.g. submit).", show_default=False)],
    quick: Annotated[bool, typer.Option("--quick", help="Fewer repetitions: one to three minutes on 2 cores, a smoke run rather than a result.")] = False,
    address: AddressOption = None,
) -> int:
    """Run bench/THEME.py: raytron and its baseline measured in the same run, written to bench/results/ as JSON, Markdown and PNG.

    Any other option goes on to bench/THEME.py, e.g. `raytron bench tune --repeats 3 --methods random,pbt`;
    `python bench/THEME.py --help` lists a theme's options.
    """
    from raytron.cluster.cli._common import err
    from raytron.cluster.errors import ClusterError

    root = bench_dir()
    if root is None:
        raise ClusterError("no bench/ folder found: run from a raytron source checkout, or set RAYTRON_BENCH_DIR")
    available = themes(root)
    if theme not in available:
        err.print(f"[red]error:[/] unknown benchmark theme {theme!r}; available: {', '.join(available)}")
        return 2
    cmd = [sys.executable, str(root / f"{theme}.py")]
    if quick:
        cmd.append("--quick")
    if address:
        cmd += ["--address", address]
    return subprocess.call(cmd + list(ctx.args))
