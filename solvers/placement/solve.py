"""Solve placement through the portfolio (``solvers.portfolio``); account for it.

The portfolio runs greedy first, hands its plan to CP-SAT (or CBC) as a hint and an upper
bound, and keeps the better plan that passes the executor. Proven infeasibility (a granule
nobody holds and no load possible) is reported as such, with no plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hwmodel.plan import ComputeTask, Plan, Residency, SolverAccount, TransferTask
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from solvers import portfolio, timing
from solvers.common import Backend, Budget, Deadline, budget_of
from solvers.common import account as make_account
from solvers.placement.greedy import exact_estimate, solve_greedy_estimated
from solvers.placement.problem import (
    Assignment,
    PlacementInstance,
    PlacementProblem,
    instance_of,
)

# Building the CP-SAT model costs about 0.1 ms per granule variable (measured on 2 cores);
# below that plus a minimal search time, running it cannot help within a wall-clock deadline.
_BUILD_S_PER_VAR = 1e-4
_MIN_SEARCH_S = 0.02


@dataclass
class LayerSolution:
    """One layer's placement and how it was found (assignment None when infeasible)."""

    instance: PlacementInstance
    assignment: Assignment | None
    account: SolverAccount


def validate(inst: PlacementInstance, a: Assignment) -> list[str]:
    """Every reason the executor or the solver-free check rejects the assignment."""
    problems = inst.check(a)
    if problems:
        return problems
    return [f"{v.code}: {v.message}" for v in inst.simulate(a).violations]


def _exact(
    backend: str, inst: PlacementInstance, objective: Callable[[Assignment], int]
) -> portfolio.Exact[Assignment]:
    """CP-SAT or CBC on one layer, hinted with (and bounded by) the hint's makespan.

    Under a wall-clock budget the model's build time is taken off the search time, and the
    backend is skipped when too little is left to build and search it.
    """

    def solve(hint: Assignment, budget: Budget) -> portfolio.Outcome[Assignment]:
        horizon = objective(hint)
        if not budget.deterministic:
            left = budget.deadline.left()
            build_s = _BUILD_S_PER_VAR * sum(len(h) for e in inst.experts for h in inst.holders[e])
            if left < build_s + _MIN_SEARCH_S:
                note = (
                    f"{backend} skipped: {left * 1e3:.0f} ms left, building its model takes "
                    f"about {build_s * 1e3:.0f} ms"
                )
                return portfolio.Outcome(None, "skipped", note=note)
            budget = replace(budget, deadline=Deadline(left - build_s))
        if backend == "cpsat":
            from solvers.placement.cpsat import solve_cpsat

            out = solve_cpsat(inst, hint, horizon, budget)
            return portfolio.Outcome(out.assignment, out.status, out.bound, out.note)
        from solvers.placement.milp import solve_milp

        res = solve_milp(inst, hint, horizon, budget)
        # CBC's objective relaxes the transfer ceilings: rounded down, it bounds the makespan.
        bound = (
            int(res.objective) if res.status == "optimal" and res.objective is not None else None
        )
        return portfolio.Outcome(res.assignment, res.status, bound)

    return solve


def placement_portfolio(inst: PlacementInstance) -> portfolio.Portfolio[Assignment]:
    """One layer's placement as the portfolio sees it: makespan in cycles, checked by the
    executor, bounded by ``PlacementInstance.lower_bound``."""
    known: list[tuple[Assignment, int]] = []  # the greedy's plan and its exact estimate

    def greedy() -> Assignment:
        a, estimate = solve_greedy_estimated(inst)
        if exact_estimate(inst):
            known.append((a, estimate))
        return a

    def objective(a: Assignment) -> int:
        # The greedy's estimate is the prediction on single-lane links: no second pass.
        for plan, makespan_cycles in known:
            if plan is a:
                return makespan_cycles
        return inst.predict(a)

    return portfolio.Portfolio(
        name="placement",
        greedy=greedy,
        objective=objective,
        check=lambda a: validate(inst, a),
        bound=inst.lower_bound(),
        exact={"cpsat": _exact("cpsat", inst, objective), "milp": _exact("milp", inst, objective)},
    )


def solve_layer(
    problem: PlacementProblem,
    backend: Backend = "auto",
    deadline_s: float = 1.0,
    workers: int = 2,
    budget: Budget | None = None,
) -> LayerSolution:
    """Place one layer with ``backend`` under ``budget`` (default: ``deadline_s`` seconds of
    wall clock, as service requests have)."""
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    inst = instance_of(problem)
    why_not = inst.feasible()
    if why_not is not None:
        return LayerSolution(
            inst,
            None,
            SolverAccount(
                problem="placement",
                backend=backend,
                status="infeasible",
                fallback_reason=why_not,
                wall_time_s=time.perf_counter() - started,
            ),
        )
    res = portfolio.run(placement_portfolio(inst), backend, budget)
    elapsed = time.perf_counter() - started
    account = make_account(
        "placement", backend, res.status, int(res.objective), int(res.bound), elapsed,
        res.fallback_reason,
    )  # fmt: skip
    return LayerSolution(inst, res.solution, account)


@dataclass
class PlacementSolution:
    """A placement for every layer of a workload, as one plan."""

    plan: Plan
    layers: list[LayerSolution] = field(default_factory=list)

    @property
    def account(self) -> SolverAccount:
        return self.plan.account


def solve_placement(
    hardware: Hardware,
    model: ModelSpec,
    workload: Workload,
    residency: Residency,
    backend: Backend = "auto",
    deadline_s: float = 2.0,
    workers: int = 2,
    num_granules: int = 4,
    allow_loads: bool = True,
    attention: bool = False,
    budget: Budget | None = None,
) -> PlacementSolution:
    """Place every layer of the workload (layers run one after another) under one budget.

    Each layer gets an equal share of it (``Budget.part``). When any layer is infeasible the
    plan is empty and the account says which layer and why.
    """
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    layers: list[LayerSolution] = []
    tasks: list[ComputeTask | TransferTask] = []
    after: list[str] = []
    n = len(workload.layer_ids)
    for i, (layer, row) in enumerate(
        zip(workload.layer_ids, workload.tokens_per_expert, strict=True)
    ):
        problem = PlacementProblem(
            hardware, model, layer, row, workload.num_tokens, residency, num_granules, allow_loads
        )
        sol = solve_layer(problem, backend, budget=budget.part(n, n - i))
        layers.append(sol)
        if sol.assignment is None:
            account = sol.account.model_copy(
                update={
                    "fallback_reason": f"layer {layer}: {sol.account.fallback_reason}",
                    "wall_time_s": time.perf_counter() - started,
                }
            )
            return PlacementSolution(Plan(tasks=(), account=account), layers)
        got, after = sol.instance.tasks(sol.assignment, tuple(after), attention=attention)
        tasks.extend(got)
    predicted = timing.makespan(hardware, model, tasks, workload.context_tokens)
    objective = sum(s.account.objective_cycles or 0 for s in layers)
    bound = sum(s.account.lower_bound_cycles or 0 for s in layers)
    worst = portfolio.worst_status([s.account.status for s in layers])
    reasons = [
        f"layer {s.instance.problem.layer}: {s.account.fallback_reason}"
        for s in layers
        if s.account.fallback_reason
    ]
    account = make_account(
        "placement", backend, worst, objective, bound, time.perf_counter() - started,
        "; ".join(reasons) or None, predicted,
    )  # fmt: skip
    return PlacementSolution(Plan(tasks=tuple(tasks), account=account), layers)
