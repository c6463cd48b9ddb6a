"""CP-SAT prefetch-set selection (0/1 knapsack with memory and link-time constraints)."""

from __future__ import annotations

import math

from ortools.sat.python import cp_model

from solvers.common import Budget
from solvers.cpsat_run import run as run_cpsat
from solvers.prefetch.select import PrefetchProblem


def select_cpsat(
    problem: PrefetchProblem, hint: list[int], budget: Budget
) -> tuple[list[int] | None, str, float | None]:
    """(chosen indices or None, status, a proven upper bound on the expected saving or None).

    Values are scaled so the largest is 10^7 and rounded to integers; the bound is unscaled
    with the rounding (at most half a unit per candidate) added back, so it stays an upper
    bound on the true expected saving.
    """
    m = cp_model.CpModel()
    n = len(problem.experts)
    x = [m.new_bool_var(f"stage_e{problem.experts[i]}") for i in range(n)]
    # Byte counts are integers in practice: use them exactly. Otherwise round sizes up and the
    # room down in units of a millionth of the largest size (conservative, so still feasible).
    if all(float(b).is_integer() for b in problem.size_bytes):
        size = [int(b) for b in problem.size_bytes]
        room = math.floor(problem.free_bytes + 1e-9)
    else:
        unit = max(problem.size_bytes) / 10**6
        size = [math.ceil(b / unit) for b in problem.size_bytes]
        room = math.floor(problem.free_bytes / unit)
    # Hard: the set fits in the free memory.
    m.add(sum(size[i] * x[i] for i in range(n)) <= room)
    # Hard: its transfers fit in the link's idle time.
    m.add(sum(problem.transfer_cycles[i] * x[i] for i in range(n)) <= problem.link_budget_cycles)
    values = [problem.probability[i] * problem.saved_cycles[i] for i in range(n)]
    scale = 10**7 / max(max(values, default=0.0), 1e-300)
    m.maximize(sum(round(values[i] * scale) * x[i] for i in range(n)))
    for i in range(n):
        m.add_hint(x[i], int(i in hint))
    solver, status = run_cpsat(m, budget)
    if status not in ("optimal", "feasible"):
        return None, status, None
    chosen = [i for i in range(n) if solver.value(x[i])]
    bound = (solver.best_objective_bound + 0.5 * n) / scale
    return chosen, status, bound
