"""Theme `deepspeed`: peak memory per rank and throughput of DDP vs ZeRO-1/2/3 and ZeRO-3 + CPU offload,
on the same `gpt` model and batches, in one run.

Each variant is raytron's own training loop (`raytron.trainers.loop.new_loop`, the code a
`kind: train` job runs) in 2 rank processes on loopback with gloo (`bench/_deepspeed_worker.py`),
without Ray around it, so the numbers are the loop's own: peak resident memory of each rank
(VmHWM, reset after imports and the process-group join, so it counts the model, optimizer,
gradients and activations) and the median samples/s of the logged windows after the first.
The baseline is DDP measured in the same run; ratios are stated so that higher is better for
DeepSpeed (DDP's peak / the variant's peak; the variant's samples/s / DDP's).

On 2 CPU cores the throughput figures compare overheads, not speed-ups (shared/environment.md);
tokens/s and MFU for ZeRO-2 bf16 on a GPU are not measured by this theme yet.

    raytron bench deepspeed [--quick]
    python bench/deepspeed.py --d-model 512 --n-layers 8
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import BenchArgs, option, parse_args, summarize, write_results

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
#: Variant name -> (strategy, deepspeed section or None).
VARIANTS: dict[str, tuple[str, dict | None]] = {
    "DDP": ("ddp", None),
    "ZeRO-1": ("deepspeed", {"zero_stage": 1}),
    "ZeRO-2": ("deepspeed", {"zero_stage": 2}),
    "ZeRO-3": ("deepspeed", {"zero_stage": 3}),
    "ZeRO-3 + CPU offload": ("deepspeed", {"zero_stage": 3, "offload": "cpu"}),
}


@dataclass(kw_only=True)
class DeepSpeedArgs(BenchArgs):
    """Options of the `deepspeed` theme."""

    d_model: int = option(768, "Width of the gpt recipe.")
    n_layers: int = option(8, "Transformer blocks of the gpt recipe.")
    n_heads: int = option(12, "Attention heads.")
    seq_len: int = option(64, "Tokens per sample.")
    global_batch_size: int = option(16, "Samples per step across both ranks.")
    steps: int = option(8, "Optimizer steps per run (--quick: 4); the peak is reached in the first steps.")
    log_every_steps: int = option(1, "Steps per throughput window.")
    precision: str = option("bf16", "fp32 or bf16 (fp16 needs a GPU).")
    timeout_s: float = option(600.0, "Limit for one variant's run.")


def measure(args: DeepSpeedArgs, work: Path) -> list[dict[str, Any]]:
    tokens = _make_tokens(work, args.seq_len)
    steps = args.steps if not args.quick else min(args.steps, 4)
    rows = []
    for name, (strategy, section) in VARIANTS.items():
        spec = {
            "name": name.lower().replace(" ", "").replace("+", "-"), "kind": "train", "resources": {"num_workers": 2, "cpus_per_worker": 1},
            "storage": {"path": str(work / "runs")},
            "train": {"model": {"recipe": "gpt", "args": {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads}},
                      "data": {"manifest": str(tokens), "val_split": None, "shuffle_buffer": 100},
                      "optimizer": {"name": "adamw", "lr": 1e-3}, "steps": steps, "global_batch_size": args.global_batch_size,
                      "precision": args.precision, "strategy": strategy, **({"deepspeed": section} if section else {}),
                      "checkpoint": {"every_steps": 10**6, "keep": 1}, "log_every_steps": args.log_every_steps},
        }
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append({"variant": name, **_run_variant(spec, work, args.timeout_s)})
    return rows


def _run_variant(spec: dict, work: Path, timeout_s: float) -> dict[str, Any]:
    spec_file = work / f"{spec['name']}.json"
    spec_file.write_text(json.dumps(spec))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [work / f"{spec['name']}-rank{r}.json" for r in range(2)]
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(BENCH / "_deepspeed_worker.py"), str(spec_file), str(r), "2", str(port), str(outs[r])],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout_s)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0])
    wall = time.perf_counter() - started
    if any(p.returncode != 0 for p in procs) or not all(o.is_file() for o in outs):
        return {"ok": False, "wall_s": wall, "error_tail": "\n".join(log[-1500:] for log in logs)}
    ranks = [json.loads(o.read_text()) for o in outs]
    windows = [r["samples_per_s"] for r in ranks[0]["history"]]
    return {
        "ok": True, "wall_s": wall,
        "peak_rss_mib_per_rank": [r["peak_rss_bytes"] / 2**20 for r in ranks],
        "peak_rss_mib": max(r["peak_rss_bytes"] for r in ranks) / 2**20,
        "peak_rss_with_checkpoint_mib": max(r["peak_rss_with_checkpoint_bytes"] for r in ranks) / 2**20,
        "rss_before_mib": max(r["rss_before_bytes"] for r in ranks) / 2**20,
        "samples_per_s": statistics.median(windows[1:]) if len(windows) > 1 else (windows[0] if windows else None),
        "tokens_per_s": statistics.median([r.get("tokens_per_s", 0) for r in ranks[0]["history"][1:]]) if len(windows) > 1 else None,
        "final_loss": ranks[0]["history"][-1]["loss"] if ranks[0]["history"] else None,
        "windows": windows,
    }


def _make_tokens(work: Path, seq_len: int) -> Path:
    import numpy as np

    from raytron.datasets.sources import SourceConfig
    from raytron.datasets.writer import BuildConfig, build_shards

    rng = np.random.default_rng(0)
    words = ["ray", "tron", "deep", "speed", "zero", "stage", "shard", "token", "model", "train", "batch", "rank"]
    (work / "corpus.txt").write_text(" ".join(rng.choice(words, 60_000)))
    out = work / "tokens"
    build_shards(BuildConfig(source=SourceConfig(spec=f"text:{work / 'corpus.txt'}", seq_len=seq_len), out_dir=out, shard_size_bytes=1 << 20,
                             val_fraction=0.0, progress=False))
    return out


def report(args: DeepSpeedArgs, rows: list[dict[str, Any]], params: int) -> int:
    ok = {r["variant"]: r for r in rows if r["ok"]}
    ddp = ok.get("DDP")
    ratios: dict[str, float | None] = {}
    for name, r in ok.items():
        if name == "DDP" or ddp is None:
            continue
        key = name.lower().replace(" + ", "_").replace("-", "").replace(" ", "_")
        ratios[f"{key}_peak_memory_saving_vs_ddp"] = ddp["peak_rss_mib"] / r["peak_rss_mib"]
        ratios[f"{key}_throughput_vs_ddp"] = (r["samples_per_s"] / ddp["samples_per_s"]) if r["samples_per_s"] and ddp["samples_per_s"] else None
    summary = {
        "peak_rss_mib": {n: summarize(r["peak_rss_mib_per_rank"]) for n, r in ok.items()},
        "samples_per_s": {n: summarize(r["windows"][1:] or r["windows"]) for n, r in ok.items()},
    }
    notes = [
        f"gpt recipe, {params / 1e6:.1f} M parameters (d_model {args.d_model}, {args.n_layers} blocks), {args.precision}, AdamW, "
        f"global batch {args.global_batch_size} x {args.seq_len} tokens over 2 CPU ranks (gloo); peak RSS per rank counts training only "
        "(reset after imports and the process-group join).",
        "Throughput on 2 shared cores measures DeepSpeed's overhead against DDP, not a speed-up; a GPU comparison (tokens/s, MFU) is not part of this run.",
    ]
    notes += [f"{n}: peak RSS {r['peak_rss_mib']:.0f} MiB/rank training, {r['peak_rss_with_checkpoint_mib']:.0f} MiB with the final checkpoint "
              f"({r['rss_before_mib']:.0f} MiB before the model was built), {r['samples_per_s'] or 0:.1f} samples/s, final loss {r['final_loss']:.3f}"
              for n, r in ok.items()]
    notes += [
        "ZeRO-3 on CPU: DeepSpeed's default buckets (reduce_bucket_size 5e8 elements) exceed this model, so every gradient waits "
        "in the bucket until the end of backward and the gathered parameters stay live between forward and backward "
        "(stage3_max_reuse_distance 1e9); lowering stage3_max_reuse_distance/max_live_parameters did not lower the peak here, "
        "and a reduce bucket smaller than the model hung both ranks in gloo's reduce_scatter (DeepSpeed 0.19.8, torch 2.13 CPU). "
        "The saving ZeRO-3 exists for, parameters too large for one device, needs a GPU run.",
        "Loss curves: fp32 ZeRO-1/2/3 follow DDP's exactly (tests/test_deepspeed.py). In bf16 ZeRO-3 differs from the first step: "
        "zero.Init creates the weights in bf16, and PyTorch's CPU uniform_ draws a bf16 tensor in another order than an fp32 one "
        "(same seed, same distribution, other values), so its run starts from another initialisation.",
    ]
    notes += [f"{r['variant']} FAILED: {r['error_tail'][-400:]}" for r in rows if not r["ok"]]
    config = {**asdict(args), "parameters": params, "variants": {n: {"strategy": s, "deepspeed": d} for n, (s, d) in VARIANTS.items()},
              "worker": "python bench/_deepspeed_worker.py SPEC RANK 2 PORT OUT (raytron's loop, no Ray)"}
    write_results("deepspeed", config, {"summary": summary, "runs": rows}, ratios, notes, lambda plt: _plot(plt, rows), out_dir=args.out_dir)
    for note in notes:
        print(note, file=sys.stderr)
    return 0 if len(ok) == len(rows) else 1


def _plot(plt, rows: list[dict[str, Any]]):
    ok = [r for r in rows if r["ok"]]
    names = [r["variant"] for r in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(names, [r["peak_rss_mib"] - r["rss_before_mib"] for r in ok], color="#6baed6")
    a.set_ylabel("peak RSS above baseline per rank (MiB)")
    a.set_title("memory: training state per rank")
    b.bar(names, [r["samples_per_s"] or 0 for r in ok], color="#fd8d3c")
    b.set_ylabel("samples/s (median window)")
    b.set_title("throughput (2 CPU ranks)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(DeepSpeedArgs, "Peak memory per rank and throughput: DDP vs ZeRO-1/2/3 and ZeRO-3 + CPU offload on the same gpt model.", argv)
    from raytron.trainers.recipes import GPT

    params = sum(p.numel() for p in GPT(256, args.seq_len, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads).parameters())
    with tempfile.TemporaryDirectory(prefix="rt-bench-deepspeed-") as tmp:
        rows = measure(args, Path(tmp))
    return report(args, rows, params)


if __name__ == "__main__":
    sys.exit(main())
