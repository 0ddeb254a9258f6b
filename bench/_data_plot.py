"""The `data` theme's plot: one row per sample size; warm and cold throughput, then where time goes."""

from __future__ import annotations

from _data_sources import (
    COLD, DECODE_FREE, DECODED, FILE_PER_SAMPLE, GOAL_VS_FILE_PER_SAMPLE, GOAL_VS_RAW, NO_CHECKSUM, RAW, SHUFFLED, WARM, WORKERS, label, ratio_name,
)

FAMILIES = [(DECODE_FREE, "#1f77b4"), (DECODED, "#2ca02c"), (SHUFFLED, "#98df8a"), (FILE_PER_SAMPLE, "#ff7f0e")]


def plot_results(plt, sizes, med: dict, ratios: dict, profiles: dict, repeats: int):
    fig, axes = plt.subplots(len(sizes), 3, figsize=(19, 5.4 * len(sizes)), gridspec_kw={"width_ratios": [3, 3, 2.2]}, squeeze=False)
    parts = list(dict.fromkeys(k for p in profiles.values() for k in p["share_by_part"]))
    for row, size in enumerate(sizes):
        values = [v for k, v in med.items() if v and f", {size.name} " in k]
        top, bottom = max(values, default=1e4) * 2.5, min(values, default=1e3) / 4
        for col, (cache, workers) in enumerate(((WARM, WORKERS), (COLD, size.cold_workers))):
            _throughput(axes[row][col], size, cache, workers, med, ratios, sizes[0].name, (bottom, top))
        _profile(plt, axes[row][2], size.name, profiles, parts, legend=row == len(sizes) - 1)
    fig.suptitle(f"data: raytron ShardLoader vs a raw read of the same bytes and a file-per-sample dataset (median of {repeats} passes; "
                 "cold = the pass's files evicted from the page cache first)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, 0.965))
    return fig


def _throughput(ax, size, cache: str, workers, med: dict, ratios: dict, first: str, ylim) -> None:
    families = [(f, c) for f, c in FAMILIES if any(med.get(label(f, w, size.name, cache)) for w in workers)]
    width = 0.8 / len(families)
    for k, (family, color) in enumerate(families):
        xs = [g + (k - (len(families) - 1) / 2) * width for g in range(len(workers))]
        values = [med.get(label(family, w, size.name, cache)) or 0 for w in workers]
        ax.bar(xs, values, width * 0.92, color=color, label=family)
        for x, v in zip(xs, values):
            if v:
                ax.text(x, v * 1.1, f"{v / 1e3:,.1f}k", ha="center", va="bottom", fontsize=8, rotation=90)
        unverified = med.get(label(NO_CHECKSUM, 0, size.name, cache))
        if family == DECODE_FREE and unverified and 0 in workers:  # a marker beside its w0 bar
            ax.plot([xs[workers.index(0)] - width * 0.3], [unverified], marker="<", color="#08306b", linestyle="none", markersize=7,
                    label="decode-free without checksum (0 workers)")
        if family == DECODED:  # its goal, over its bar: 3x file per sample at the same worker count
            for x, w in zip(xs, workers):
                files = med.get(label(FILE_PER_SAMPLE, w, size.name, cache))
                if files:
                    ax.hlines(files * GOAL_VS_FILE_PER_SAMPLE, x - width / 2, x + width / 2, color="#0b4d16", linewidth=2.5,
                              label=f"goal for decoded: {GOAL_VS_FILE_PER_SAMPLE:g}x file per sample" if x == xs[0] else None)
    raw = med.get(label(RAW, None, size.name, cache))
    if raw:
        ax.axhline(raw, color="black", linestyle="--", linewidth=1.2, label="raw read of the shards (I/O ceiling)")
        ax.axhline(raw * GOAL_VS_RAW, color="gray", linestyle=":", linewidth=1.2, label=f"goal for decode-free: {GOAL_VS_RAW:g}x raw read")
        ax.text(len(workers) - 0.5, raw, f"raw read {raw / 1e3:,.0f}k/s", ha="right", va="bottom", fontsize=8)
    ticks = []
    for w in workers:
        free, dec = (ratios.get(ratio_name(kind, size.name, cache, w, first)) for kind in ("decode_free_vs_raw_read", "decoded_vs_file_per_sample"))
        ticks.append(f"{w} workers\ndecode-free/raw {_x(free)}\ndecoded/files {_x(dec)}")
    ax.set_xticks(range(len(workers)), ticks, fontsize=8.5)
    ax.set_xlim(-0.5, len(workers) - 0.5)
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.set_ylabel("samples/s (log scale, higher is better)")
    ax.set_title(f"{size.name} samples ({size.num_samples:,}), {cache} page cache")


def _profile(plt, bx, size: str, profiles: dict, parts: list[str], legend: bool) -> None:
    names = [n for n in profiles if n.endswith(f" {size}")]
    if not names:
        bx.text(0.5, 0.5, "every goal met: nothing profiled", ha="center", va="center", transform=bx.transAxes)
        bx.set_axis_off()
        return
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        left = 0.0
        for j, part in enumerate(parts):
            share = profiles[name]["share_by_part"].get(part, 0.0)
            bx.barh(i, share, left=left, color=colors(j % 10), edgecolor="white", label=part)
            if share >= 0.07:
                bx.text(left + share / 2, i, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += share
    bx.set_yticks(range(len(names)), [f"{n.removesuffix(' ' + size)}\n{profiles[n]['total_s'] / profiles[n]['samples'] * 1e6:.0f} us/sample\n(profiled)" for n in names])
    bx.set_xlim(0, 1)
    bx.invert_yaxis()
    bx.set_xlabel("share of reader time (cProfile, 0 workers, warm)")
    bx.set_title(f"{size}: where the time goes")
    handles, labels = bx.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if legend:  # the colours are the same in every row
        bx.legend(seen.values(), seen.keys(), fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _x(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"
