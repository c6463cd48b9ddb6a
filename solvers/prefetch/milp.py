"""MILP prefetch-set selection (PuLP + CBC; reads ``sol_status``)."""

from __future__ import annotations

import pulp

from solvers.common import Budget
from solvers.milp_run import cbc
from solvers.prefetch.select import PrefetchProblem


def select_milp(problem: PrefetchProblem, budget: Budget) -> tuple[list[int] | None, str]:
    """(chosen indices or None, status) from CBC under ``budget``."""
    n = len(problem.experts)
    prob = pulp.LpProblem("prefetch", pulp.LpMaximize)
    x = [prob.add_variable(f"stage_e{problem.experts[i]}", cat="Binary") for i in range(n)]
    prob += pulp.lpSum(problem.probability[i] * problem.saved_cycles[i] * x[i] for i in range(n))
    prob += (
        pulp.lpSum(problem.size_bytes[i] * x[i] for i in range(n)) <= problem.free_bytes,
        "memory",
    )
    prob += (
        pulp.lpSum(problem.transfer_cycles[i] * x[i] for i in range(n))
        <= problem.link_budget_cycles,
        "link_time",
    )
    prob.solve(cbc(budget))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None, "unknown"
    chosen = [i for i in range(n) if (x[i].value() or 0) > 0.5]
    return chosen, "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible"
