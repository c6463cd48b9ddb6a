"""Solve placement with a backend under one deadline; validate; fall back; account for it.

``auto`` runs greedy first, hands its plan to CP-SAT as a hint and an upper bound, lets CP-SAT
run until the deadline, and keeps the best plan that passes the executor; when CP-SAT errs or
finds nothing, the greedy plan is returned with the reason. Proven infeasibility (a granule
nobody holds and no load possible) is reported as such, with no plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hwmodel.plan import ComputeTask, Plan, Residency, SolverAccount, SolveStatus, TransferTask
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from solvers import timing
from solvers.common import Backend, Deadline
from solvers.common import account as make_account
from solvers.placement.greedy import solve_greedy
from solvers.placement.problem import Assignment, PlacementInstance, PlacementProblem

# Building the CP-SAT model costs about 0.1 ms per granule variable (measured on 2 cores);
# below that plus a minimal search time, running it cannot help within the deadline.
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


def _run_exact(
    backend: str,
    inst: PlacementInstance,
    hint: Assignment,
    horizon: int,
    seconds: float,
    workers: int,
) -> tuple[Assignment | None, str, int | None]:
    """(assignment, status, bound) from CP-SAT or CBC; bound None when not proven."""
    if backend == "cpsat":
        from solvers.placement.cpsat import solve_cpsat

        out = solve_cpsat(inst, hint, horizon, seconds, workers)
        return out.assignment, out.status, out.bound
    from solvers.placement.milp import solve_milp

    res = solve_milp(inst, hint, horizon, seconds, threads=workers)
    bound = int(res.objective) if res.status == "optimal" and res.objective is not None else None
    return res.assignment, res.status, bound


def solve_layer(
    problem: PlacementProblem, backend: Backend = "auto", deadline_s: float = 1.0, workers: int = 2
) -> LayerSolution:
    """Place one layer with ``backend`` within ``deadline_s`` seconds (wall clock)."""
    started = time.perf_counter()
    inst = PlacementInstance(problem)
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
    greedy = solve_greedy(inst)
    greedy_cycles = inst.predict(greedy)
    best, best_cycles = greedy, greedy_cycles
    status: SolveStatus = "feasible"
    bound = inst.lower_bound()
    reason: str | None = None
    if backend != "greedy":
        exact = "cpsat" if backend == "auto" else backend
        left = deadline_s - (time.perf_counter() - started)
        build_s = _BUILD_S_PER_VAR * sum(len(h) for e in inst.experts for h in inst.holders[e])
        crashed = False
        if left < build_s + _MIN_SEARCH_S:
            found, exact_status, exact_bound = None, "skipped", None
            reason = (
                f"{exact} skipped: {left * 1e3:.0f} ms left, building its model takes about "
                f"{build_s * 1e3:.0f} ms"
            )
        else:
            try:
                found, exact_status, exact_bound = _run_exact(
                    exact, inst, greedy, greedy_cycles, left - build_s, workers
                )
            except Exception as exc:  # a crashing backend must not take the request down
                found, exact_status, exact_bound, crashed = None, "error", None, True
                reason = f"{exact} failed: {type(exc).__name__}: {exc}"
        if exact_bound is not None:
            bound = max(bound, exact_bound)
        if found is not None:
            problems = validate(inst, found)
            cycles = inst.predict(found)
            if problems:
                crashed = True
                reason = f"{exact} plan rejected by the executor: {problems[0]}"
            elif cycles <= best_cycles:
                best, best_cycles = found, cycles
                status = "optimal" if exact_status == "optimal" and bound >= cycles else "feasible"
        elif reason is None:
            reason = f"{exact} found no solution within the deadline ({exact_status})"
        # auto's plan is greedy's unless CP-SAT improves it: no solution in time is not a
        # failure there. A crash, a rejected plan, or an explicit backend that gave nothing is.
        if reason is not None and (crashed or backend != "auto"):
            status = "fallback"
    if bound >= best_cycles and status != "fallback":
        status = "optimal"
    elapsed = time.perf_counter() - started
    return LayerSolution(
        inst, best, make_account("placement", backend, status, best_cycles, bound, elapsed, reason)
    )


@dataclass
class PlacementSolution:
    """A placement for every layer of a workload, as one plan."""

    plan: Plan
    layers: list[LayerSolution] = field(default_factory=list)

    @property
    def account(self) -> SolverAccount:
        return self.plan.account


_RANK = {"optimal": 0, "feasible": 1, "given": 1, "fallback": 2, "infeasible": 3}


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
) -> PlacementSolution:
    """Place every layer of the workload (layers run one after another) under one deadline.

    Each layer gets an equal share of what is left of the deadline. When any layer is
    infeasible the plan is empty and the account says which layer and why.
    """
    deadline = Deadline(deadline_s)
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
        sol = solve_layer(problem, backend, deadline.left() / (n - i), workers)
        layers.append(sol)
        if sol.assignment is None:
            account = sol.account.model_copy(
                update={
                    "fallback_reason": f"layer {layer}: {sol.account.fallback_reason}",
                    "wall_time_s": deadline.elapsed(),
                }
            )
            return PlacementSolution(Plan(tasks=(), account=account), layers)
        got, after = sol.instance.tasks(sol.assignment, tuple(after), attention=attention)
        tasks.extend(got)
    predicted = timing.makespan(hardware, model, tasks, workload.context_tokens)
    objective = sum(s.account.objective_cycles or 0 for s in layers)
    bound = sum(s.account.lower_bound_cycles or 0 for s in layers)
    worst = max((s.account.status for s in layers), key=_RANK.__getitem__)
    reasons = [
        f"layer {s.instance.problem.layer}: {s.account.fallback_reason}"
        for s in layers
        if s.account.fallback_reason
    ]
    account = make_account(
        "placement", backend, worst, objective, bound, deadline.elapsed(),
        "; ".join(reasons) or None, predicted,
    )  # fmt: skip
    return PlacementSolution(Plan(tasks=tuple(tasks), account=account), layers)
