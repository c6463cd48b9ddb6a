"""Solve the EPLB problem: ``greedy`` (DeepSeek's algorithm), ``cpsat`` or ``auto``.

``auto`` runs EPLB's greedy first, gives it to CP-SAT as the hint, and keeps, per layer, the
placement with the smaller largest GPU load; each layer gets an equal share of what is left
of the deadline. When CP-SAT errs or finds nothing, the greedy layer stays, with the reason.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from solvers.common import Deadline
from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.model import (
    EplbProblem,
    EplbSolution,
    balancedness,
    counts_from_phy2log,
    gpu_loads,
    maps_from_counts,
    trivial_bound,
)

EplbBackend = Literal["greedy", "cpsat", "auto"]


def solve_eplb(
    problem: EplbProblem, backend: EplbBackend = "auto", deadline_s: float = 5.0, workers: int = 2
) -> EplbSolution:
    """Replicate and pack every layer; maps in EPLB's shapes."""
    deadline = Deadline(deadline_s)
    w = np.asarray(problem.weight, dtype=np.float64)
    num_layers, num_log = w.shape
    phy2log, _, _ = rebalance_experts(
        w, problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus
    )
    counts = counts_from_phy2log(phy2log, num_log, problem.num_gpus)
    loads = gpu_loads(w, phy2log, problem.num_gpus)
    best = loads.max(-1)
    bound = trivial_bound(w, problem.num_gpus, problem.num_replicas)
    status = "feasible"
    reasons: list[str] = []
    proven = np.zeros(num_layers, dtype=bool)
    if backend != "greedy":
        from solvers.eplb.cpsat import solve_layer_cpsat

        for layer in range(num_layers):
            share = deadline.left() / (num_layers - layer)
            if share < 0.01:
                reasons.append(f"layer {layer}: no time left for cpsat")
                continue
            try:
                out = solve_layer_cpsat(problem, w[layer], counts[layer], share, workers)
            except Exception as exc:  # a crashing backend must not take the request down
                reasons.append(f"layer {layer}: cpsat failed: {type(exc).__name__}: {exc}")
                continue
            if out.counts is None:
                reasons.append(f"layer {layer}: cpsat found no solution ({out.status})")
                continue
            candidate = out.counts[None]
            cand_p2l, _, _ = maps_from_counts(candidate)
            cand_max = gpu_loads(w[layer : layer + 1], cand_p2l, problem.num_gpus).max()
            if cand_max <= best[layer] + 1e-9:
                counts[layer] = out.counts
                best[layer] = cand_max
            if out.bound is not None:
                bound[layer] = max(bound[layer], out.bound)
            proven[layer] = out.status == "optimal"
        status = "fallback" if reasons else ("optimal" if proven.all() else "feasible")
    if backend == "greedy":
        phy2log_out, log2phy, logcnt = rebalance_experts(
            w, problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus
        )
    else:
        phy2log_out, log2phy, logcnt = maps_from_counts(counts)
    loads = gpu_loads(w, phy2log_out, problem.num_gpus)
    return EplbSolution(
        phy2log=phy2log_out,
        log2phy=log2phy,
        logcnt=logcnt,
        gpu_loads=loads,
        balancedness=balancedness(loads),
        max_load=loads.max(-1),
        max_load_bound=np.minimum(bound, loads.max(-1)),
        backend=backend,
        status=status,
        wall_time_s=deadline.elapsed(),
        fallback_reason="; ".join(reasons) or None,
    )
