"""Solve the EPLB problem through the portfolio: ``greedy`` (DeepSeek's algorithm), ``cpsat``
or ``auto``.

Per layer, the portfolio (``solvers.portfolio``) runs EPLB's greedy, gives it to CP-SAT as the
hint, and keeps the placement with the smaller largest GPU load; each layer gets an equal part
of the budget. ``greedy`` returns DeepSeek's maps exactly as ``rebalance_experts`` makes them.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from hwmodel.plan import SolveStatus
from solvers import portfolio
from solvers.common import Budget, budget_of
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

_MIN_SHARE_S = 0.01  # under a wall-clock budget, a layer with less than this skips CP-SAT


def max_load(weights: np.ndarray, counts: np.ndarray) -> float:
    """Largest GPU load of one layer: ``weights [E]`` tokens, ``counts [E, P]`` replicas."""
    per_replica = weights / np.maximum(counts.sum(1), 1)
    return float((counts * per_replica[:, None]).sum(0).max())


def check_counts(problem: EplbProblem, counts: np.ndarray) -> list[str]:
    """Every way replica counts ``[E, P]`` break the problem's slots (empty when valid)."""
    out = []
    if (counts.sum(1) < 1).any():
        out.append("replicas: an expert has no replica")
    if (counts.sum(0) != problem.slots_per_gpu).any():
        out.append(f"replicas: a GPU does not hold exactly {problem.slots_per_gpu} slots")
    return out


def eplb_portfolio(
    problem: EplbProblem, weights: np.ndarray, greedy_counts: np.ndarray, bound: float
) -> portfolio.Portfolio[np.ndarray]:
    """One layer as the portfolio sees it: replica counts ``[E, P]``, scored by the largest
    GPU load (tokens), bounded by ``trivial_bound``."""

    def cpsat(hint: np.ndarray, budget: Budget) -> portfolio.Outcome[np.ndarray]:
        if not budget.deterministic and budget.deadline.left() < _MIN_SHARE_S:
            return portfolio.Outcome(None, "skipped", note="cpsat skipped: no time left")
        from solvers.eplb.cpsat import solve_layer_cpsat

        out = solve_layer_cpsat(problem, weights, hint, budget)
        return portfolio.Outcome(out.counts, out.status, out.bound, out.note)

    return portfolio.Portfolio(
        name="eplb",
        greedy=lambda: greedy_counts,
        objective=lambda c: max_load(weights, c),
        check=lambda c: check_counts(problem, c),
        bound=bound,
        exact={"cpsat": cpsat},
        tolerance=1e-9 * max(1.0, float(weights.sum())),
    )


def solve_eplb(
    problem: EplbProblem,
    backend: EplbBackend = "auto",
    deadline_s: float = 5.0,
    workers: int = 2,
    budget: Budget | None = None,
) -> EplbSolution:
    """Replicate and pack every layer under ``budget`` (default: ``deadline_s`` seconds of
    wall clock); maps in EPLB's shapes."""
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    w = np.asarray(problem.weight, dtype=np.float64)
    num_layers, num_log = w.shape
    phy2log, log2phy, logcnt = rebalance_experts(
        w, problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus
    )
    counts = counts_from_phy2log(phy2log, num_log, problem.num_gpus)
    bound = trivial_bound(w, problem.num_gpus, problem.num_replicas)
    statuses: list[SolveStatus] = []
    reasons: list[str] = []
    for layer in range(num_layers):
        res = portfolio.run(
            eplb_portfolio(problem, w[layer], counts[layer], float(bound[layer])),
            backend,
            budget.part(num_layers, num_layers - layer),
        )
        counts[layer], bound[layer] = res.solution, res.bound
        statuses.append(res.status)
        if res.fallback_reason:
            reasons.append(f"layer {layer}: {res.fallback_reason}")
    if backend != "greedy":
        phy2log, log2phy, logcnt = maps_from_counts(counts)
    loads = gpu_loads(w, phy2log, problem.num_gpus)
    return EplbSolution(
        phy2log=phy2log,
        log2phy=log2phy,
        logcnt=logcnt,
        gpu_loads=loads,
        balancedness=balancedness(loads),
        max_load=loads.max(-1),
        max_load_bound=bound,
        backend=backend,
        status=portfolio.worst_status(statuses),
        wall_time_s=time.perf_counter() - started,
        fallback_reason="; ".join(reasons) or None,
    )
