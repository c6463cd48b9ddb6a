"""What every problem and backend shares: backends, the deadline, the account of a solve."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

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
