"""The `serving` theme's figure: throughput, p50 and p99 latency per concurrency, one bar per target
(medians across repeats, every repeat as a dot), with the goals drawn where they apply."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_results"]

_COLORS = {"onnxruntime (in-process)": "#bdbdbd", "Triton (direct)": "#ff7f0e", "gateway + Triton": "#1f77b4", "Ray Serve": "#2ca02c"}


def plot_results(plt, timed: list, med: dict[str, dict[int, dict[str, Any]]], targets: list[str], concurrencies: list[int],
                 ratios: dict[str, float | None], verdicts: dict[str, bool | None], repeats: int):
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    width = 0.8 / max(1, len(targets))
    # Log scales throughout: the in-process floor runs some 10-100x faster than any server.
    panels = [("throughput_rps", "requests/s (higher is better; log scale)", "throughput", True),
              ("p50_ms", "p50 latency, ms (lower is better; log scale)", "p50 latency", True),
              ("p99_ms", "p99 latency, ms (lower is better; log scale)", "p99 latency", True)]
    for ax, (metric, ylabel, title, log) in zip(axes, panels):
        for k, target in enumerate(targets):
            xs = [i + (k - (len(targets) - 1) / 2) * width for i in range(len(concurrencies))]
            values = [med.get(target, {}).get(c, {}).get(metric) for c in concurrencies]
            ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None], width * 0.95,
                   color=_COLORS.get(target, "grey"), label=target)
            for x, c in zip(xs, concurrencies):
                dots = [getattr(cell, metric) for cell in timed if cell.target == target and cell.concurrency == c and cell.ok]
                ax.scatter([x] * len(dots), dots, s=8, color="black", zorder=3)
            if metric == "throughput_rps":
                for x, v in zip(xs, values):
                    if v is not None:
                        ax.text(x, v * 1.08, f"{v:,.0f}", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(range(len(concurrencies)), [f"concurrency {c}" for c in concurrencies])
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log" if log else "linear")
    lo, hi = axes[0].get_ylim()
    axes[0].set_ylim(lo, hi * 4)  # room for the labels and the legend
    axes[0].legend(fontsize=8, loc="upper right", ncol=2)
    gw = ", ".join(f"c={c}: {_x(ratios.get(f'gateway_throughput_vs_direct_triton_c{c}'))}" for c in concurrencies)
    rs = ratios.get("stack_throughput_vs_rayserve_c8"), ratios.get("rayserve_p99_over_stack_p99_c8")
    fig.suptitle(f"serving: batch-1 MLP inference, closed-loop gRPC clients; medians of {repeats} repeat(s), dots = each repeat\n"
                 f"gateway / direct Triton throughput {gw} (goal >= 0.85x, <= +0.3 ms p50): {_verdict(verdicts.get('gateway_vs_direct_triton'))}; "
                 f"stack vs Ray Serve at c=8: {_x(rs[0])} throughput, {_x(rs[1])} lower p99 (goal >= 5x both): {_verdict(verdicts.get('stack_vs_rayserve'))}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _verdict(v: bool | None) -> str:
    return "not measured" if v is None else ("met" if v else "NOT met")
