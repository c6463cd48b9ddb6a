"""Order a task list with a backend under a deadline; the account says how it went.

Every schedule is re-emitted in start order and its makespan predicted by the forward pass
(``solvers.timing``), which is what the executor will simulate for it. A backend's schedule
is kept only when that prediction does not exceed the greedy one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from hwmodel.plan import SolverAccount, SolveStatus
from hwmodel.spec import Hardware, ModelSpec
from solvers import timing
from solvers.common import Backend
from solvers.common import account as make_account
from solvers.ordering.graph import AnyTask, TaskGraph, list_schedule


@dataclass
class Ordered:
    """Tasks in run order, their predicted makespan, and the account."""

    tasks: list[AnyTask]
    makespan_cycles: int
    account: SolverAccount


def solve_order(
    hardware: Hardware,
    model: ModelSpec,
    tasks: Sequence[AnyTask],
    backend: Backend = "auto",
    deadline_s: float = 1.0,
    context_tokens: int = 0,
    workers: int = 2,
) -> Ordered:
    """Best found order of ``tasks`` (every ``after`` must name a task of the list)."""
    started = time.perf_counter()
    graph = TaskGraph.of(hardware, model, tasks, context_tokens)
    greedy = graph.emit(list_schedule(graph))
    best, best_cycles = greedy, timing.makespan(hardware, model, greedy, context_tokens)
    bound = graph.lower_bound()
    status: SolveStatus = "feasible"
    reason = None
    if backend != "greedy":
        exact = "cpsat" if backend == "auto" else backend
        left = deadline_s - (time.perf_counter() - started)
        hint = _starts(hardware, model, graph, greedy, context_tokens)
        try:
            if exact == "cpsat":
                from solvers.ordering.cpsat import solve_order_cpsat

                out = solve_order_cpsat(graph, hint, best_cycles, max(0.01, left), workers)
            else:
                from solvers.ordering.milp import solve_order_milp

                out = solve_order_milp(graph, hint, best_cycles, max(0.1, left))
        except Exception as exc:  # a crashing backend must not take the request down
            out = None
            reason = f"{exact} failed: {type(exc).__name__}: {exc}"
        if out is not None:
            if out.bound is not None:
                bound = max(bound, out.bound)
            if out.starts is not None:
                candidate = graph.emit(out.starts)
                cycles = timing.makespan(hardware, model, candidate, context_tokens)
                if cycles <= best_cycles:
                    best, best_cycles = candidate, cycles
            else:
                reason = f"{exact} found no schedule ({out.status})"
        if reason is not None and backend != "auto":
            status = "fallback"
    if bound >= best_cycles and status != "fallback":
        status = "optimal"
    account = make_account(
        "ordering", backend, status, best_cycles, bound, time.perf_counter() - started, reason
    )
    return Ordered(best, best_cycles, account)


def _starts(
    hardware: Hardware,
    model: ModelSpec,
    graph: TaskGraph,
    ordered: list[AnyTask],
    context_tokens: int,
) -> list[int]:
    times = timing.forward_pass(hardware, model, ordered, context_tokens)
    return [times[t.id][0] for t in graph.tasks]
