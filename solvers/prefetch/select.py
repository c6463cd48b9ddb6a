"""Prefetch-set selection: which experts to stage into a device memory before the next layer.

Expert e is requested with probability ``p_e`` (from the dataset-free counts); staging it
saves ``saved_cycles_e`` (its demand load) when it is requested. Choose a set that maximizes
the expected saving, subject to (hard) the free memory and (hard) the link time the previous
layer's work leaves: staged transfers run back to back on the link and must end before the
layer starts. A two-constraint 0/1 knapsack.

Backends: ``greedy`` (by expected saving per byte, skipping what does not fit), ``cpsat``,
``milp``; ``auto`` is greedy then CP-SAT hinted, through the portfolio. Values are scaled to
integers for CP-SAT.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hwmodel.plan import Plan, TransferTask, WeightSlice
from solvers import portfolio
from solvers.common import Budget, budget_of


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
    """A prefetch set and its account.

    ``chosen``: indices into the problem's candidates; ``value``: its expected saving in
    cycles; ``value_bound``: a proven upper bound on the best set's expected saving (the gap
    between the two is what an exact backend could still win); ``status`` optimal | feasible |
    fallback; ``fallback_reason``; ``wall_time_s`` (reported, never deciding).
    """

    chosen: list[int]
    value: float
    status: str
    wall_time_s: float
    value_bound: float = 0.0
    fallback_reason: str | None = None


def select_greedy(problem: PrefetchProblem) -> list[int]:
    """By expected saving per byte (ties: more probable first), skipping what does not fit
    (``greedy_indices`` on the problem's candidates)."""
    return greedy_indices(
        np.asarray(problem.probability, dtype=np.float64),
        np.asarray(problem.saved_cycles, dtype=np.int64),
        np.asarray(problem.size_bytes, dtype=np.float64),
        np.asarray(problem.transfer_cycles, dtype=np.int64),
        problem.free_bytes,
        problem.link_budget_cycles,
    )


def greedy_indices(
    probability: np.ndarray,
    saved_cycles: np.ndarray,
    size_bytes: np.ndarray,
    transfer_cycles: np.ndarray,
    free_bytes: float,
    link_budget_cycles: int,
) -> list[int]:
    """The greedy prefetch set over candidates ``[n]`` (float probability and bytes, integer
    cycles), in the order it takes them: by expected saving per byte ``p x saved / max(bytes,
    1)`` descending, then probability descending, then index; a candidate of probability
    <= 0 never, one that does not fit the bytes or link cycles left skipped. One stable sort
    (numpy), then a scan that stops as soon as no later candidate fits either limit (the
    least bytes and cycles of the rest, precomputed), which on the decode loop's problems
    (a few chunks fit the link gap of many) is after a few candidates."""
    key = -probability * saved_cycles / np.maximum(size_bytes, 1.0)
    order = np.lexsort((-probability, key))  # stable: ties keep index order
    order = order[probability[order] > 0]
    if order.size == 0:
        return []
    cycles, size = transfer_cycles[order], size_bytes[order]
    # The least cycles and bytes from each position on: a rounded sum is monotone, so when
    # the least does not fit, nothing after it does.
    least_cycles = np.minimum.accumulate(cycles[::-1])[::-1].tolist()
    least_bytes = np.minimum.accumulate(size[::-1])[::-1].tolist()
    chosen: list[int] = []
    used_bytes, used_cycles = 0.0, 0
    room_bytes, room_cycles = free_bytes + 1e-6, link_budget_cycles
    for j, (i, b, c) in enumerate(zip(order.tolist(), size.tolist(), cycles.tolist(), strict=True)):
        if used_cycles + least_cycles[j] > room_cycles or used_bytes + least_bytes[j] > room_bytes:
            break
        if used_bytes + b <= room_bytes and used_cycles + c <= room_cycles:
            chosen.append(i)
            used_bytes += b
            used_cycles += c
    return chosen


def greedy_runs(
    runs: Sequence[tuple[float, Sequence[int], Sequence[int], Sequence[int], Sequence[int]]],
    size_bytes: float,
    free_bytes: float,
    link_budget_cycles: int,
) -> list[tuple[int, int]] | None:
    """``greedy_indices`` over candidates that come in runs, each run's candidates sharing
    one probability and every candidate ``size_bytes``, merged lazily: the scan stops after a
    few candidates, so only those are ever ranked.

    Args:
        runs: per run (probability, saved cycles ``[m]``, link cycles ``[m]``, the run's
            positions by saved cycles descending then position, and the least link cycles
            from each place of that order on, ``[m]``). The candidates' indices are the
            runs' positions laid end to end.

    Returns:
        The chosen (run, position) pairs in the order ``greedy_indices`` takes them, or None
        when two candidates of one run rank by saving per byte in a different order than by
        saved cycles (the rounded key ties two different savings: the caller must use
        ``greedy_indices``).
    """
    scale = max(size_bytes, 1.0)
    starts = [0] * len(runs)  # each run's first index among all candidates
    for r in range(1, len(runs)):
        starts[r] = starts[r - 1] + len(runs[r - 1][1])
    heap: list[tuple[float, float, int, int, int]] = []
    alive: list[int] = []  # runs with candidates left to rank
    for r, (p, saved, _, order, _) in enumerate(runs):
        if p > 0 and order:
            heap.append((-p * saved[order[0]] / scale, -p, starts[r] + order[0], r, 0))
            alive.append(r)
    heapq.heapify(heap)
    at = [0] * len(runs)  # each run's place in its order
    chosen: list[tuple[int, int]] = []
    used_bytes, used_cycles = 0.0, 0
    room_bytes, room_cycles = free_bytes + 1e-6, link_budget_cycles
    while heap:
        least = min(runs[r][4][at[r]] for r in alive)
        if used_cycles + least > room_cycles or used_bytes + size_bytes > room_bytes:
            break
        key, minus_p, index, r, k = heapq.heappop(heap)
        p, saved, cycles, order, _ = runs[r]
        j = order[k]
        if used_bytes + size_bytes <= room_bytes and used_cycles + cycles[j] <= room_cycles:
            chosen.append((r, j))
            used_bytes += size_bytes
            used_cycles += cycles[j]
        at[r] = k + 1
        if k + 1 < len(order):
            nj = order[k + 1]
            nkey = -p * saved[nj] / scale
            if nkey < key or (nkey == key and starts[r] + nj < index):
                return None  # the run's order is not the key's
            heapq.heappush(heap, (nkey, minus_p, starts[r] + nj, r, k + 1))
        else:
            alive.remove(r)
    return chosen


def _fractional(values: list[float], weights: list[float], room: float) -> float:
    """The fractional knapsack's value: an upper bound on any 0/1 set within ``room``."""
    total, left = 0.0, room
    for i in sorted(range(len(values)), key=lambda i: (-values[i] / max(weights[i], 1e-300), i)):
        if values[i] <= 0:
            continue
        if weights[i] <= left:
            total, left = total + values[i], left - weights[i]
        else:
            total += values[i] * max(left, 0.0) / weights[i]
            break
    return total


def value_upper_bound(problem: PrefetchProblem) -> float:
    """An upper bound on the expected saving of every feasible set: each constraint's
    fractional knapsack alone bounds it, so the smaller of the two does."""
    values = [p * s for p, s in zip(problem.probability, problem.saved_cycles, strict=True)]
    return min(
        _fractional(values, list(problem.size_bytes), problem.free_bytes + 1e-6),
        _fractional(
            values, [float(c) for c in problem.transfer_cycles], problem.link_budget_cycles
        ),
    )


def prefetch_portfolio(problem: PrefetchProblem) -> portfolio.Portfolio[list[int]]:
    """Prefetch selection as the portfolio sees it. The objective is minimized, so it is the
    expected demand-load cycles *left* (every candidate's expected saving minus the set's);
    its lower bound is that total minus ``value_upper_bound``."""
    total = sum(p * s for p, s in zip(problem.probability, problem.saved_cycles, strict=True))

    def cpsat(hint: list[int], budget: Budget) -> portfolio.Outcome[list[int]]:
        from solvers.prefetch.cpsat import select_cpsat

        chosen, status, value_bound = select_cpsat(problem, hint, budget)
        bound = None if value_bound is None else total - value_bound
        return portfolio.Outcome(chosen, status, bound)

    def milp(hint: list[int], budget: Budget) -> portfolio.Outcome[list[int]]:
        from solvers.prefetch.milp import select_milp

        chosen, status = select_milp(problem, budget)
        return portfolio.Outcome(chosen, status)

    return portfolio.Portfolio(
        name="prefetch",
        greedy=lambda: select_greedy(problem),
        objective=lambda chosen: total - problem.value(chosen),
        check=lambda chosen: (
            [] if problem.feasible(chosen) else ["prefetch: the set exceeds memory or link time"]
        ),
        bound=total - value_upper_bound(problem),
        exact={"cpsat": cpsat, "milp": milp},
        tolerance=1e-9 * max(1.0, total),
    )


def select(
    problem: PrefetchProblem,
    backend: str = "auto",
    deadline_s: float = 0.5,
    budget: Budget | None = None,
) -> PrefetchChoice:
    """The prefetch set through the portfolio under ``budget`` (default: ``deadline_s``
    seconds of wall clock): an exact backend's set is kept only when feasible and more
    valuable than greedy's."""
    budget = budget_of(deadline_s, 1, budget)
    res = portfolio.run(prefetch_portfolio(problem), backend, budget)
    total = sum(p * s for p, s in zip(problem.probability, problem.saved_cycles, strict=True))
    return PrefetchChoice(
        sorted(res.solution), problem.value(res.solution), res.status, res.wall_time_s,
        total - res.bound, res.fallback_reason,
    )  # fmt: skip


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
