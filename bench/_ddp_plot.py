"""The `ddp` theme's figure: end-to-end wall time per tool (split into start-up, loop and after
the loop, every run as a dot), steady-state throughput per tool (every run as a dot), and a
timeline of where each tool's time goes (median moments of its runs)."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_results"]

_COLORS = {"raytron submit --wait": "#1f77b4", "torchrun": "#ff7f0e", "Ray Train": "#2ca02c"}
_PHASES = [("startup_s", "start-up (launch -> first step)", "#c6dbef"), ("loop_s", "training loop", "#6baed6"),
           ("after_loop_s", "after the loop (checkpoint, teardown, exit)", "#fdae6b")]


# Timeline segments: (category, the phase that ends the segment) per tool, in order; 0 is the launch.
_CATEGORIES = {
    "launcher, driver, job submission": "#bdbdbd",
    "worker processes start, import torch": "#9e9ac8",
    "gloo join, model, DDP wrap, loader": "#fdd0a2",
    "training loop": "#6baed6",
    "final checkpoint": "#fd8d3c",
    "teardown and exit": "#e6550d",
}
_SEGMENTS = {
    "raytron submit --wait": [("launcher, driver, job submission", "driver_ray_init"), ("worker processes start, import torch", "actors_ready"),
                              ("gloo join, model, DDP wrap, loader", "loop_start"), ("training loop", "loop_end"),
                              ("final checkpoint", "checkpoint_done"), ("teardown and exit", "exit")],
    "torchrun": [("launcher, driver, job submission", "process_start"), ("worker processes start, import torch", "imports_done"),
                 ("gloo join, model, DDP wrap, loader", "loop_start"), ("training loop", "loop_end"),
                 ("final checkpoint", "checkpoint_done"), ("teardown and exit", "exit")],
    "Ray Train": [("launcher, driver, job submission", "ray_init_done"), ("worker processes start, import torch", "worker_fn_start"),
                  ("gloo join, model, DDP wrap, loader", "loop_start"), ("training loop", "loop_end"),
                  ("final checkpoint", "checkpoint_done"), ("teardown and exit", "exit")],
}


def plot_results(plt, timed: list, summary: dict[str, Any], ratios: dict[str, float | None], tools: list[str], repeats: int,
                 phases: dict[str, dict[str, float]] | None = None):
    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 2], height_ratios=[5, 3])
    ax, bx, cx = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    xs = range(len(tools))
    for k, tool in enumerate(tools):
        bottom = 0.0
        for metric, label, color in _PHASES:
            value = summary[metric][tool]["median"] or 0.0
            ax.bar(k, value, 0.6, bottom=bottom, color=color, edgecolor=_COLORS.get(tool, "grey"), linewidth=1.2, label=label if k == 0 else None)
            if value > 0.6:
                ax.text(k, bottom + value / 2, f"{value:.1f}", ha="center", va="center", fontsize=9)
            bottom += value
        totals = [r.end_to_end_s for r in timed if r.tool == tool and r.end_to_end_s is not None]
        ax.scatter([k + 0.38] * len(totals), totals, s=18, color="black", zorder=3, label="end to end, each run" if k == 0 else None)
        med = summary["end_to_end_s"][tool]["median"]
        if med:
            ax.text(k, max(totals + [bottom]) * 1.02, f"{med:.1f} s", ha="center", va="bottom", fontsize=10, weight="bold")
    ref_e2e = summary["end_to_end_s"].get("torchrun", {}).get("median")
    if ref_e2e:
        ax.axhline(2 * ref_e2e, color="red", linestyle="--", linewidth=1, label="goal: at most 2 x torchrun")
    ax.set_xticks(list(xs), tools)
    ax.set_ylabel("seconds from launching the command (lower is better)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    e2e = ratios.get("end_to_end_speed_vs_torchrun")
    ax.set_title("end-to-end wall time, medians stacked by phase" + ("" if e2e is None else f"\nraytron vs torchrun: {e2e:.2f}x (goal >= 0.5x)"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")

    for k, tool in enumerate(tools):
        med = summary["steady_samples_per_s"][tool]["median"] or 0.0
        bx.bar(k, med, 0.6, color=_COLORS.get(tool, "grey"), alpha=0.75)
        values = [r.steady_samples_per_s for r in timed if r.tool == tool and r.steady_samples_per_s is not None]
        bx.scatter([k + 0.2 * ((i % 5) - 2) / 2 for i in range(len(values))], values, s=18, color="black", zorder=3,
                   label="each run (median of its windows after the first)" if k == 0 else None)
        bx.text(k, med * 0.5, f"{med:,.0f}", ha="center", va="center", fontsize=9, weight="bold")
    ref = summary["steady_samples_per_s"].get("torchrun", {}).get("median")
    if ref:
        bx.axhline(0.95 * ref, color="red", linestyle="--", linewidth=1, label="goal: 0.95 x torchrun")
    bx.set_xticks(list(xs), tools)
    bx.set_ylabel("steady-state samples/s, both ranks (higher is better)")
    tp = ratios.get("steady_state_throughput_vs_torchrun")
    bx.set_title("steady-state training throughput" + ("" if tp is None else f"\nraytron vs torchrun: {tp:.3f}x (goal >= 0.95x)"), fontsize=10)
    bx.set_ylim(0, bx.get_ylim()[1] * 1.3)
    bx.legend(fontsize=8, loc="upper center")
    _timeline(cx, tools, phases or {})
    fig.suptitle(f"ddp: the same 1-epoch DDP job (2 CPU ranks, gloo) through each tool; {repeats} timed run(s) each", fontsize=12)
    fig.tight_layout()
    return fig


def _timeline(cx, tools: list[str], phases: dict[str, dict[str, float]]) -> None:
    """One horizontal bar per tool, cut at the median moments of its runs."""
    labelled: set[str] = set()
    for k, tool in enumerate(tools):
        p = phases.get(tool) or {}
        start = 0.0
        for category, end_phase in _SEGMENTS.get(tool, []):
            end = p.get(end_phase)
            if end is None or end < start:
                continue
            cx.barh(k, end - start, left=start, height=0.6, color=_CATEGORIES[category], edgecolor="white",
                    label=category if category not in labelled else None)
            labelled.add(category)
            if end - start > 0.45:
                cx.text(start + (end - start) / 2, k, f"{end - start:.1f}", ha="center", va="center", fontsize=8)
            start = end
    cx.set_yticks(range(len(tools)), tools)
    cx.invert_yaxis()
    cx.set_xlabel("seconds from launching the command (medians of the timed runs)")
    cx.set_title("where the time goes (moments from each tool's logs; Ray Train's worker start includes its controller and the gloo join; "
                 "finer steps in the notes)", fontsize=10)
    cx.set_xlim(0, cx.get_xlim()[1])
    cx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, frameon=False)
