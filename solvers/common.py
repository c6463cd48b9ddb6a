"""What every problem and backend shares: backends, the deadline, the account of a solve."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

from hwmodel.plan import SolverAccount, SolveStatus

Backend = Literal["greedy", "cpsat", "milp", "auto"]
BACKENDS: tuple[str, ...] = get_args(Backend)


@dataclass(slots=True)
class Deadline:
    """One wall-clock budget for a whole solve; every backend reads what is left of it."""

    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.seconds - (time.perf_counter() - self.started))

    def elapsed(self) -> float:
        """Seconds since the solve started."""
        return time.perf_counter() - self.started


def gap(objective: int | None, bound: int | None) -> float | None:
    """Relative gap (objective - bound) / objective, or None when either is unknown."""
    if objective is None or bound is None or objective <= 0:
        return None
    return max(0.0, (objective - bound) / objective)


def account(
    problem: str,
    backend: str,
    status: SolveStatus,
    objective_cycles: int,
    bound_cycles: int,
    wall_time_s: float,
    fallback_reason: str | None,
    predicted_makespan_cycles: int | None = None,
) -> SolverAccount:
    """The solver's account of a solve; the bound is capped at the objective."""
    bound = min(bound_cycles, objective_cycles)
    return SolverAccount(
        problem=problem,
        backend=backend,
        status=status,
        objective_cycles=objective_cycles,
        lower_bound_cycles=bound,
        gap=gap(objective_cycles, bound),
        wall_time_s=wall_time_s,
        fallback_reason=fallback_reason,
        predicted_makespan_cycles=(
            objective_cycles if predicted_makespan_cycles is None else predicted_makespan_cycles
        ),
    )
