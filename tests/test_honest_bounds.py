"""Honest bounds and honest objectives, for every problem and backend.

* A reported lower bound is valid (never above the true optimum, found here by brute force)
  and reported as found: never clipped to the objective. A bound above the objective is a bug
  and must fail loudly (``solvers.portfolio.InvalidBound``), never turn into "optimal".
* ``optimal`` only when the backend proved it or the bound meets the objective; then the
  objective is the brute-force optimum.
* Where CP-SAT or CBC returns an objective in cycles, it is the executor's simulated makespan
  of the same plan.

Every exact backend runs on a deterministic budget (CP-SAT ``max_deterministic_time``), so
the results do not depend on the machine's load.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, Plan, TransferTask
from solvers.common import Budget
from solvers.eplb.model import EplbProblem
from solvers.eplb.solve import solve_eplb
from solvers.ordering.graph import TaskGraph
from solvers.ordering.solve import solve_order
from solvers.placement.problem import PlacementInstance, PlacementProblem
from solvers.placement.solve import solve_layer
from solvers.prefetch.select import PrefetchProblem, select
from tests.solvers.test_ordering import best_of_every_order, graphs
from tests.solvers.test_placement import BOTH, brute_force, instances, ndp_hardware, problem
from tests.tiny import tiny_hardware, tiny_model

PLACEMENT_BACKENDS = ("greedy", "cpsat", "milp", "auto")
WORK_S = 5.0  # CP-SAT deterministic seconds; the small instances here are proven in far less


def work() -> Budget:
    return Budget.work(WORK_S, workers=1)


# ---------------------------------------------------------------- placement


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_placement_bounds_are_valid_and_unclipped(p: PlacementProblem) -> None:
    inst = PlacementInstance(p)
    if inst.feasible() is not None:
        return
    optimum, _ = brute_force(inst)
    analytic = inst.lower_bound()
    assert analytic <= optimum
    for backend in PLACEMENT_BACKENDS:
        acc = solve_layer(p, backend, budget=work()).account  # type: ignore[arg-type]
        assert acc.objective_cycles is not None and acc.lower_bound_cycles is not None
        bound, objective = acc.lower_bound_cycles, acc.objective_cycles
        assert bound <= optimum, (backend, "invalid bound", bound, optimum)
        assert bound >= analytic, (backend, "bound reported below the analytic one (clipped?)")
        assert objective >= optimum, backend
        if acc.status == "optimal":
            assert objective == optimum, (backend, "optimal claimed", objective, optimum)
        if backend == "greedy":
            # Greedy proves nothing: it is optimal only when the analytic bound meets it.
            assert (acc.status == "optimal") == (analytic == objective)
        else:
            # Every exact backend reaches the optimum on these instances within its budget.
            assert objective == optimum, (backend, objective, optimum)


@pytest.mark.parametrize("backend", PLACEMENT_BACKENDS)
def test_an_invalid_placement_bound_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A bound above every plan's makespan (as a doubled bound can be) is an error; clipping
    it to the objective would turn it into a false "optimal"."""
    from solvers.portfolio import InvalidBound

    p = problem(ndp_hardware(gpu_capacity=1), (10, 4, 0), BOTH, allow_loads=False)
    optimum, _ = brute_force(PlacementInstance(p))
    monkeypatch.setattr(PlacementInstance, "lower_bound", lambda self: 2 * optimum)
    with pytest.raises(InvalidBound):
        solve_layer(p, backend, budget=work())  # type: ignore[arg-type]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_cpsat_and_milp_objectives_are_the_executor_makespan(p: PlacementProblem) -> None:
    """The exact backends' own objective (not a re-prediction) equals the simulated makespan
    of the plan they return, exactly for CP-SAT and to the cycle for CBC (whose model keeps
    transfer times fractional: its objective rounds up to the makespan)."""
    from solvers.placement.cpsat import solve_cpsat
    from solvers.placement.greedy import solve_greedy
    from solvers.placement.milp import solve_milp

    inst = PlacementInstance(p)
    if inst.feasible() is not None or any(lk.num_lanes > 1 for lk in p.hardware.links):
        return
    hint = solve_greedy(inst)
    horizon = inst.predict(hint)
    out = solve_cpsat(inst, hint, horizon, work())
    assert out.assignment is not None and out.objective is not None
    report = inst.simulate(out.assignment)
    assert report.valid, report.violations
    assert out.objective == report.makespan_cycles
    res = solve_milp(inst, hint, horizon, work())
    assert res.assignment is not None and res.objective is not None
    report = inst.simulate(res.assignment)
    assert report.valid, report.violations
    assert math.ceil(res.objective - 1e-6) == report.makespan_cycles


# ---------------------------------------------------------------- ordering


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs().filter(lambda tasks: len(tasks) <= 6))
def test_ordering_bounds_are_valid_and_unclipped(tasks: list[ComputeTask | TransferTask]) -> None:
    """Against the best of every list order (small graphs): every backend's bound is at most
    the optimum and at least the graph's own bound, "optimal" only at the optimum, and the
    schedule's makespan is the executor's."""
    hw, model = tiny_hardware(num_lanes=2), tiny_model()
    analytic = TaskGraph.of(hw, model, tasks, 0).lower_bound()
    optimum = best_of_every_order(hw, model, tasks)
    for backend in ("greedy", "cpsat", "milp", "auto"):
        out = solve_order(hw, model, tasks, backend, budget=work())  # type: ignore[arg-type]
        acc = out.account
        assert acc.lower_bound_cycles is not None
        assert analytic <= acc.lower_bound_cycles <= optimum, backend
        assert out.makespan_cycles >= optimum
        if acc.status == "optimal":
            assert out.makespan_cycles == optimum, backend
        report = simulate(hw, model, Plan(tasks=tuple(out.tasks)))
        assert report.valid and report.makespan_cycles == out.makespan_cycles, backend
        if backend != "greedy":
            assert out.makespan_cycles == optimum, backend


# ---------------------------------------------------------------- EPLB


def eplb_brute_force(w: np.ndarray, num_gpus: int, slots: int) -> float:
    """The smallest largest GPU load over every replica count vector and every assignment of
    the replicas to GPUs (``slots`` each): tiny inputs only."""
    n, total = len(w), num_gpus * slots
    best = math.inf
    for cuts in itertools.combinations(range(1, total), n - 1):
        counts = np.diff([0, *cuts, total])
        items = sorted(np.repeat(w / counts, counts).tolist(), reverse=True)
        best = min(best, _best_packing(items, num_gpus, slots))
    return best


def _best_packing(items: list[float], num_gpus: int, slots: int) -> float:
    best = math.inf
    loads, counts = [0.0] * num_gpus, [0] * num_gpus

    def go(i: int) -> None:
        nonlocal best
        if max(loads) >= best:
            return
        if i == len(items):
            best = max(loads)
            return
        seen = set()
        for g in range(num_gpus):
            if counts[g] < slots and (loads[g], counts[g]) not in seen:
                seen.add((loads[g], counts[g]))
                loads[g] += items[i]
                counts[g] += 1
                go(i + 1)
                loads[g] -= items[i]
                counts[g] -= 1

    go(0)
    return best


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 6), min_size=4, max_size=4), st.sampled_from([(2, 3), (3, 2)]))
def test_eplb_bounds_are_valid_and_unclipped(weights: list[int], shape: tuple[int, int]) -> None:
    """Tie-heavy integer loads (0..6 on 4 experts), 6 slots on 2 or 3 GPUs."""
    num_gpus, slots = shape
    w = np.array([weights if sum(weights) else [1, 0, 0, 0]])
    optimum = eplb_brute_force(w[0].astype(float), num_gpus, slots)
    for backend in ("greedy", "cpsat", "auto"):
        sol = solve_eplb(EplbProblem(w, num_gpus * slots, 1, 1, num_gpus), backend, budget=work())  # type: ignore[arg-type]
        bound, got = float(sol.max_load_bound[0]), float(sol.max_load[0])
        assert bound <= optimum + 1e-9, (backend, bound, optimum)
        assert got >= optimum - 1e-9
        if sol.status == "optimal":
            assert got == pytest.approx(optimum), backend
        if backend != "greedy":
            assert got == pytest.approx(optimum), backend


def test_an_invalid_eplb_bound_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from solvers.eplb import solve as eplb_solve
    from solvers.portfolio import InvalidBound

    real = eplb_solve.trivial_bound
    monkeypatch.setattr(eplb_solve, "trivial_bound", lambda *a: 3 * real(*a))
    w = np.array([[6, 6, 3, 3, 3, 3, 2, 2]])
    with pytest.raises(InvalidBound):
        solve_eplb(EplbProblem(w, 10, 1, 1, 2), "auto", budget=work())


# ---------------------------------------------------------------- prefetch


@st.composite
def knapsacks(draw: st.DrawFn) -> PrefetchProblem:
    n = draw(st.integers(1, 7))
    ints = st.integers(1, 6)
    return PrefetchProblem(
        experts=tuple(range(n)),
        probability=tuple(draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])) for _ in range(n)),
        size_bytes=tuple(float(draw(ints)) for _ in range(n)),
        transfer_cycles=tuple(draw(ints) for _ in range(n)),
        saved_cycles=tuple(draw(st.integers(0, 40)) for _ in range(n)),
        free_bytes=float(draw(st.integers(0, 12))),
        link_budget_cycles=draw(st.integers(0, 12)),
    )


@settings(max_examples=30, deadline=None)
@given(knapsacks())
def test_prefetch_reports_a_valid_bound(p: PrefetchProblem) -> None:
    """Prefetch maximizes the expected saving: its bound is an upper bound, at least the
    brute-force optimum, never below the value it reports."""
    n = len(p.experts)
    optimum = max(
        p.value(list(c))
        for r in range(n + 1)
        for c in itertools.combinations(range(n), r)
        if p.feasible(list(c))
    )
    for backend in ("greedy", "cpsat", "milp", "auto"):
        got = select(p, backend, budget=work())
        assert p.feasible(got.chosen)
        assert got.value_bound >= optimum - 1e-9, (backend, got.value_bound, optimum)
        assert got.value <= optimum + 1e-9
        if got.status == "optimal":
            assert got.value == pytest.approx(optimum), backend
        if backend != "greedy":
            assert got.value == pytest.approx(optimum), backend
