"""Exact cases for placement behaviour that surviving mutants of ``solvers/placement/`` showed
no test pinned (``python -m tests.mutants --groups placement``; docs/mutants.json). Figures
from the tiny model and hardware of tests/tiny.py."""

from __future__ import annotations

from ortools.sat.python import cp_model

from hwmodel.plan import Residency, WeightSlice
from solvers.common import Budget
from solvers.placement.cpsat import _complete_hint
from solvers.placement.memo import PlanMemo, shape
from solvers.placement.problem import Assignment, PlacementInstance, PlacementProblem, _merged
from solvers.placement.solve import solve_layer
from tests.tiny import tiny_hardware, tiny_model


def _instance(allow_loads: bool) -> PlacementInstance:
    """Layer 0, 5 tokens on expert 0, which only 'a' holds (one granule)."""
    residency = Residency(by_memory={"a_mem": (WeightSlice(layer=0, expert=0),)})
    problem = PlacementProblem(
        tiny_hardware(), tiny_model(), 0, (5, 0), 5, residency, num_granules=1,
        allow_loads=allow_loads,
    )  # fmt: skip
    return PlacementInstance(problem)


def test_the_memo_tells_layers_apart_by_their_load_pieces() -> None:
    """With loads allowed, expert 0 comes home as one piece from 'a': its 3,000 bytes over the
    bus (1 GB/s, 1 us) take 1,000 + 3,000 = 4,000 cycles. Without, it has no load piece: the
    two layers are different problems (a plan that loads the expert is wrong for the second),
    so the memo solves both instead of reusing the first's plan."""
    with_loads, without = _instance(True), _instance(False)
    assert with_loads.load_parts == {0: [("a", 0, 10, 4000)]}
    assert without.load_parts == {}
    # 5 tokens, 1 granule, room for 6 experts at home (20,000 // 3,000), 1 expert.
    assert shape(with_loads)[0] == (5, 1, 6, 1, ((5, (("a",),), (("a", 0, 10, 4000),)),))
    assert shape(without)[0] == (5, 1, 6, 1, ((5, (("a",),), None),))
    memo = PlanMemo(lambda inst: Assignment(runs={0: (("a", 0, 1),)}))
    memo.assignment(with_loads)
    memo.assignment(without)
    memo.assignment(_instance(False))
    assert (memo.solved, memo.reused) == (2, 1)


def test_complete_hint_turns_a_partial_hint_into_a_full_one() -> None:
    """x hinted 3 and y = 2x + 1: fixing the hinted x derives y = 7, and both become the hint."""
    m = cp_model.CpModel()
    x = m.new_int_var(0, 10, "x")
    y = m.new_int_var(0, 30, "y")
    m.add(y == 2 * x + 1)
    m.add_hint(x, 3)
    _complete_hint(m, Budget.work(1.0, workers=1))
    hint = m.proto.solution_hint
    assert dict(zip(hint.vars, hint.values, strict=True)) == {x.index: 3, y.index: 7}


def test_merged_joins_overlapping_and_touching_pieces() -> None:
    assert _merged([(0, 2), (2, 5), (4, 6), (7, 9)]) == [(0, 6), (7, 9)]
    assert _merged([]) == []


def test_solve_layer_defaults_to_the_auto_backend() -> None:
    sol = solve_layer(_instance(True).problem, budget=Budget.work(1.0, workers=1))
    assert sol.account.backend == "auto"
    assert sol.assignment is not None


def test_slices_of_other_layers_do_not_hide_this_layers_slices() -> None:
    """'a' lists layer 1's expert 0 before layer 0's: layer 0 still finds expert 0 on 'a'."""
    residency = Residency(
        by_memory={"a_mem": (WeightSlice(layer=1, expert=0), WeightSlice(layer=0, expert=0))}
    )
    problem = PlacementProblem(
        tiny_hardware(), tiny_model(), 0, (5, 0), 5, residency, num_granules=1
    )
    assert PlacementInstance(problem).holders == {0: [["a"]]}
