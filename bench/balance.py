"""Per-batch balance for expert parallelism: EPLB's static placement, EPLB's placement with
per-batch routing, and moesched's placement fitted for per-batch routing.

Real per-token traces (ESFT intent and law, FLAME-MoE); 8 GPUs with 0, 8 and 32 redundant
replicas; placements fitted on the first half of each trace (EPLB on its token histogram,
moesched on its batches of 64 tokens), evaluated on consecutive batches of 16, 64 and 256
tokens of the second half, for a sample of layers. Balancedness = mean / max GPU load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import BenchResult, percentile
from hwmodel.routing_traces import ESFT_FILES, FLAME_FILE, load_esft, load_flame, traces_dir
from solvers.eplb.batch_placement import place_for_batches
from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.routing import even_split_loads, route_batch

# Candidate moves of the local search per layer: at least what the 1 s / 12 s wall deadlines
# this benchmark had allowed on this machine (one move evaluates 60 routed batches).
MOVES_QUICK, MOVES = 4, 48


def _batches(
    hist_fn: Callable[[slice], np.ndarray], start: int, stop: int, size: int, layer: int
) -> np.ndarray:
    return np.stack(
        [hist_fn(slice(s, s + size))[layer] for s in range(start, stop - size + 1, size)]
    )


def run(quick: bool = False) -> BenchResult:
    result = BenchResult("balance")
    traces = {
        "esft-intent": (load_esft(traces_dir() / ESFT_FILES["intent"]), [2, 9, 16, 23]),
        "esft-law": (load_esft(traces_dir() / ESFT_FILES["law"]), [2, 9, 16, 23]),
        "flame-moe-290m": (load_flame(traces_dir() / FLAME_FILE), [1, 3, 5, 7]),
    }
    route_times: list[float] = []
    per_trace_b64: dict[str, dict[str, float]] = {}
    for name, (trace, layers) in traces.items():
        layers = layers[:1] if quick else layers
        half = trace.num_tokens // 2
        for redundant in (0, 8, 32):
            num_slots = trace.num_experts + redundant
            acc: dict[tuple[int, str], list[float]] = {}
            for layer in layers:
                fit = _batches(trace.histogram, 0, half, 64, layer)
                eplb, _, _ = rebalance_experts(fit.sum(0)[None], num_slots, 1, 1, 8)
                # A move count, not a wall deadline: the figure must not move with machine load.
                ours = place_for_batches(
                    fit, num_slots, 8, deadline_s=600.0, moves=MOVES_QUICK if quick else MOVES
                )
                for size in (16, 64, 256):
                    for b in _batches(trace.histogram, half, trace.num_tokens, size, layer):
                        even = even_split_loads(eplb[0], 8, b.astype(float))
                        t0 = time.perf_counter()
                        routed = route_batch(eplb[0], 8, b)
                        if size == 64 and redundant == 8:
                            route_times.append(time.perf_counter() - t0)
                        mine = route_batch(ours, 8, b)
                        for key, loads in (
                            ("eplb_static", even),
                            ("eplb_routed", routed.gpu_loads),
                            ("moesched_routed", mine.gpu_loads),
                        ):
                            acc.setdefault((size, key), []).append(
                                float(loads.mean() / loads.max()) if loads.max() else 1.0
                            )
            for size in (16, 64, 256):
                row: dict[str, Any] = {
                    "trace": name,
                    "batch_tokens": size,
                    "num_gpus": 8,
                    "redundant": redundant,
                    "layers": layers,
                    "num_batches": len(acc[(size, "eplb_static")]),
                }
                for key in ("eplb_static", "eplb_routed", "moesched_routed"):
                    row[f"{key}_balancedness"] = float(np.mean(acc[(size, key)]))
                result.rows.append(row)
                if size == 64 and redundant == 8:
                    per_trace_b64[name] = {
                        k: float(row[f"{k}_balancedness"])
                        for k in ("eplb_static", "eplb_routed", "moesched_routed")
                    }
    result.summary = {
        "eplb_static_balancedness_b64": float(
            np.mean([v["eplb_static"] for v in per_trace_b64.values()])
        ),
        "eplb_routed_balancedness_b64": float(
            np.mean([v["eplb_routed"] for v in per_trace_b64.values()])
        ),
        "moesched_routed_balancedness_b64": float(
            np.mean([v["moesched_routed"] for v in per_trace_b64.values()])
        ),
        "moesched_minus_eplb_routed_b64_by_trace": {
            k: v["moesched_routed"] - v["eplb_routed"] for k, v in per_trace_b64.items()
        },
        "route_p50_us": percentile(route_times, 50) * 1e6,
        "route_p95_us": percentile(route_times, 95) * 1e6,
    }
    return result
