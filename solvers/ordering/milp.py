"""MILP ordering (PuLP + CBC): disjunctive big-M between every pair of tasks on a one-lane
resource (a binary says which goes first), precedences, minimize the makespan. For small
graphs only: the pair count grows with the square of the tasks per resource."""

from __future__ import annotations

import math

import pulp

from solvers.common import Budget
from solvers.milp_run import cbc
from solvers.ordering.cpsat import OrderOutcome
from solvers.ordering.graph import TaskGraph

MAX_PAIRS = 2000


def solve_order_milp(
    graph: TaskGraph, hint: list[int] | None, horizon: int, budget: Budget
) -> OrderOutcome:
    """Minimize the makespan of ``graph`` under ``budget``; ``hint``: a start cycle per task."""
    n = len(graph.tasks)
    by_res: dict[str, list[int]] = {}
    for i, r in enumerate(graph.resource):
        by_res.setdefault(r, []).append(i)
    pairs = [
        (a, b)
        for r, members in by_res.items()
        if graph.lanes_of(r) == 1
        for k, a in enumerate(members)
        for b in members[k + 1 :]
    ]
    if len(pairs) > MAX_PAIRS or any(
        graph.lanes_of(r) > 1 and len(m) > 1 for r, m in by_res.items()
    ):
        return OrderOutcome(
            None, "too_large", None, f"milp skipped: more than {MAX_PAIRS} task pairs or lanes > 1"
        )
    prob = pulp.LpProblem("ordering", pulp.LpMinimize)
    start = [prob.add_variable(f"start_{i}", 0, horizon) for i in range(n)]
    makespan = prob.add_variable("makespan", 0, horizon)
    for i, ps in enumerate(graph.preds):
        for p in ps:
            prob += start[i] >= start[p] + graph.duration[p], f"after_{p}_{i}"
    for a, b in pairs:
        # Hard: on one lane, a before b or b before a.
        first = prob.add_variable(f"first_{a}_{b}", cat="Binary")
        prob += start[b] >= start[a] + graph.duration[a] - horizon * (1 - first), f"ab_{a}_{b}"
        prob += start[a] >= start[b] + graph.duration[b] - horizon * first, f"ba_{a}_{b}"
        if hint is not None:
            first.setInitialValue(int(hint[a] <= hint[b]))
    for i in range(n):
        prob += makespan >= start[i] + graph.duration[i], f"end_{i}"
        if hint is not None:
            start[i].setInitialValue(hint[i])
    prob += makespan
    prob.solve(cbc(budget, warm_start=hint is not None))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return OrderOutcome(None, "unknown", None)
    starts = [round(s.value() or 0) for s in start]
    optimal = prob.sol_status == pulp.LpSolutionOptimal
    return OrderOutcome(
        starts,
        "optimal" if optimal else "feasible",
        math.floor(pulp.value(makespan) + 1e-6) if optimal else None,  # a bound: round down
    )
