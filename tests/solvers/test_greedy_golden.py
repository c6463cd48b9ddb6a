"""Greedy placement keeps today's plans on real-trace layers (the golden figures of issue #20).

Speed work on the greedy and on the instance tables must change no plan: each pinned layer's
assignment and predicted makespan are compared exactly, and the greedy through
``solve_layer`` (the path the service and the benchmarks take) reports the same makespan.
"""

from __future__ import annotations

import json

import pytest

from solvers.common import Budget
from solvers.placement.greedy import exact_estimate, solve_greedy, solve_greedy_estimated
from solvers.placement.problem import PlacementInstance
from solvers.placement.solve import solve_layer
from tests.solvers.greedy_golden_cases import FIXTURE, cases, to_json

GOLDEN = json.loads(FIXTURE.read_text())
CASES = cases()


def test_every_case_is_pinned() -> None:
    assert sorted(name for name, _ in CASES) == sorted(GOLDEN)


@pytest.mark.parametrize(("name", "problem"), CASES, ids=[n for n, _ in CASES])
def test_greedy_plan_is_the_pinned_one(name: str, problem: object) -> None:
    inst = PlacementInstance(problem)  # type: ignore[arg-type]
    a = solve_greedy(inst)
    assert to_json(a, inst.predict(a)) == GOLDEN[name]
    sol = solve_layer(problem, "greedy", budget=Budget.work(0.0))  # type: ignore[arg-type]
    assert sol.assignment == a
    assert sol.account.objective_cycles == GOLDEN[name]["makespan_cycles"]


@pytest.mark.parametrize(("name", "problem"), CASES, ids=[n for n, _ in CASES])
def test_greedy_estimate_is_the_prediction(name: str, problem: object) -> None:
    """On single-lane links the greedy's own estimate is exact, so ``solve_layer`` may skip
    the prediction of the greedy's plan (it reports the estimate as the objective)."""
    inst = PlacementInstance(problem)  # type: ignore[arg-type]
    assert exact_estimate(inst)
    a, estimate = solve_greedy_estimated(inst)
    assert estimate == inst.predict(a) == GOLDEN[name]["makespan_cycles"]
