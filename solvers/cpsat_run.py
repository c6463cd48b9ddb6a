"""Running a CP-SAT model under a time limit: one place for the solver's parameters and for
turning its status into ours (optimal, feasible, infeasible, unknown)."""

from __future__ import annotations

from ortools.sat.python import cp_model


def run(
    model: cp_model.CpModel, time_limit_s: float, workers: int = 2, seed: int = 0
) -> tuple[cp_model.CpSolver, str]:
    """Solve; returns the solver (read values only when the status is optimal or feasible)."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
    solver.parameters.num_search_workers = max(1, workers)
    solver.parameters.random_seed = seed
    status = solver.solve(model)
    name = {
        cp_model.OPTIMAL: "optimal",
        cp_model.FEASIBLE: "feasible",
        cp_model.INFEASIBLE: "infeasible",
    }.get(status, "unknown")
    return solver, name
