"""One chart per benchmark, drawn from its JSON result (``moesched plot RESULT.json``).

Each function takes the result as written by ``BenchResult.write`` and the path of the PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Result = dict[str, Any]


def _short(trace_file: str) -> str:
    """A trace file's short name: esft-law, esft-intent, flame."""
    name = Path(trace_file).name
    if name.startswith("esft_"):
        return "esft-" + name.split("_")[3]
    return name.split("_")[0]


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per label, one bar per series."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_ndp(r: Result, ax: Any) -> None:
    rows = r["rows"]
    labels = [f"{x['trace']} {x['dimms']} DIMMs" for x in rows]
    series = {
        "vs monde-paper (fixed hot set)": [x.get("speedup_vs_monde_paper", np.nan) for x in rows],
        "vs monde-best-h (per-layer search)": [x["speedup"] for x in rows],
    }
    for name in ("no_tp", "no_balance", "no_prefetch", "every_step"):
        if any(f"speedup_{name}" in x for x in rows):
            series[name] = [x.get(f"speedup_{name}", np.nan) for x in rows]
    _bars(ax, labels, series, "end-to-end speedup over MoNDE (x)")
    ax.axhline(2.41, color="grey", ls="--", lw=1)
    ax.text(len(labels) - 0.5, 2.45, "paper: 2.41x mean over MoNDE", fontsize=8, ha="right")
    ax.set_title("GPU-NDP, batch 1, 512 in / 512 out (executor model)")


def plot_cache(r: Result, ax: Any) -> None:
    rows = r["rows"]
    labels = [f"{_short(x['trace'])} C={x['capacity_experts']}" for x in rows]
    names = {
        "lru": "LRU", "lfu": "LFU", "belady": "Belady (offline demand optimum)",
        "moesched": "moesched (transition prefetch)", "moesched_sub": "moesched + substitution",
    }  # fmt: skip
    series = {label: [x[name]["all"]["hit_rate"] for x in rows] for name, label in names.items()}
    _bars(ax, labels, series, "hit rate (every decode token)")
    ax.set_title("Expert cache hit rate (offload-a6000-pcie4, real traces, all sequences)")


def plot_dep(r: Result, ax: Any) -> None:
    rows = r["rows"]
    labels = [
        f"{x['hardware'][4:].upper()} {x['model']}, context {x['context_tokens'] // 1024}k tokens"
        for x in rows
    ]
    _bars(ax, labels, {
        "vs pppipe-paper (own deployments)": [x["speedup_vs_pppipe_paper"] for x in rows],
        "vs pppipe-paper (its deployment)": [
            x["speedup_vs_pppipe_paper_same_deployment"] for x in rows
        ],
        "vs pppipe-tuned (own deployments)": [x["speedup_vs_pppipe_tuned"] for x in rows],
    }, "tokens/s per GPU, ratio (x)")  # fmt: skip
    ax.axhline(1.61, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title("DEP: moesched vs PPPipe (dashed: FinDEP's reported 1.61x)")


def plot_eplb(r: Result, ax: Any) -> None:
    rows = r["rows"]
    labels = [
        f"{x['histograms']}, {x['num_gpus']} GPUs, {x['redundant']} redundant slots" for x in rows
    ]
    _bars(ax, labels, {
        "DeepSeek EPLB": [x["eplb_balancedness_mean"] for x in rows],
        "moesched": [x["moesched_balancedness_mean"] for x in rows],
    }, "balancedness (mean / max)")  # fmt: skip
    ax.set_ylim(0.8, 1.0)
    ax.set_title("EPLB replication and packing on real histograms")


def plot_balance(r: Result, ax: Any) -> None:
    rows = [x for x in r["rows"] if x["batch_tokens"] == 64]
    labels = [f"{x['trace']}, {x['redundant']} redundant slots" for x in rows]
    _bars(ax, labels, {
        "EPLB static": [x["eplb_static_balancedness"] for x in rows],
        "EPLB + routing": [x["eplb_routed_balancedness"] for x in rows],
        "moesched": [x["moesched_routed_balancedness"] for x in rows],
    }, "per-batch balancedness")  # fmt: skip
    ax.set_title("Per-batch balance at 64 tokens (out of window: the second half)")


def plot_runtimes(r: Result, ax: Any) -> None:
    rows = r["rows"]
    _bars(ax, [x["case"] for x in rows], {
        "current (routed)": [x["balancedness_current_routed"] for x in rows],
        "EPLB on the window (routed)": [x["balancedness_eplb_routed"] for x in rows],
        "moesched rebalance_window": [x["balancedness_moesched"] for x in rows],
    }, "window balancedness (routed)")  # fmt: skip
    ax.set_title("Window fit vs EPLB on the same window; moved replicas in the JSON")


def plot_solvers(r: Result, ax: Any) -> None:
    rows = r["rows"]
    words = {"greedy": "greedy", "auto": "auto (greedy, then CP-SAT)",
             "reference": "reference (CP-SAT, 0.5 work units)"}  # fmt: skip
    for backend, label in words.items():
        ax.scatter(
            [x[f"{backend}_ms"] for x in rows],
            [x[f"{backend}_gap"] or 0.0 for x in rows],
            label=label, s=14,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("CPU time per layer (ms)")
    ax.set_ylabel("gap to best bound")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Placement solvers on real layers")


def plot_executor(r: Result, ax: Any) -> None:
    rows = r["rows"]
    labels = [f"{x['hardware']} {x['model']}" for x in rows]
    _bars(ax, labels, {
        "median": [x["step_p50_ms"] for x in rows],
        "95th percentile": [x["step_p95_ms"] for x in rows],
    }, "ms per simulated step")  # fmt: skip
    ax.axhline(r["summary"].get("target_step_ms", 50), color="grey", ls="--", lw=1)
    ax.set_title("Executor speed (one decode step, every layer)")


def plot_service(r: Result, ax: Any) -> None:
    s = r["summary"]
    names = ["observation, 99th percentile", "schedule, median", "health check, median"]
    ax.bar(names, [s["observe_p99_ms"], s["schedule_p50_ms"], s["healthz_p50_ms"]])
    ax.axhline(s["targets"]["observe_p99_ms"], color="grey", ls="--", lw=1)
    ax.set_ylabel("ms")
    ax.set_title(f"Service latency ({s['observe_rps']:.0f} observations/s, 4 clients)")


def plot_reliability(r: Result, ax: Any) -> None:
    s = r["summary"]
    parts = ["schema fuzzing", "random solves (properties)", "overload (503s)", "kill -9 restarts"]
    cases = [s["fuzz_cases"], s["property_cases"], s["overload_requests"], s["kill9_runs"]]
    bad = [
        s["fuzz_5xx"] + s["fuzz_schema_violations"], s["property_failures"], s["overload_5xx"],
        s["kill9_lost_observations"],
    ]  # fmt: skip
    _bars(ax, parts, {"cases": cases, "failures": bad}, "count")
    ax.set_yscale("symlog")
    ax.set_title("Reliability: cases run and failures found")


def plot_cli(r: Result, ax: Any) -> None:
    rows = r["rows"]
    ax.bar([x["command"] for x in rows], [x["cpu_s_p50"] for x in rows])
    ax.axhline(r["summary"]["target_s"], color="grey", ls="--", lw=1)
    ax.text(len(rows) - 0.5, r["summary"]["target_s"] * 1.02, "target: 1 s", fontsize=8, ha="right")
    for i, x in enumerate(rows):
        label = f"{x['ratio_to_python']:.1f}x python's wall time"
        ax.text(i, x["cpu_s_p50"], label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("start-up CPU time, median (s)")
    ax.set_title("Command-line start-up, as a multiple of a bare `python -c pass`")


def plot_sweep(r: Result, ax: Any) -> None:
    rows = r["rows"]
    ax.bar([f"{row['workers']} worker(s)" for row in rows], [row["wall_s"] for row in rows])
    ax.set_ylabel("wall seconds for the sweep")
    s = r["summary"]
    ax.set_title(
        f"A {s['points']}-point sweep on Ray: {s['speedup_2_over_1_workers']:.2f}x on 2 workers "
        f"(target {s['target_speedup']}x)"
    )


PLOTS: dict[str, Callable[[Result, Any], None]] = {
    "ndp": plot_ndp, "cache": plot_cache, "dep": plot_dep, "eplb": plot_eplb,
    "balance": plot_balance, "solvers": plot_solvers, "executor": plot_executor,
    "service": plot_service, "reliability": plot_reliability, "runtimes": plot_runtimes,
    "sweep": plot_sweep, "cli": plot_cli,
}  # fmt: skip


def plot(result: Result, path: Path) -> None:
    """Draw ``result``'s chart into the PNG at ``path``.

    Raises:
        ValueError: when ``result`` is not a benchmark result or its benchmark has no chart.
    """
    name = result.get("benchmark") if isinstance(result, dict) else None
    if name is None:
        raise ValueError("benchmark: missing; not a benchmark result (moesched bench NAME --json)")
    if name not in PLOTS:
        raise ValueError(f"benchmark: no chart for '{name}'; charts: {sorted(PLOTS)}")
    draw = PLOTS[name]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    draw(result, ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
