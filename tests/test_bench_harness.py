"""The benchmark harness's file naming: a smoke run never replaces a day's full result."""

from __future__ import annotations

import importlib.util
import json
import sys

from helpers import REPO


def _harness():
    spec = importlib.util.spec_from_file_location("raytron_bench_harness", REPO / "bench" / "_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def _plot(plt):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return fig


def test_a_quick_run_is_written_beside_the_full_result_not_over_it(tmp_path):
    harness = _harness()
    full = harness.write_results("theme", {"quick": False, "repeats": 3}, {"summary": {}}, {"x_vs_y": 1.5}, ["full"], _plot, out_dir=tmp_path)
    quick = harness.write_results("theme", {"quick": True, "repeats": 1}, {"summary": {}}, {"x_vs_y": 0.5}, ["smoke"], _plot, out_dir=tmp_path)
    assert quick[".json"].name == full[".json"].name.replace(".json", "_quick.json")
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in (*full.values(), *quick.values())}
    assert json.loads(full[".json"].read_text())["ratios"] == {"x_vs_y": 1.5}  # the full result is intact
    assert json.loads(quick[".json"].read_text())["config"]["quick"] is True
    assert quick[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
