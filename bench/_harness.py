"""What every benchmark theme shares: typed arguments, machine and version records, statistics,
and writing a theme's results as JSON, a Markdown report and a PNG plot.

A theme is `bench/THEME.py`, run directly or as `raytron bench THEME`. It measures raytron and its
baseline in the same run and calls `write_results`, which writes
`<out_dir>/THEME_<host>_<YYYY-MM-DD>.{json,md,png}` (`..._quick.*` for a `--quick` smoke run), each
atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from raytron.cluster import write_bytes_atomic, write_json_atomic

__all__ = ["BenchArgs", "parse_args", "machine_info", "library_versions", "summarize", "write_results", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Versions recorded when installed (looked up by distribution metadata: nothing here is imported).
_LIBRARIES = (
    "raytron", "ray", "torch", "pydantic", "numpy", "deepspeed", "typer", "rich", "psutil", "matplotlib",
    "grpcio", "tritonclient", "nvidia-pytriton", "pyarrow", "webdataset", "onnxruntime", "kubernetes",
)


def option(default: Any, help: str) -> Any:
    """A dataclass field that `parse_args` turns into a `--flag`; `help` is its one-line docstring."""
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class BenchArgs:
    """Options every theme takes; a theme subclasses this to add its own."""

    quick: bool = option(False, "Fewer repetitions: a smoke run of about a minute.")
    address: str | None = option(None, "Ray Jobs API address (e.g. http://127.0.0.1:8265). Default: $RAY_ADDRESS, else the embedded local head.")
    out_dir: Path = option(RESULTS_DIR, "Folder the JSON, Markdown and PNG results are written to.")
    repeats: int | None = option(None, "Timed repetitions per tool, overriding the --quick / full default.")

    def pick_repeats(self, quick: int, full: int) -> int:
        """`--repeats` if given, else the theme's quick or full count."""
        return self.repeats if self.repeats is not None else (quick if self.quick else full)


ArgsT = TypeVar("ArgsT", bound=BenchArgs)


def parse_args(cls: type[ArgsT], description: str, argv: Sequence[str] | None = None) -> ArgsT:
    """Build an argparse parser from the fields of `cls` (a `BenchArgs` dataclass) and parse `argv`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        base = inner[0] if inner else kind
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if base is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=base, default=f.default, metavar=f.name.upper(), help=help_)
    args = cls(**vars(parser.parse_args(argv)))
    for f in dataclasses.fields(cls):  # counts and durations must be positive; say which flag is not
        value = getattr(args, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            parser.error(f"`--{f.name.replace('_', '-')}` ({value}) must be > 0")
    return args


# --------------------------------------------------------------------------- records


def machine_info() -> dict[str, Any]:
    """Cores, memory, OS, Python, host, GPUs and load: what a reader needs to compare two result files."""
    import psutil

    return {
        "hostname": socket.gethostname(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": _gpus(),
        # Other processes compete for the same cores; a busy machine explains a slow run.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (nvidia-smi failed: {exc})"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not names:
        return f"unknown (nvidia-smi exited {done.returncode})"
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    return ", ".join(f"{n} x {name}" for name, n in counts.items())


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on (absent ones are left out)."""
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, p90 (linear interpolation), min, max and mean of `values`."""
    xs = sorted(values)
    if not xs:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None, "mean": None}
    rank = 0.9 * (len(xs) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    p90 = xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)
    return {"n": len(xs), "median": statistics.median(xs), "p90": p90, "min": xs[0], "max": xs[-1], "mean": statistics.fmean(xs)}


# --------------------------------------------------------------------------- output


def write_results(
    theme: str,
    config: Mapping[str, Any],
    results: Mapping[str, Any],
    ratios: Mapping[str, float | None],
    notes: Sequence[str],
    plot_fn: Callable[[Any], Any],
    *,
    out_dir: Path = RESULTS_DIR,
) -> dict[str, Path]:
    """Write THEME_<host>_<date>.json, .md and .png into `out_dir`; returns their paths by suffix.

    A smoke run (`config["quick"]`, which every theme's arguments carry) is written as
    THEME_<host>_<date>_quick.*, so that it never replaces the day's full result.

    Args:
        theme: The theme's name (its file's stem).
        config: Everything that decided what was measured (arguments, commands, counts).
        results: The measurements. `results["summary"]` maps metric -> tool -> `summarize(...)`
            and is the report's main table; a list `results["runs"]` of flat dicts becomes a
            second table. Other keys are kept in the JSON only.
        ratios: Comparison name -> raytron's figure over the baseline's, stated so that higher
            is better (for times: baseline time / raytron time), e.g. `..._speedup_vs_<baseline>`.
        notes: Sentences for a reader: the goal and whether it was met, caveats, where time goes.
        plot_fn: Called with `matplotlib.pyplot` (Agg backend); returns the Figure to save.
    """
    now = datetime.now().astimezone()
    host = socket.gethostname().split(".")[0] or "host"
    stem = Path(out_dir) / f"{theme}_{host}_{now:%Y-%m-%d}{'_quick' if config.get('quick') else ''}"
    record = {
        "theme": theme,
        "created_at": now.isoformat(timespec="seconds"),
        "config": dict(config),
        "machine": machine_info(),
        "versions": library_versions(),
        "results": dict(results),
        "ratios": dict(ratios),
        "notes": list(notes),
    }
    record = json.loads(json.dumps(record, default=str))  # Paths and the like become strings, once
    paths = {".json": write_json_atomic(stem.with_suffix(".json"), record)}
    paths[".md"] = write_bytes_atomic(stem.with_suffix(".md"), _markdown(record).encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_fn(plt)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    paths[".png"] = write_bytes_atomic(stem.with_suffix(".png"), buffer.getvalue())
    for path in paths.values():
        path.chmod(0o644)  # the atomic writer's temporary file is private (0600); results are for sharing
        print(f"wrote {path}", file=sys.stderr)
    return paths


def _markdown(record: Mapping[str, Any]) -> str:
    lines = [f"# Benchmark `{record['theme']}` — {record['created_at']}", ""]
    lines += [f"- {note}" for note in record["notes"]] + [""]
    lines += ["## Ratios (raytron / baseline, higher is better)", "", "| comparison | ratio |", "| --- | ---: |"]
    lines += [f"| {name} | {_fmt(value)}x |" for name, value in record["ratios"].items()] + [""]
    summary = record["results"].get("summary") or {}
    if summary:
        lines += ["## Results", "", "| metric | tool | n | median | p90 | min | max | mean |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for metric, tools in summary.items():
            for tool, s in tools.items():
                cells = [_fmt(s.get(k)) for k in ("n", "median", "p90", "min", "max", "mean")]
                lines.append(f"| {metric} | {tool} | " + " | ".join(cells) + " |")
        lines.append("")
    runs = record["results"].get("runs") or []
    if runs and all(isinstance(r, dict) for r in runs):
        keys = list(dict.fromkeys(k for r in runs for k, v in r.items() if not isinstance(v, (list, dict))))
        lines += ["## Individual runs", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in runs] + [""]
    for title, key in (("Machine", "machine"), ("Versions", "versions"), ("Config", "config")):
        lines += [f"## {title}", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in record[key].items()] + [""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")
