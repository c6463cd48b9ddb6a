"""MILP prefetch-set selection (PuLP + CBC; reads ``sol_status``)."""

from __future__ import annotations

import pulp

from solvers.prefetch.select import PrefetchProblem


def select_milp(problem: PrefetchProblem, time_limit_s: float) -> tuple[list[int], str]:
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
    prob.solve(
        pulp.PULP_CBC_CMD(msg=False, timeLimit=max(0.1, round(time_limit_s, 2)), timeMode="elapsed")
    )
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return [], "fallback"
    chosen = [i for i in range(n) if (x[i].value() or 0) > 0.5]
    return chosen, "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible"
