"""Looked-up instance tables (``instance_of``) and the timeline's running end: the same
figures as building them afresh."""

from __future__ import annotations

from dataclasses import replace

from hwmodel.plan import ComputeTask
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import gpu_ndp, model_preset
from solvers import timing
from solvers.common import Budget
from solvers.placement.problem import PlacementInstance, PlacementProblem, instance_of
from solvers.placement.solve import solve_layer


def problem() -> PlacementProblem:
    hw, model = gpu_ndp(4), model_preset("deepseek-v2-lite")
    tokens = [0] * model.num_routed_experts
    for e, t in ((1, 3), (5, 1), (9, 2), (40, 1)):
        tokens[e] = t
    residency = layout_residency(hw, model, "striped", cached_experts=[1, 2])
    return PlacementProblem(hw, model, 3, tuple(tokens), 4, residency, num_granules=4)


def test_a_problem_asked_again_gets_its_instance_and_the_same_plan() -> None:
    p = problem()
    first = solve_layer(p, "greedy", budget=Budget.work(0.0))
    again = solve_layer(p, "greedy", budget=Budget.work(0.0))
    assert again.instance is first.instance
    assert again.assignment == first.assignment
    assert again.account.objective_cycles == first.account.objective_cycles
    fresh = PlacementInstance(p)
    assert fresh.lower_bound() == first.instance.lower_bound()
    assert first.account.lower_bound_cycles == fresh.lower_bound()


def test_other_values_or_objects_get_other_instances() -> None:
    p = problem()
    other_tokens = replace(p, tokens_per_expert=(2, *p.tokens_per_expert[1:]))
    assert instance_of(other_tokens) is not instance_of(p)
    assert instance_of(other_tokens).experts == [0, 1, 5, 9, 40]
    # An equal residency built again is another object: matched by identity, not looked up.
    twin = replace(p, residency=p.residency.model_copy(deep=True))
    assert instance_of(twin) is not instance_of(p)
    assert instance_of(replace(p, home_reserved_bytes=1e9)).home_free_bytes == (
        instance_of(p).home_free_bytes - 1e9
    )


def test_timeline_end_follows_every_add_and_a_task_added_again() -> None:
    hw, model = gpu_ndp(4), model_preset("deepseek-v2-lite")
    line = timing.Timeline(hw, model, start_cycle=7)
    assert line.end == 7
    a = ComputeTask(id="a", device_id="gpu", op="expert", layer=0, expert=0, num_tokens=1,
                    ffn_end=model.expert_ffn_size)  # fmt: skip
    line.add([a])
    assert line.end == max(e for _, e in line.times.values()) > 7
    old_end = line.end
    # The same id again on an idle unit, shorter: its times replace the first ones, and the
    # end falls back to the latest task still there.
    small = a.model_copy(update={"device_id": "ndp0", "ffn_end": 1})
    line.add([small])
    assert line.end == max(e for _, e in line.times.values()) < old_end
