"""Order a task list through the portfolio (``solvers.portfolio``); the account says how.

Every schedule is re-emitted in start order and its makespan predicted by the forward pass
(``solvers.timing``), which is what the executor will simulate for it. The portfolio keeps a
backend's schedule only when that prediction is below the greedy one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from hwmodel.plan import SolverAccount
from hwmodel.spec import Hardware, ModelSpec
from solvers import portfolio, timing
from solvers.common import Backend, Budget, budget_of
from solvers.common import account as make_account
from solvers.ordering.graph import AnyTask, TaskGraph, list_schedule


@dataclass
class Ordered:
    """Tasks in run order, their predicted makespan, and the account."""

    tasks: list[AnyTask]
    makespan_cycles: int
    account: SolverAccount


def _starts(
    hardware: Hardware,
    model: ModelSpec,
    graph: TaskGraph,
    ordered: list[AnyTask],
    context_tokens: int,
) -> list[int]:
    times = timing.forward_pass(hardware, model, ordered, context_tokens)
    return [times[t.id][0] for t in graph.tasks]


def ordering_portfolio(
    hardware: Hardware, model: ModelSpec, graph: TaskGraph, context_tokens: int = 0
) -> portfolio.Portfolio[list[AnyTask]]:
    """A task graph's ordering as the portfolio sees it: a task list in run order, scored by
    the forward pass's makespan in cycles, bounded by ``TaskGraph.lower_bound``."""

    def cycles(order: list[AnyTask]) -> float:
        return timing.makespan(hardware, model, order, context_tokens)

    def check(order: list[AnyTask]) -> list[str]:
        if sorted(t.id for t in order) != sorted(t.id for t in graph.tasks):
            return ["ordering: the schedule does not hold exactly the graph's tasks"]
        try:
            timing.forward_pass(hardware, model, order, context_tokens)
        except ValueError as exc:
            return [f"ordering: {exc}"]
        return []

    def exact(name: str) -> portfolio.Exact[list[AnyTask]]:
        def solve(hint: list[AnyTask], budget: Budget) -> portfolio.Outcome[list[AnyTask]]:
            starts = _starts(hardware, model, graph, hint, context_tokens)
            horizon = timing.makespan(hardware, model, hint, context_tokens)
            if name == "cpsat":
                from solvers.ordering.cpsat import solve_order_cpsat

                out = solve_order_cpsat(graph, starts, horizon, budget)
            else:
                from solvers.ordering.milp import solve_order_milp

                out = solve_order_milp(graph, starts, horizon, budget)
            found = None if out.starts is None else graph.emit(out.starts)
            return portfolio.Outcome(found, out.status, out.bound, out.note)

        return solve

    return portfolio.Portfolio(
        name="ordering",
        greedy=lambda: graph.emit(list_schedule(graph)),
        objective=cycles,
        check=check,
        bound=graph.lower_bound(),
        exact={"cpsat": exact("cpsat"), "milp": exact("milp")},
    )


def solve_order(
    hardware: Hardware,
    model: ModelSpec,
    tasks: Sequence[AnyTask],
    backend: Backend = "auto",
    deadline_s: float = 1.0,
    context_tokens: int = 0,
    workers: int = 2,
    budget: Budget | None = None,
) -> Ordered:
    """Best found order of ``tasks`` (every ``after`` must name a task of the list) under
    ``budget`` (default: ``deadline_s`` seconds of wall clock)."""
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    graph = TaskGraph.of(hardware, model, tasks, context_tokens)
    res = portfolio.run(ordering_portfolio(hardware, model, graph, context_tokens), backend, budget)
    account = make_account(
        "ordering", backend, res.status, int(res.objective), int(res.bound),
        time.perf_counter() - started, res.fallback_reason,
    )  # fmt: skip
    return Ordered(res.solution, int(res.objective), account)
