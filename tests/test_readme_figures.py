"""The README's headline results are the committed JSON's, to the digit the README prints.

Each entry renders, from one ``docs/*.json``, the exact phrase the README states (whitespace
folded, so a wrapped line still matches). A benchmark re-run that moves a figure, or a README
edit that rounds it away from its source, fails here until both agree again; figures the README
labels as probes, hand timings or earlier commits' are not listed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

NDP_ROWS = {
    "law": "deepseek-v2-lite/esft-law",
    "intent": "deepseek-v2-lite/esft-intent",
    "FLAME": "flame-moe-290m/flame",
    "OLMoE": "olmoe-1b-7b/olmoe-sampled",
    "Mixtral": "mixtral-8x7b/mixtral-sampled",
    "Qwen3": "qwen3-30b-a3b/esft-side-by-side",
}


@cache
def summary(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "docs" / f"bench_{name}.json").read_text())
    return data["summary"]


def folded(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def by_row(values: dict[str, float], fmt: str, names: tuple[str, ...]) -> str:
    """``law 1.062, intent 1.073, ...`` for the NDP rows ``names`` in that order."""
    return ", ".join(f"{n} {fmt.format(values[NDP_ROWS[n]])}" for n in names)


def ndp_planning(s: dict[str, Any]) -> str:
    ms = s["planning_cpu_per_token_ms_by_row"]
    return by_row(ms, "{:.1f}", tuple(NDP_ROWS)) + " ms"


def ndp_floor(s: dict[str, Any]) -> str:
    tasks, floor = s["tasks_per_step_by_row"], s["planning_floor_cpu_per_token_ms_by_row"]
    total = {row: sum(parts.values()) for row, parts in floor.items()}
    t = {n: round(tasks[NDP_ROWS[n]]) for n in ("law", "Qwen3", "FLAME")}
    f = {n: total[NDP_ROWS[n]] for n in ("law", "Qwen3", "FLAME")}
    above = sum(v > 2.0 for v in total.values())
    return (
        f"{t['law']:,} tasks a step on law, {t['Qwen3']:,} on Qwen3, {t['FLAME']:,} on FLAME; "
        "re-timing a finished step's tasks with every cost memoized plus building them again "
        f"as validated tasks takes {f['law']:.1f} ms (law), {f['Qwen3']:.1f} (Qwen3), "
        f"{f['FLAME']:.1f} (FLAME) a token, above 2 ms on {above} of {len(total)} rows"
    )


def ndp_decode(s: dict[str, Any]) -> str:
    ms = s["decode_per_token_ms_4dimm"]
    parts = [f"{n} {ms[NDP_ROWS[n]]:.3g}" for n in ("law", "intent", "FLAME", "OLMoE")]
    lines = s["mixtral_cache_lines"][0]
    return (
        "Decode per token (ms): "
        + ", ".join(parts)
        + f", Mixtral {ms[NDP_ROWS['Mixtral']]:.3g} (**{lines} cache lines**), "
        + f"Qwen3-30B-A3B {ms[NDP_ROWS['Qwen3']]:.3g}"
    )


def ndp_previous(s: dict[str, Any]) -> str:
    d = s["decode_vs_previous_96"]
    names = ("law", "intent", "FLAME", "OLMoE", "Mixtral")
    return ", ".join(f"{n} **{d[NDP_ROWS[n]] * 100:.1f}%**" for n in names)


@cache
def cache_rows() -> list[dict[str, Any]]:
    """``bench cache`` rows in the README's order: law, intent, FLAME."""
    rows: list[dict[str, Any]] = json.loads((ROOT / "docs" / "bench_cache.json").read_text())[
        "rows"
    ]
    return rows


def cache_hits(row: int, policy: str) -> str:
    """``0.480 / 0.486``: a policy's hit rate on the fit part / the scored part."""
    r = cache_rows()[row][policy]
    return f"{r['fit']['hit_rate']:.3f} / {r['scored']['hit_rate']:.3f}"


def cache_latency() -> str:
    def pct(key: str) -> list[str]:
        return [f"{-r[key] * 100:.1f}" for r in cache_rows()]

    law, intent, flame = pct("decode_latency_reduction_vs_lru_cpu")
    sub = " / ".join(pct("decode_latency_reduction_sub_vs_lru_cpu"))
    return f"law **{law}%**, intent **{intent}%**, FLAME **{flame}%** ({sub}% with substitution)"


FIGURES: dict[str, Callable[[], str]] = {
    "cache law hit rates": lambda: (
        f"**law** LRU {cache_hits(0, 'lru')}, LFU {cache_hits(0, 'lfu')}, Belady "
        f"{cache_hits(0, 'belady')}, moesched **{cache_hits(0, 'moesched')}"
    ),
    "cache intent hit rates": lambda: (
        f"**intent** LRU {cache_hits(1, 'lru')}, LFU {cache_hits(1, 'lfu')}, Belady "
        f"{cache_hits(1, 'belady')}, moesched **{cache_hits(1, 'moesched')}"
    ),
    "cache substitution": lambda: (
        "on the **scored** part: law **{:.3f}**, intent **{:.3f}**, FLAME {:.3f}".format(
            *(r["moesched_sub"]["scored"]["hit_rate"] for r in cache_rows())
        )
    ),
    "cache latency vs cpu-assisted lru": cache_latency,
    "cache over bound": lambda: "moesched is {:.2f} / {:.2f} / {:.2f}x the per-step bound".format(
        *(r["moesched_over_bound"] for r in cache_rows())
    ),
    "ndp speedup vs monde-paper": lambda: (
        f"mean **{summary('ndp')['speedup_vs_monde_paper_mean']:.2f}x**, "
        f"max {summary('ndp')['speedup_vs_monde_paper_max']:.2f}x (Mixtral)"
    ),
    "ndp speedup vs monde-best-h": lambda: (
        f"mean {summary('ndp')['speedup_mean']:.2f}x, max {summary('ndp')['speedup_max']:.2f}x"
    ),
    "ndp by dimms": lambda: (
        "mean {:.2f}x at 2 DIMMs, {:.2f}x at 4, {:.2f}x at 6, **{:.2f}x over all {} rows**".format(
            *(summary("ndp")["by_dimms"][d]["speedup_vs_monde_paper_mean"] for d in "246"),
            summary("ndp")["speedup_vs_monde_paper_mean_all_dimms"],
            sum(summary("ndp")["by_dimms"][d]["rows"] for d in "246"),
        )
        + f" (Mixtral does not fit 2 DIMMs), max "
        f"{summary('ndp')['speedup_vs_monde_paper_max_all_dimms']:.2f}x (Mixtral, 6 DIMMs)"
    ),
    "ndp decode per token": lambda: ndp_decode(summary("ndp")),
    "ndp against the previous moesched": lambda: ndp_previous(summary("ndp")),
    "ndp over the bound": lambda: (
        "bound (unchanged): "
        + by_row(summary("ndp")["moesched_over_bound_by_row"], "{:.3f}", tuple(NDP_ROWS))
    ),
    "ndp vs gpu-only and load cv": lambda: (
        f"{summary('ndp')['speedup_vs_gpu_only_mean']:.2f}x over GPU-only offloading; NDP load "
        f"CV {summary('ndp')['ndp_load_cv_baseline_mean']:.2f} -> "
        f"{summary('ndp')['ndp_load_cv_mean']:.3f}"
    ),
    "ndp ablations": lambda: (
        f"no tensor parallelism {summary('ndp')['speedup_no_tp_mean']:.2f}x over monde-best-h, "
        f"expert-parallel only {summary('ndp')['speedup_no_balance_mean']:.2f}x, no prefetch "
        f"{summary('ndp')['speedup_no_prefetch_mean']:.2f}x, re-solving every step "
        f"{summary('ndp')['speedup_every_step_mean']:.2f}x"
    ),
    "ndp planning cpu": lambda: ndp_planning(summary("ndp")),
    "ndp planning floor": lambda: ndp_floor(summary("ndp")),
    "dep vs pppipe-paper": lambda: (
        f"max {summary('dep')['speedup_vs_pppipe_paper_max']:.2f}x, "
        f"mean {summary('dep')['speedup_vs_pppipe_paper_mean']:.2f}x, "
        f"min {summary('dep')['speedup_vs_pppipe_paper_min']:.2f}x over "
        f"{summary('dep')['main_rows']} rows"
    ),
    "dep same deployment": lambda: (
        f"max {summary('dep')['speedup_vs_pppipe_paper_same_deployment_max']:.2f}x, "
        f"mean {summary('dep')['speedup_vs_pppipe_paper_same_deployment_mean']:.2f}x"
    ),
    "dep vs pppipe-tuned": lambda: (
        f"vs `pppipe-tuned`: max {summary('dep')['speedup_vs_pppipe_tuned_max']:.2f}x, "
        f"mean {summary('dep')['speedup_vs_pppipe_tuned_mean']:.2f}x, "
        f"min {summary('dep')['speedup_vs_pppipe_tuned_min']:.2f}x"
    ),
    "dep nic-bound rows": lambda: (
        f"({summary('dep')['a6000_h800_comm_bound_rows']} of "
        f"{summary('dep')['a6000_h800_rows']}): "
        f"{summary('dep')['a6000_h800_comm_bound_speedup_vs_pppipe_paper_mean']:.2f}x over "
        f"pppipe-paper, {summary('dep')['a6000_h800_comm_bound_speedup_vs_pppipe_tuned_mean']:.2f}x"
        " over pppipe-tuned"
    ),
    "dep gap": lambda: (
        f"mean {summary('dep')['gap_to_lower_bound_mean'] * 100:.1f}%, within 5% on all "
        f"{summary('dep')['rows_within_5pct_of_bound']} rows, worst "
        f"{summary('dep')['gap_to_lower_bound_max'] * 100:.1f}%"
    ),
    "eplb": lambda: (
        f"balancedness {summary('eplb')['eplb_balancedness_mean']:.4f} with DeepSeek's EPLB, "
        f"{summary('eplb')['moesched_balancedness_mean']:.4f} with moesched; better on "
        f"{summary('eplb')['layers_better']} of {summary('eplb')['layers_total']} layers, worse "
        f"on {summary('eplb')['layers_worse']}"
    ),
    "balance batch 64": lambda: (
        f"EPLB static {summary('balance')['eplb_static_out_b64_r8']:.3f}, EPLB placement with "
        f"per-batch routing {summary('balance')['eplb_routed_out_b64_r8']:.3f}, moesched "
        f"placement with routing {summary('balance')['moesched_out_b64_r8']:.3f}"
    ),
    "runtimes v3": lambda: (
        f"V3 {summary('runtimes')['v3_balancedness_moesched']:.3f} vs "
        f"{summary('runtimes')['v3_balancedness_eplb_routed']:.3f}"
    ),
    "runtimes moves": lambda: (
        f"V3 {summary('runtimes')['v3_moved_aligned']:,} / "
        f"{summary('runtimes')['v3_moved_unaligned']:,}"
    ),
    "sweep": lambda: f"**{summary('sweep')['speedup_2_over_1_workers']:.2f}x**",
    "planted bugs": lambda: "all {replayed} replayed, {caught} caught".format(
        **json.loads((ROOT / "docs" / "planted_bugs.json").read_text())["summary"]
    ),
    "solvers greedy first": lambda: (
        f"p50 **{summary('solvers')['greedy_first_p50_ms_decode_64x9']:.2f} ms** on the 64 x 9 "
        "batch-1 decode layers"
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_the_readme_states_the_committed_figure(name: str) -> None:
    readme = folded((ROOT / "README.md").read_text())
    phrase = folded(FIGURES[name]())
    assert phrase in readme, f"README lacks {phrase!r} (from docs/)"
