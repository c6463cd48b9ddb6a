"""Per-batch balance for expert parallelism: EPLB's static placement (replicas split tokens
evenly, as DeepSeek's EPLB assumes), EPLB's placement with moesched's per-batch router, and
moesched's placement fitted for per-batch routing (``fit_placement``) with the same router.

Per trace (default: the real ESFT intent / law and FLAME-MoE traces; any per-token trace with
``--trace``), 8 GPUs with 0, 8 and 32 redundant slots, batches of 16, 64 and 256 tokens: both
placements are fitted on the first half of the trace only (EPLB on its token histogram,
moesched on its batches of the size being scored: the runtime's batch-size mix) and scored on
the second half on batches starting every size / 16 tokens (every alignment of a batch, which
averages out where batch boundaries fall; ``*_consecutive`` figures beside it score consecutive
batches only, as earlier versions did, with a paired standard error per layer). The fit's
batches of the first half start every ``stride`` tokens (stride = batch size, or less when the
half holds fewer than 48 batches: the window a runtime would have gathered at that rate), its
last fold is held out for validation.
In-window figures are the same placements scored on the first half's consecutive batches.
Balancedness = mean / max GPU load per batch, averaged over batches. The fit runs on a move
budget, so every figure except the wall and CPU times is the same on an idle and a busy machine.

The router's time is CPU time (``time.process_time_ns``) of one ``Router.route`` call per
batch and layer, on EPLB's placement; beside it the CPU time of a fixed pure-Python reference
loop measured in the same run, to compare machines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchResult, percentile
from hwmodel.routing_traces import ESFT_FILES, FLAME_FILE, load_trace, traces_dir
from hwmodel.workload import RoutingTrace
from solvers.eplb.batch_placement import batch_balancedness, eplb_placement, fit_placement
from solvers.eplb.routing import Router, even_split_loads

NUM_GPUS = 8
REDUNDANT = (0, 8, 32)
BATCH_TOKENS = (16, 64, 256)
MAX_MOVES = 200
MIN_FIT_BATCHES = 48


def _batches(trace: RoutingTrace, start: int, stop: int, size: int, stride: int) -> np.ndarray:
    """Histograms ``[num_batches, L, E]`` of the batches of ``size`` tokens starting every
    ``stride`` tokens in [start, stop)."""
    return np.stack(
        [trace.histogram(slice(s, s + size)) for s in range(start, stop - size + 1, stride)]
    )


def _score_stride(size: int) -> int:
    """Tokens between the starts of scored batches: size / 16 (at least 1), so the score
    averages over batch alignments (the same expectation as consecutive batches, with less
    variance from where the batch boundaries fall)."""
    return max(1, size // 16)


def _default_layers(trace: RoutingTrace) -> list[int]:
    """Four layers spread over the model (all of them when it has four or fewer)."""
    n = trace.num_layers
    if n <= 4:
        return list(range(n))
    return sorted({round(x) for x in np.linspace(n / 8, n - 1 - n / 8, 4)})


def _reference_us() -> float:
    """CPU microseconds of a fixed pure-Python loop (median of 200): the machine's speed."""
    out = []
    for _ in range(200):
        t0 = time.process_time_ns()
        sum(range(1000))
        out.append(time.process_time_ns() - t0)
    return float(np.median(out)) / 1e3


def _router_times(p2l: np.ndarray, batches: np.ndarray, num_gpus: int) -> list[float]:
    """CPU microseconds of one ``route`` call per batch ``batches [n, E]``."""
    router = Router(p2l, num_gpus, batches.shape[1])
    router.route(batches[0])
    out = []
    for b in batches:
        t0 = time.process_time_ns()
        router.route(b)
        out.append((time.process_time_ns() - t0) / 1e3)
    return out


def _even_balancedness(p2l: np.ndarray, batches: np.ndarray) -> np.ndarray:
    out = []
    for b in batches:
        loads = even_split_loads(p2l, NUM_GPUS, b.astype(np.float64))
        out.append(loads.mean() / loads.max() if loads.max() > 0 else 1.0)
    return np.array(out)


def evaluate(
    name: str,
    trace: RoutingTrace,
    layers: list[int],
    fit_range: tuple[int, int],
    score_range: tuple[int, int],
    redundant: tuple[int, ...] = REDUNDANT,
    sizes: tuple[int, ...] = BATCH_TOKENS,
    max_moves: int = MAX_MOVES,
    fit_kwargs: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, list[float]]]:
    """Rows per (redundant, batch size) for one trace, fitted on tokens ``fit_range`` and
    scored on ``score_range``; and the router's CPU times per batch size (the trace's experts
    at EPLB's placement, +8 slots)."""
    rows: list[dict[str, Any]] = []
    times: dict[int, list[float]] = {}
    fit_kwargs = fit_kwargs or {}
    tokens = trace.histogram(slice(*fit_range))  # [L, E]: EPLB's input
    for size in sizes:
        span = fit_range[1] - fit_range[0]
        stride = max(1, min(size, (span - size) // MIN_FIT_BATCHES))
        window = _batches(trace, fit_range[0], fit_range[1], size, stride)
        in_window = _batches(trace, fit_range[0], fit_range[1], size, size)
        scored = _batches(trace, score_range[0], score_range[1], size, _score_stride(size))
        consecutive = _batches(trace, score_range[0], score_range[1], size, size)
        for extra in redundant:
            slots = trace.num_experts + extra
            per_layer = []
            wall = cpu = 0.0
            for layer in layers:
                eplb = eplb_placement(tokens[layer][None, :], slots, NUM_GPUS)
                w0, c0 = time.perf_counter(), time.process_time()
                fit = fit_placement(
                    window[:, layer],
                    slots,
                    NUM_GPUS,
                    max_moves=max_moves,
                    mean_load=tokens[layer],
                    **fit_kwargs,
                )
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
                ours = fit.phy2log
                rec: dict[str, Any] = {"layer": layer, "fallback": fit.fallback}
                for part, batches in (
                    ("in", in_window[:, layer]),
                    ("out", scored[:, layer]),
                    ("out_consecutive", consecutive[:, layer]),
                ):
                    rec[f"eplb_static_{part}"] = float(_even_balancedness(eplb, batches).mean())
                    rec[f"eplb_routed_{part}"] = float(
                        batch_balancedness(eplb, NUM_GPUS, batches).mean()
                    )
                    rec[f"moesched_{part}"] = float(
                        batch_balancedness(ours, NUM_GPUS, batches).mean()
                    )
                rec["gain_in"] = rec["moesched_in"] - rec["eplb_routed_in"]
                rec["gain_out"] = rec["moesched_out"] - rec["eplb_routed_out"]
                paired = batch_balancedness(ours, NUM_GPUS, consecutive[:, layer])
                paired -= batch_balancedness(eplb, NUM_GPUS, consecutive[:, layer])
                rec["gain_out_consecutive"] = float(paired.mean())
                rec["gain_out_se"] = float(paired.std() / np.sqrt(len(paired)))
                rec["moves_adopted"] = fit.moves_adopted
                rec["replicas_moved"] = fit.replicas_moved
                rec["validated_gain"] = fit.validated_balancedness - fit.validated_eplb_balancedness
                rec["fold_gains"] = [round(g, 6) for g in fit.fold_gains]
                rec["validated_gain_se"] = fit.validated_gain_se
                per_layer.append(rec)
                if extra == 8 and layer == layers[0]:
                    times[size] = _router_times(eplb, scored[:, layer], NUM_GPUS)
            gains = [r["gain_out"] for r in per_layer]
            row: dict[str, Any] = {
                "trace": name,
                "batch_tokens": size,
                "num_gpus": NUM_GPUS,
                "redundant": extra,
                "layers": layers,
                "num_fit_batches": len(window),
                "fit_stride_tokens": stride,
                "num_scored_batches": len(scored),
                "score_stride_tokens": _score_stride(size),
                "num_scored_batches_consecutive": len(consecutive),
                "max_moves": max_moves,
                "fit_wall_s": wall,
                "fit_cpu_s": cpu,
                "layers_won": sum(g > 0 for g in gains),
                "layers_lost": sum(g < 0 for g in gains),
                "layers_fallback": sum(r["fallback"] is not None for r in per_layer),
                "worst_layer_gain_out": min(gains),
                "worst_layer_gain_out_consecutive": min(
                    r["gain_out_consecutive"] for r in per_layer
                ),
                "per_layer": per_layer,
            }
            for key in ("eplb_static", "eplb_routed", "moesched"):
                for part in ("in", "out", "out_consecutive"):
                    row[f"{key}_{part}"] = float(np.mean([r[f"{key}_{part}"] for r in per_layer]))
            # The figures of the chart (and of earlier versions): out of window.
            row["eplb_static_balancedness"] = row["eplb_static_out"]
            row["eplb_routed_balancedness"] = row["eplb_routed_out"]
            row["moesched_routed_balancedness"] = row["moesched_out"]
            row["gain_in"] = row["moesched_in"] - row["eplb_routed_in"]
            row["gain_out"] = row["moesched_out"] - row["eplb_routed_out"]
            rows.append(row)
    return rows, times


def _large_router_times(trace: RoutingTrace) -> dict[str, float]:
    """Router CPU times at 256 experts on 64 GPUs (320 slots: 288 does not divide over 64
    GPUs) and on 32 GPUs (288 slots): four of the trace's layers side by side stand for one
    layer of 256 experts (labelled as such), EPLB placement on the first half."""
    half = trace.num_tokens // 2
    layers = [2, 9, 16, 23] if trace.num_layers == 26 else _default_layers(trace)[:4]
    if trace.num_experts * len(layers) != 256:
        return {}
    out: dict[str, float] = {}
    first = trace.histogram(slice(0, half))[layers].reshape(-1)
    batches = np.stack(
        [
            trace.histogram(slice(s, s + 64))[layers].reshape(-1)
            for s in range(half, trace.num_tokens - 64 + 1, 64)
        ]
    )
    for num_gpus, slots in ((64, 320), (32, 288)):
        p2l = eplb_placement(first[None, :], slots, num_gpus)
        ts = _router_times(p2l, batches, num_gpus)
        out[f"route_256e_{num_gpus}gpu_{slots}slots_p50_cpu_us"] = percentile(ts, 50)
        out[f"route_256e_{num_gpus}gpu_{slots}slots_p99_cpu_us"] = percentile(ts, 99)
    return out


def run(quick: bool = False, traces: list[Path] | None = None) -> BenchResult:
    """The balance benchmark on the default traces, or on ``traces`` (any per-token trace)."""
    result = BenchResult("balance")
    named: list[tuple[str, RoutingTrace, list[int] | None]]
    if traces:
        named = [(p.name.split(".")[0], load_trace(p), None) for p in traces]
    else:  # the default set: these traces and layers
        named = [
            ("esft-intent", load_trace(traces_dir() / ESFT_FILES["intent"]), [2, 9, 16, 23]),
            ("esft-law", load_trace(traces_dir() / ESFT_FILES["law"]), [2, 9, 16, 23]),
            ("flame-moe-290m", load_trace(traces_dir() / FLAME_FILE), [1, 3, 5, 7]),
        ]
    all_times: dict[tuple[int, int], list[float]] = {}
    large: dict[str, float] = {}
    for name, trace, chosen in named:
        layers = chosen or _default_layers(trace)
        layers = layers[:1] if quick else layers
        half = trace.num_tokens // 2
        if half < max(BATCH_TOKENS):
            raise ValueError(
                f"trace {name}: {trace.num_tokens} tokens; the benchmark fits on the first half "
                f"and scores the second in batches of up to {max(BATCH_TOKENS)} tokens, so it "
                f"needs at least {2 * max(BATCH_TOKENS)}"
            )
        sys.stderr.write(f"balance: {name} ({trace.num_tokens} tokens, layers {layers})\n")
        rows, times = evaluate(
            name,
            trace,
            layers,
            (0, half),
            (half, trace.num_tokens),
            max_moves=40 if quick else MAX_MOVES,
        )
        result.rows.extend(rows)
        for size, ts in times.items():
            all_times.setdefault((trace.num_experts, size), []).extend(ts)
        if not large:
            large = _large_router_times(trace)
    result.summary = _summary(result.rows, all_times, large)
    return result


def _summary(
    rows: list[dict[str, Any]],
    times: dict[tuple[int, int], list[float]],
    large: dict[str, float],
) -> dict[str, Any]:
    """``times``: the router's CPU times by (experts, batch tokens), each at EPLB's placement
    on ``NUM_GPUS`` GPUs with 8 redundant slots."""
    scored = [r for r in rows if r["redundant"] > 0]
    b64 = [r for r in rows if r["batch_tokens"] == 64 and r["redundant"] == 8]
    per_layer = [g["gain_out"] for r in scored for g in r["per_layer"]]
    consecutive = [g["gain_out_consecutive"] for r in scored for g in r["per_layer"]]
    summary: dict[str, Any] = {
        "out_of_window_gain_b64_r8_by_trace": {r["trace"]: r["gain_out"] for r in b64},
        "in_window_gain_b64_r8_by_trace": {r["trace"]: r["gain_in"] for r in b64},
        "eplb_static_out_b64_r8": float(np.mean([r["eplb_static_out"] for r in b64])),
        "eplb_routed_out_b64_r8": float(np.mean([r["eplb_routed_out"] for r in b64])),
        "moesched_out_b64_r8": float(np.mean([r["moesched_out"] for r in b64])),
        "min_out_of_window_gain_over_settings": min(r["gain_out"] for r in scored),
        "settings_above_eplb_out": sum(r["gain_out"] > 0 for r in scored),
        "settings": len(scored),
        "worst_layer_gain_out": min(per_layer),
        "layers_won_out": sum(g > 0 for g in per_layer),
        "layers_lost_out": sum(g < 0 for g in per_layer),
        "layers_lost_by_more_than_0.002": sum(g < -0.002 for g in per_layer),
        "layers_lost_by_more_than_0.002_consecutive": sum(g < -0.002 for g in consecutive),
        "worst_layer_gain_out_consecutive": min(consecutive),
        "losers_out": [
            {k: g[k] for k in ("layer", "gain_out", "gain_out_consecutive", "gain_out_se")}
            | {"trace": r["trace"], "batch_tokens": r["batch_tokens"], "redundant": r["redundant"]}
            for r in scored
            for g in r["per_layer"]
            if min(g["gain_out"], g["gain_out_consecutive"]) < -0.002
        ],
        "layer_fits": len(per_layer),
        "fit_cpu_s": float(sum(r["fit_cpu_s"] for r in rows)),
        "reference_loop_cpu_us": _reference_us(),
    }
    for (experts, size), ts in sorted(times.items()):
        shape = f"route_{experts}e_{NUM_GPUS}gpu_{experts + 8}slots_b{size}"
        summary[f"{shape}_p50_cpu_us"] = percentile(ts, 50)
        summary[f"{shape}_p99_cpu_us"] = percentile(ts, 99)
    summary.update(large)
    return summary
