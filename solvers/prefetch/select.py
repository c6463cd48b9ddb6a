"""Prefetch-set selection: which experts to stage into a device memory before the next layer.

Expert e is requested with probability ``p_e`` (from the dataset-free counts); staging it
saves ``saved_cycles_e`` (its demand load) when it is requested. Choose a set that maximizes
the expected saving, subject to (hard) the free memory and (hard) the link time the previous
layer's work leaves: staged transfers run back to back on the link and must end before the
layer starts. A two-constraint 0/1 knapsack.

Backends: ``greedy`` (by expected saving per byte, skipping what does not fit), ``cpsat``,
``milp``; ``auto`` is greedy then CP-SAT hinted. Values are scaled to integers for CP-SAT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hwmodel.plan import Plan, TransferTask, WeightSlice


@dataclass(frozen=True)
class PrefetchProblem:
    """Candidates ``[n]``: request probability, bytes, link cycles to stage, cycles saved."""

    experts: tuple[int, ...]
    probability: tuple[float, ...]
    size_bytes: tuple[float, ...]
    transfer_cycles: tuple[int, ...]
    saved_cycles: tuple[int, ...]
    free_bytes: float
    link_budget_cycles: int

    def value(self, chosen: list[int]) -> float:
        return sum(self.probability[i] * self.saved_cycles[i] for i in chosen)

    def feasible(self, chosen: list[int]) -> bool:
        return (
            sum(self.size_bytes[i] for i in chosen) <= self.free_bytes + 1e-6
            and sum(self.transfer_cycles[i] for i in chosen) <= self.link_budget_cycles
        )


@dataclass
class PrefetchChoice:
    chosen: list[int]  # indices into the problem's candidates
    value: float
    status: str
    wall_time_s: float


def select_greedy(problem: PrefetchProblem) -> list[int]:
    """By expected saving per byte (ties: more probable first), skipping what does not fit."""
    n = len(problem.experts)
    order = sorted(
        range(n),
        key=lambda i: (
            -problem.probability[i] * problem.saved_cycles[i] / max(problem.size_bytes[i], 1.0),
            -problem.probability[i],
            i,
        ),
    )
    chosen: list[int] = []
    used_bytes, used_cycles = 0.0, 0
    for i in order:
        if problem.probability[i] <= 0:
            continue
        if (
            used_bytes + problem.size_bytes[i] <= problem.free_bytes + 1e-6
            and used_cycles + problem.transfer_cycles[i] <= problem.link_budget_cycles
        ):
            chosen.append(i)
            used_bytes += problem.size_bytes[i]
            used_cycles += problem.transfer_cycles[i]
    return chosen


def select(
    problem: PrefetchProblem, backend: str = "auto", deadline_s: float = 0.5
) -> PrefetchChoice:
    """The prefetch set of ``backend``; an exact backend's set is kept only when feasible and
    at least as valuable as greedy's."""
    started = time.perf_counter()
    greedy = select_greedy(problem)
    best, status = greedy, "feasible"
    if backend in ("cpsat", "auto"):
        from solvers.prefetch.cpsat import select_cpsat

        chosen, status_exact = select_cpsat(problem, greedy, deadline_s)
    elif backend == "milp":
        from solvers.prefetch.milp import select_milp

        chosen, status_exact = select_milp(problem, deadline_s)
    else:
        chosen, status_exact = greedy, "feasible"
    if problem.feasible(chosen) and problem.value(chosen) >= problem.value(greedy) - 1e-9:
        best, status = chosen, status_exact
    return PrefetchChoice(sorted(best), problem.value(best), status, time.perf_counter() - started)


def staging_plan(
    problem: PrefetchProblem,
    chosen: list[int],
    layer: int,
    link_id: str,
    src_device_id: str,
    dst_device_id: str,
) -> Plan:
    """The staging transfers of a prefetch set, one after another on the link (for the executor)."""
    tasks = [
        TransferTask(
            id=f"L{layer}.prefetch.e{problem.experts[i]}", link_id=link_id,
            src_device_id=src_device_id, dst_device_id=dst_device_id, payload="weights",
            layer=layer, weights=WeightSlice(layer=layer, expert=problem.experts[i]),
            purpose="prefetch",
        )
        for i in chosen
    ]  # fmt: skip
    return Plan(tasks=tuple(tasks))
