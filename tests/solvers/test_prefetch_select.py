"""Prefetch-set selection: a knapsack with memory and link-time limits, optimum by brute force
in the test, and the staging plan checked by the executor."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel import costs
from hwmodel.executor import simulate
from hwmodel.plan import Residency, WeightSlice
from hwmodel.presets import hardware_preset, model_preset
from solvers.common import Budget
from solvers.decode_tables import ranked
from solvers.prefetch.select import (
    PrefetchProblem,
    greedy_runs,
    select,
    select_greedy,
    staging_plan,
)


def brute(p: PrefetchProblem) -> float:
    n = len(p.experts)
    return max(
        p.value(list(c))
        for r in range(n + 1)
        for c in itertools.combinations(range(n), r)
        if p.feasible(list(c))
    )


def test_link_time_binds_before_memory() -> None:
    """Room for all three, but the link can carry only 10 cycles: experts 0 (6 cycles, worth
    0.5 x 100) and 2 (4 cycles, 0.4 x 100) beat 1 alone (8 cycles, 0.8 x 100): 90 vs 80."""
    p = PrefetchProblem(
        (0, 1, 2), (0.5, 0.8, 0.4), (1.0, 1.0, 1.0), (6, 8, 4), (100, 100, 100), 3.0, 10
    )
    for backend in ("greedy", "cpsat", "milp", "auto"):
        choice = select(p, backend, budget=Budget.work(2.0))
        assert p.feasible(choice.chosen)
        if backend != "greedy":
            assert choice.chosen == [0, 2] and choice.value == pytest.approx(90)


@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(1, 50), st.integers(1, 40), st.integers(0, 100)),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 120),
    st.integers(0, 100),
)
@settings(max_examples=60, deadline=None)
def test_exact_backends_reach_the_optimum(
    items: list[tuple[float, int, int, int]], room: int, link: int
) -> None:
    p = PrefetchProblem(
        tuple(range(len(items))), tuple(i[0] for i in items), tuple(float(i[1]) for i in items),
        tuple(i[2] for i in items), tuple(i[3] for i in items), float(room), link,
    )  # fmt: skip
    best = brute(p)
    for backend in ("cpsat", "milp"):
        choice = select(p, backend, budget=Budget.work(2.0))
        assert p.feasible(choice.chosen)
        # Both backends resolve values to a millionth of the largest; MILP's objective
        # tolerance (1e-9) floors that.
        largest = max(pr * sv for pr, _, _, sv in items)
        assert choice.value == pytest.approx(best, abs=1e-6 * largest * len(items) + 1e-9), (
            backend, p, choice,
        )  # fmt: skip
    assert select(p, "greedy", budget=Budget.work(2.0)).value <= best + 1e-9


def test_staging_plan_fits_memory_and_link_on_the_executor() -> None:
    """Stage DeepSeek-V2-Lite experts into the RTX 4090's expert cache over PCIe Gen4 before a
    layer: the executor sees no capacity violation and the transfers end within the budget."""
    hw, model = hardware_preset("offload-rtx4090-pcie4"), model_preset("deepseek-v2-lite")
    link = next(lk for lk in hw.links if lk.id == "pcie_h2d")
    cycles = costs.to_cycles(costs.transfer_s(link, model.expert_bytes()), hw.clock_hz)
    n = 12
    p = PrefetchProblem(
        tuple(range(n)), tuple(1.0 / (1 + i) for i in range(n)), (model.expert_bytes(),) * n,
        (cycles,) * n, (cycles,) * n, 5 * model.expert_bytes(), 4 * cycles,
    )  # fmt: skip
    choice = select(p, "auto", budget=Budget.work(2.0))
    assert len(choice.chosen) == 4  # the link budget binds (5 would fit in memory)
    plan = staging_plan(p, choice.chosen, 0, "pcie_h2d", "cpu", "gpu")
    residency = Residency(by_memory={"host_dram": (WeightSlice(),)})
    report = simulate(hw, model, plan, residency=residency)
    assert report.valid, report.violations
    assert report.makespan_cycles <= p.link_budget_cycles
    assert report.peak_memory_bytes["gpu_vram"] == 4 * model.expert_bytes()


def reference_greedy(problem: PrefetchProblem) -> list[int]:
    """The greedy as it was written before ``greedy_indices`` (Python keys, one tuple sort,
    a scan of every candidate): the specification the numpy version must equal."""
    keys = [
        (-p * saved / max(size, 1.0), -p, i)
        for i, (p, saved, size) in enumerate(
            zip(problem.probability, problem.saved_cycles, problem.size_bytes, strict=True)
        )
    ]
    keys.sort()
    chosen: list[int] = []
    used_bytes, used_cycles = 0.0, 0
    room_bytes, room_cycles = problem.free_bytes + 1e-6, problem.link_budget_cycles
    for _, minus_p, i in keys:
        if minus_p >= 0:
            continue
        size, cycles = problem.size_bytes[i], problem.transfer_cycles[i]
        if used_bytes + size <= room_bytes and used_cycles + cycles <= room_cycles:
            chosen.append(i)
            used_bytes += size
            used_cycles += cycles
    return chosen


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0]),  # few values: many ties
            st.sampled_from([0.5, 1.0, 2.0, 3.0]),
            st.integers(1, 12),
            st.integers(0, 6),
        ),
        min_size=0,
        max_size=40,
    ),
    st.floats(0, 60),
    st.integers(0, 80),
)
@settings(max_examples=300, deadline=None)
def test_numpy_greedy_is_the_reference_greedy(
    items: list[tuple[float, float, int, int]], room: float, link: int
) -> None:
    """Same set in the same order, ties (equal saving per byte, equal probability) included."""
    p = PrefetchProblem(
        tuple(range(len(items))), tuple(i[0] for i in items), tuple(i[1] for i in items),
        tuple(i[2] for i in items), tuple(i[3] for i in items), room, link,
    )  # fmt: skip
    assert select_greedy(p) == reference_greedy(p)


def flat(
    runs: list[tuple[float, list[int], list[int], list[int], list[int]]], size: float,
    free: float, link: int,
) -> tuple[PrefetchProblem, list[tuple[int, int]]]:  # fmt: skip
    """The runs' candidates laid end to end as a problem, and each one's (run, position)."""
    where = [(r, j) for r, run in enumerate(runs) for j in range(len(run[1]))]
    problem = PrefetchProblem(
        tuple(range(len(where))), tuple(runs[r][0] for r, _ in where), (size,) * len(where),
        tuple(runs[r][2][j] for r, j in where), tuple(runs[r][1][j] for r, j in where),
        free, link,
    )  # fmt: skip
    return problem, where


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0]),
            st.lists(st.tuples(st.integers(0, 6), st.integers(1, 12)), min_size=1, max_size=6),
        ),
        max_size=8,
    ),
    st.sampled_from([0.5, 1.0, 3.0]),
    st.floats(0, 40),
    st.integers(0, 60),
)
@settings(max_examples=300, deadline=None)
def test_lazy_runs_greedy_is_the_reference_greedy(
    raw: list[tuple[float, list[tuple[int, int]]]], size: float, room: float, link: int
) -> None:
    """``greedy_runs`` takes the same candidates in the same order as the reference greedy
    on the runs laid end to end (ties of saving, probability and position included)."""
    runs = []
    for p, chunks in raw:
        saved, cycles = [c[0] for c in chunks], [c[1] for c in chunks]
        runs.append((p, saved, cycles, *ranked(saved, cycles)))
    problem, where = flat(runs, size, room, link)
    got = greedy_runs(runs, size, room, link)
    assert got is not None  # small integer savings never tie under one probability
    assert got == [where[i] for i in reference_greedy(problem)]


def test_decode_loop_knapsacks_are_the_reference_greedy(
    traces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every prefetch knapsack of 3 real law decode steps (moesched, 4 NDP-DIMMs): the loop's
    lazily ranked set is the reference greedy's on its chunks laid end to end, and most
    choose something under a binding link budget."""
    from bench.ndp import decode_point
    from solvers import decode_loop

    seen: list[int] = []

    def check(
        runs: list[tuple[float, list[int], list[int], list[int], list[int]]], size: float,
        free: float, budget: int,
    ) -> list[tuple[int, int]] | None:  # fmt: skip
        got = greedy_runs(runs, size, free, budget)
        problem, where = flat(runs, size, free, budget)
        assert got is not None and got == [where[i] for i in reference_greedy(problem)]
        seen.append(len(got))
        return got

    monkeypatch.setattr(decode_loop, "greedy_runs", check)
    decode_point(hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", "moesched", 3)
    assert len(seen) > 100 and sum(1 for n in seen if n > 0) > len(seen) / 2
