"""CP-SAT ordering: one interval per task, no-overlap (one lane) or cumulative (several lanes)
per resource, precedences; minimize the makespan. Hinted with a greedy schedule."""

from __future__ import annotations

from dataclasses import dataclass

from ortools.sat.python import cp_model

from solvers.common import Budget
from solvers.cpsat_run import cut_by_wall_clock
from solvers.cpsat_run import run as run_cpsat
from solvers.ordering.graph import TaskGraph


@dataclass(frozen=True)
class OrderOutcome:
    """Start cycles (or None), status and the proven bound."""

    starts: list[int] | None
    status: str
    bound: int | None
    note: str | None = None


def solve_order_cpsat(
    graph: TaskGraph, hint: list[int] | None, horizon: int, budget: Budget
) -> OrderOutcome:
    """Minimize the makespan of ``graph`` under ``budget``; ``hint``: a start cycle per task."""
    m = cp_model.CpModel()
    n = len(graph.tasks)
    start = [m.new_int_var(0, horizon, f"start_{graph.tasks[i].id}") for i in range(n)]
    intervals = [
        m.new_fixed_size_interval_var(start[i], graph.duration[i], f"run_{graph.tasks[i].id}")
        for i in range(n)
    ]
    by_res: dict[str, list[int]] = {}
    for i, r in enumerate(graph.resource):
        by_res.setdefault(r, []).append(i)
    for r, members in by_res.items():
        # Hard: a resource runs one task per lane at a time.
        lanes = graph.lanes_of(r)
        if lanes == 1:
            m.add_no_overlap([intervals[i] for i in members])
        else:
            m.add_cumulative([intervals[i] for i in members], [1] * len(members), lanes)
    for i, ps in enumerate(graph.preds):
        # Hard: a task starts after every task it waits on has ended.
        for p in ps:
            m.add(start[i] >= start[p] + graph.duration[p])
    makespan = m.new_int_var(0, horizon, "makespan")
    for i in range(n):
        m.add(makespan >= start[i] + graph.duration[i])
    m.minimize(makespan)
    if hint is not None:
        for i in range(n):
            m.add_hint(start[i], hint[i])
        m.add_hint(makespan, max(h + d for h, d in zip(hint, graph.duration, strict=True)))
    solver, status = run_cpsat(m, budget)
    note = cut_by_wall_clock(solver, budget)
    if status not in ("optimal", "feasible"):
        return OrderOutcome(None, status, None, note)
    starts = [int(solver.value(s)) for s in start]
    return OrderOutcome(starts, status, int(solver.best_objective_bound), note)
