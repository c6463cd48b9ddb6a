"""Invariants of the executor over random placements built by the lowering (hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodel.executor import simulate
from hwmodel.plan import Plan, Residency, WeightSlice
from hwmodel.plan_builder import Shard, chain_layers
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.workload import Workload

HW = hardware_preset("gpu-ndp-4dimm")
MODEL = model_preset("olmoe-1b-7b").model_copy(update={"num_moe_layers": 3})
DEVICES = [d.id for d in HW.devices]
# Every memory holds every expert, so any placement is resident.
EVERYWHERE = Residency(by_memory={d.memory_id: (WeightSlice(),) for d in HW.devices})


@st.composite
def placements(draw: st.DrawFn) -> tuple[Workload, list[list[Shard]]]:
    num_layers = draw(st.integers(1, 3))
    num_tokens = draw(st.integers(1, 16))
    rows, shards = [], []
    for _ in range(num_layers):
        row = [0] * MODEL.num_routed_experts
        layer_shards = []
        for e in draw(st.lists(st.integers(0, 63), min_size=1, max_size=6, unique=True)):
            row[e] = draw(st.integers(1, num_tokens))
            degree = draw(st.integers(1, 4))
            cuts = sorted(
                draw(
                    st.lists(
                        st.integers(1, MODEL.expert_ffn_size - 1),
                        min_size=degree - 1,
                        max_size=degree - 1,
                        unique=True,
                    )
                )
            )
            bounds = [0, *cuts, MODEL.expert_ffn_size]
            devs = draw(
                st.lists(
                    st.sampled_from(DEVICES),
                    min_size=len(bounds) - 1,
                    max_size=len(bounds) - 1,
                    unique=True,
                )
            )
            layer_shards += [
                Shard(d, e, lo, hi, row[e])
                for d, lo, hi in zip(devs, bounds, bounds[1:], strict=False)
            ]
        rows.append(tuple(row))
        shards.append(layer_shards)
    wl = Workload(
        layer_ids=tuple(range(num_layers)), tokens_per_expert=tuple(rows), num_tokens=num_tokens
    )
    return wl, shards


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements())
def test_lowered_plans_are_valid_and_deterministic(
    case: tuple[Workload, list[list[Shard]]],
) -> None:
    wl, shards = case
    plan = chain_layers(HW, MODEL, wl, shards, attention=True)
    first = simulate(HW, MODEL, plan, wl, EVERYWHERE, include_timeline=True)
    assert first.valid, first.violations
    # Deterministic: the same plan gives the same timeline.
    assert simulate(HW, MODEL, plan, wl, EVERYWHERE, include_timeline=True) == first
    # No resource is busier than the makespan; no lane runs two tasks at once.
    for d in first.devices:
        assert d.busy_cycles <= first.makespan_cycles
    by_lane: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for s in first.timeline:
        by_lane.setdefault((s.resource_id, s.lane), []).append((s.start_cycle, s.end_cycle))
    for spans in by_lane.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


@settings(max_examples=40, deadline=None)
@given(placements(), st.data())
def test_dropping_a_shard_breaks_coverage(
    case: tuple[Workload, list[list[Shard]]], data: st.DataObject
) -> None:
    wl, shards = case
    plan = chain_layers(HW, MODEL, wl, shards)
    shard_ids = [t.id for t in plan.shards()]
    victim = data.draw(st.sampled_from(shard_ids))
    # Keep the graph well-formed: whoever waited on the victim now waits on nothing from it.
    tasks = tuple(
        t.model_copy(update={"after": tuple(a for a in t.after if a != victim)})
        for t in plan.tasks
        if t.id != victim
    )
    report = simulate(HW, MODEL, Plan(tasks=tasks), wl, EVERYWHERE)
    assert "coverage" in report.codes()
