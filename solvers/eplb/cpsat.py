"""Exact EPLB packing for one layer with CP-SAT.

Variables: ``v[e,g,k]`` replicas of expert e on GPU g when e has k replicas in all (one-hot
``z[e,k]`` picks k), so a replica's load w_e / k is a constant and every GPU load is linear.
Loads are scaled to integers by lcm(1..kmax) so they are exact for integer token counts.
Hard: every expert has at least one replica; every GPU has exactly its slots; in the
hierarchical mode, each expert group lives on one node and its replicas stay there.
Objective: the largest GPU load. The greedy EPLB answer is the hint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np
from ortools.sat.python import cp_model

from solvers.common import Budget
from solvers.cpsat_run import cut_by_wall_clock
from solvers.cpsat_run import run as run_cpsat
from solvers.eplb.model import EplbProblem


@dataclass(frozen=True)
class LayerOutcome:
    """Replica counts per (expert, GPU) ``[E, P]`` or None, status, and the max-load bound."""

    counts: np.ndarray | None
    status: str
    bound: float | None
    note: str | None = None


def _scale(weights: np.ndarray, kmax: int) -> tuple[list[list[int]], float]:
    """Integer per-replica loads ``[E][k]`` (index k = replica count) and the scale used."""
    integral = np.allclose(weights, np.round(weights)) and weights.max(initial=0) < 2**31
    lcm = reduce(math.lcm, range(1, kmax + 1), 1)
    scale = (
        float(lcm)
        if integral and lcm * weights.max(initial=0) < 2**40
        else 1e6 / max(weights.max(initial=1), 1)
    )
    table = [[0] + [round(w * scale / k) for k in range(1, kmax + 1)] for w in weights]
    return table, scale


def solve_layer_cpsat(
    problem: EplbProblem,
    weights: np.ndarray,
    hint: np.ndarray | None,
    budget: Budget,
) -> LayerOutcome:
    """Minimize the largest GPU load of one layer (``weights [E]``; hint counts ``[E, P]``)."""
    num_log = weights.shape[0]
    P, S, R = problem.num_gpus, problem.slots_per_gpu, problem.num_replicas
    kmax = R - num_log + 1
    table, scale = _scale(weights, kmax)
    m = cp_model.CpModel()
    z = {
        (e, k): m.new_bool_var(f"replicas_e{e}_k{k}")
        for e in range(num_log)
        for k in range(1, kmax + 1)
    }
    v = {
        (e, g, k): m.new_int_var(0, min(S, k), f"v_e{e}_gpu{g}_k{k}")
        for e in range(num_log)
        for g in range(P)
        for k in range(1, kmax + 1)
    }
    for e in range(num_log):
        # Hard: exactly one replica count per expert, and its replicas spread over GPUs.
        m.add_exactly_one(z[e, k] for k in range(1, kmax + 1))
        for k in range(1, kmax + 1):
            m.add(sum(v[e, g, k] for g in range(P)) == k * z[e, k])
    # Hard: the replica counts fill every slot.
    m.add(sum(k * z[e, k] for e in range(num_log) for k in range(1, kmax + 1)) == R)
    for g in range(P):
        # Hard: every GPU holds exactly its slots.
        m.add(sum(v[e, g, k] for e in range(num_log) for k in range(1, kmax + 1)) == S)
    if problem.hierarchical:
        _node_constraint(m, problem, v, num_log, kmax)
    top = sum(max(row) * S for row in table)
    loads = [m.new_int_var(0, top, f"load_gpu{g}") for g in range(P)]
    for g in range(P):
        m.add(
            loads[g]
            == sum(table[e][k] * v[e, g, k] for e in range(num_log) for k in range(1, kmax + 1))
        )
    if not problem.hierarchical:
        # GPUs are interchangeable: order them by load to cut symmetric search.
        for g in range(P - 1):
            m.add(loads[g] >= loads[g + 1])
    # Redundant: the loads always add up to the total (each expert's replicas share w_e), which
    # hands the LP relaxation the mean-load bound at once.
    exact = all(table[e][k] * k == table[e][1] for e in range(num_log) for k in range(1, kmax + 1))
    if exact:
        m.add(sum(loads) == sum(table[e][1] for e in range(num_log)))
    peak = m.new_int_var(0, top, "max_load")
    for g in range(P):
        m.add(peak >= loads[g])
    m.minimize(peak)
    if hint is not None and not problem.hierarchical:
        order = np.argsort(
            -(hint * (weights[:, None] / np.maximum(hint.sum(1, keepdims=True), 1))).sum(0),
            kind="stable",
        )
        hint = hint[:, order]
    if hint is not None:
        cnt = hint.sum(1)
        for e in range(num_log):
            for k in range(1, kmax + 1):
                m.add_hint(z[e, k], int(cnt[e] == k))
                for g in range(P):
                    m.add_hint(v[e, g, k], int(hint[e, g]) if cnt[e] == k else 0)
        hinted = [
            sum(table[e][int(cnt[e])] * int(hint[e, g]) for e in range(num_log)) for g in range(P)
        ]
        for g in range(P):
            m.add_hint(loads[g], hinted[g])
        m.add_hint(peak, max(hinted))
    solver, status = run_cpsat(m, budget)
    note = cut_by_wall_clock(solver, budget)
    if status not in ("optimal", "feasible"):
        return LayerOutcome(None, status, None, note)
    counts = np.zeros((num_log, P), dtype=np.int64)
    for (e, g, _), var in v.items():
        counts[e, g] += solver.value(var)
    # The bound is on the scaled, rounded loads: a GPU's S slots each round by at most the
    # largest rounding error, so shave that much (nothing when the scaling is exact).
    error = max(
        abs(w * scale / k - table[e][k]) for e, w in enumerate(weights) for k in range(1, kmax + 1)
    )
    bound = max(0.0, (solver.best_objective_bound - S * error) / scale)
    return LayerOutcome(counts, status, bound, note)


def _node_constraint(
    m: cp_model.CpModel,
    problem: EplbProblem,
    v: dict[tuple[int, int, int], cp_model.IntVar],
    num_log: int,
    kmax: int,
) -> None:
    """Hard (hierarchical mode): each expert group on one node, its replicas on that node."""
    group_size = num_log // problem.num_groups
    gpus_per_node = problem.num_gpus // problem.num_nodes
    per_node = problem.num_groups // problem.num_nodes
    a = {
        (q, n): m.new_bool_var(f"group{q}_node{n}")
        for q in range(problem.num_groups)
        for n in range(problem.num_nodes)
    }
    for q in range(problem.num_groups):
        m.add_exactly_one(a[q, n] for n in range(problem.num_nodes))
    for n in range(problem.num_nodes):
        m.add(sum(a[q, n] for q in range(problem.num_groups)) == per_node)
    for e in range(num_log):
        q = e // group_size
        for g in range(problem.num_gpus):
            n = g // gpus_per_node
            for k in range(1, kmax + 1):
                m.add(v[e, g, k] == 0).only_enforce_if(a[q, n].negated())
