"""Running a CP-SAT model under a budget: one place for the solver's parameters and for
turning its status into ours (optimal, feasible, infeasible, unknown).

With a deterministic budget (``Budget.work``) the search stops on CP-SAT's deterministic time,
with a fixed seed and a fixed number of workers whose strategies are interleaved
(``interleave_search``): the same model gives the same answer however loaded the machine is.
The wall clock then only caps the solve as a safety net (``cut_by_wall_clock`` says whether
it did). Without one (service requests) the wall clock alone stops it.
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from solvers.common import Budget


def configure(solver: cp_model.CpSolver, budget: Budget) -> None:
    """Set the solver's limits, seed and workers from ``budget``."""
    solver.parameters.max_time_in_seconds = max(0.01, budget.deadline.left())
    solver.parameters.num_workers = max(1, budget.workers)
    solver.parameters.random_seed = budget.seed
    if budget.work_s is not None:
        solver.parameters.max_deterministic_time = max(1e-3, budget.work_s)
        solver.parameters.interleave_search = True


def run(model: cp_model.CpModel, budget: Budget) -> tuple[cp_model.CpSolver, str]:
    """Solve; returns the solver (read values only when the status is optimal or feasible)."""
    solver = cp_model.CpSolver()
    configure(solver, budget)
    status = solver.solve(model)
    name = {
        cp_model.OPTIMAL: "optimal",
        cp_model.FEASIBLE: "feasible",
        cp_model.INFEASIBLE: "infeasible",
    }.get(status, "unknown")
    return solver, name


def cut_by_wall_clock(solver: cp_model.CpSolver, budget: Budget) -> str | None:
    """A note when a deterministic solve was stopped by the wall-clock cap (so its answer may
    depend on machine load), else None."""
    if budget.work_s is None:
        return None
    cap = solver.parameters.max_time_in_seconds
    if solver.wall_time >= 0.99 * cap and solver.deterministic_time < budget.work_s:
        return (
            f"cpsat stopped by the wall-clock cap ({cap:.2f} s) after "
            f"{solver.deterministic_time:.2f} of {budget.work_s:.2f} work units"
        )
    return None
