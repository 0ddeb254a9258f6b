"""The `autoscale` theme's plot: replicas over time, and per-second p99 latency of both targets, under the step load."""

from __future__ import annotations

from typing import Any


def plot_results(plt, runs: dict[str, dict[str, Any]], phases: list[list[float]]):
    """`runs`: target -> {"replicas": [[t_s, count]...], "p99_by_second": [[t_s, ms]...], "phase_starts_s": [...]}."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    colors = {"autoscale": "tab:blue", "fixed-1": "tab:gray"}
    for name, run in runs.items():
        color = colors.get(name)
        if run.get("replicas"):
            t, n = zip(*run["replicas"])
            top.step(t, n, where="post", label=name, color=color)
        if run.get("p99_by_second"):
            t, ms = zip(*run["p99_by_second"])
            bottom.plot(t, ms, label=f"{name} p99", color=color, marker=".", linewidth=1)
    starts = next((r["phase_starts_s"] for r in runs.values() if r.get("phase_starts_s")), [])
    for ax in (top, bottom):
        for start, (concurrency, _) in zip(starts, phases):
            ax.axvline(start, color="black", linewidth=0.6, linestyle=":")
            if ax is top:
                ax.annotate(f"{int(concurrency)} client{'s' if concurrency != 1 else ''}", (start, 1), xytext=(3, 3),
                            textcoords="offset points", fontsize=8)
    top.set_ylabel("replicas serving")
    top.set_ylim(0, max([max((n for _, n in r.get("replicas") or [[0, 1]]), default=1) for r in runs.values()] + [1]) + 1)
    top.legend(loc="upper right", fontsize=8)
    top.set_title("raytron serve --autoscale vs a fixed single replica, step load 1 -> 16 -> 1 clients")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency per second (ms)")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig
