"""What every problem and backend shares: backends, the budget of a solve, the account of one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Budget:
    """What a solve may spend.

    ``work_s`` is the deterministic budget of the exact backends: CP-SAT's
    ``max_deterministic_time`` (its own work units, about a second each on an idle core, but
    independent of machine load), and for CBC a node limit derived from it. With a work budget
    the search is run deterministically (fixed seed, fixed workers, interleaved search), so the
    same input gives the same answer on a busy machine and an idle one. ``None`` leaves the
    wall clock alone in charge: that is what requests from the service do.

    ``deadline`` is the wall-clock budget of the whole request (shared by its stages); with a
    work budget it is only a safety cap, and an answer cut by it says so in its reason.
    """

    deadline: Deadline
    work_s: float | None = None
    workers: int = 2
    seed: int = 0

    @classmethod
    def wall(cls, seconds: float, workers: int = 2) -> Budget:
        """A wall-clock budget (the service's requests)."""
        return cls(Deadline(seconds), None, workers)

    @classmethod
    def work(cls, work_s: float, workers: int = 2, cap_s: float = 600.0) -> Budget:
        """A deterministic budget of ``work_s`` work units, with a wall-clock safety cap."""
        return cls(Deadline(cap_s), work_s, workers)

    @property
    def deterministic(self) -> bool:
        return self.work_s is not None

    def part(self, num_parts: int, parts_left: int) -> Budget:
        """The budget of one of ``num_parts`` sequential parts, ``parts_left`` of them to go.

        Wall time: an equal share of what is left. Work: an equal share of the whole, fixed in
        advance, so no part's budget depends on how fast the earlier ones ran.
        """
        wall = Deadline(self.deadline.left() / max(1, parts_left))
        work = None if self.work_s is None else self.work_s / max(1, num_parts)
        return replace(self, deadline=wall, work_s=work)


def budget_of(deadline_s: float, workers: int, budget: Budget | None) -> Budget:
    """``budget`` when given, else a wall-clock budget of ``deadline_s`` seconds."""
    return budget if budget is not None else Budget.wall(deadline_s, workers)


def gap(objective: float | None, bound: float | None) -> float | None:
    """Relative gap (objective - bound) / objective, or None when either is unknown."""
    if objective is None or bound is None or objective <= 0:
        return None
    return (objective - bound) / objective


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
    """The solver's account of a solve. The bound is reported as found: never clipped (the
    portfolio refuses a bound above the objective, so the gap is never negative here)."""
    return SolverAccount(
        problem=problem,
        backend=backend,
        status=status,
        objective_cycles=objective_cycles,
        lower_bound_cycles=bound_cycles,
        gap=gap(objective_cycles, bound_cycles),
        wall_time_s=wall_time_s,
        fallback_reason=fallback_reason,
        predicted_makespan_cycles=(
            objective_cycles if predicted_makespan_cycles is None else predicted_makespan_cycles
        ),
    )
