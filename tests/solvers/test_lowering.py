"""The lowering's typed records: the emission-order contract, and that nothing downstream
depends on how task ids are spelled (renaming every id the lowering makes changes no plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import solvers.decode_loop
from hwmodel import plan_builder
from hwmodel.executor import simulate
from hwmodel.plan import Plan
from hwmodel.plan_builder import LoweredLayer, layout_residency
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft
from solvers.decode_loop import DecodeRun, LoopConfig
from solvers.placement.greedy import solve_greedy
from solvers.placement.problem import PlacementInstance, PlacementProblem


class RenamedIds(plan_builder.TaskIds):
    """Every id the lowering makes, spelled differently."""

    @staticmethod
    def prefix(layer: int, micro_batch: int) -> str:
        return f"layer{layer}/m{micro_batch}"

    @staticmethod
    def attention(p: str) -> str:
        return f"{p}/A"

    @staticmethod
    def load(p: str, expert: int, ffn_start: int) -> str:
        return f"{p}/W{expert}@{ffn_start}"

    @staticmethod
    def dispatch(p: str, device_id: str) -> str:
        return f"{p}/D>{device_id}"

    @staticmethod
    def shard(p: str, expert: int, device_id: str, ffn_start: int) -> str:
        return f"{p}/S{expert}:{device_id}:{ffn_start}"

    @staticmethod
    def gather(p: str, device_id: str) -> str:
        return f"{p}/G<{device_id}"

    @staticmethod
    def reduce(p: str) -> str:
        return f"{p}/R"


def _instance(cached: list[int], tokens: list[int]) -> PlacementInstance:
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    residency = layout_residency(hw, model, "striped", cached_experts=cached, num_granules=4)
    row = [0] * model.num_routed_experts
    for e in tokens:
        row[e] += 1
    return PlacementInstance(PlacementProblem(hw, model, 3, tuple(row), 4, residency, 4))


def _check_contract(lw: LoweredLayer, home: str) -> None:
    tasks = lw.tasks()
    assert tasks == [
        *([lw.attention] if lw.attention else []), *lw.loads, *lw.dispatches, *lw.shards,
        *lw.gathers, *([lw.reduce] if lw.reduce else []),
    ]  # fmt: skip
    seen: set[str] = {"before"}  # what the layer waits on from outside
    for t in tasks:  # a data-flow order: every task after the tasks it waits on
        assert set(t.after) <= seen, t.id
        seen.add(t.id)
    assert all(t.payload == "weights" and t.dst_device_id == home for t in lw.loads)
    assert all(t.payload == "activations" and t.src_device_id == home for t in lw.dispatches)
    assert all(t.op == "expert" for t in lw.shards)
    assert all(t.payload == "partial_sums" and t.dst_device_id == home for t in lw.gathers)
    assert [t.dst_device_id for t in lw.dispatches] == [t.src_device_id for t in lw.gathers]
    # Home shards of loaded experts come last among the home shards, in load order.
    loaded = list(dict.fromkeys(t.weights.expert for t in lw.loads if t.weights))
    home_shards = [s.expert for s in lw.shards if s.device_id == home]
    tail = [e for e in home_shards if e in loaded]
    assert home_shards[len(home_shards) - len(tail) :] == tail
    assert tail == sorted(tail, key=loaded.index)
    for e in loaded:  # a loaded expert's home shard waits for every piece of its load
        for s in lw.shards_of(e):
            if s.device_id == home:
                assert {ld.id for ld in lw.loads_of(e)} <= set(s.after)
    assert lw.reduce is not None and lw.waits == (lw.reduce.id,)
    assert set(lw.reduce.after) == {g.id for g in lw.gathers} | {
        s.id for s in lw.shards if s.device_id == home
    }


@pytest.mark.parametrize(
    ("cached", "tokens", "loaded"),
    [([0, 1], [0, 5, 9, 9, 1, 30], ()), ([2], [2, 7, 7, 8, 40, 41], (7, 40))],
)
def test_the_emission_order_contract(
    cached: list[int], tokens: list[int], loaded: tuple[int, ...]
) -> None:
    inst = _instance(cached, tokens)
    a = solve_greedy(inst)
    a = type(a)(runs={e: r for e, r in a.runs.items() if e not in loaded}, loaded=loaded)
    for e in loaded:
        assert e in inst.load_parts
    assert not inst.check(a)
    lw = inst.lowered(a, ("before",), attention=True)
    _check_contract(lw, inst.home)
    assert lw.attention is not None and lw.attention.after == ("before",)
    assert len(lw.loads) == sum(len(inst.load_parts[e]) for e in loaded)
    tasks, waits = inst.tasks(a, ("before",), attention=True)
    assert tasks == lw.tasks() and waits == list(lw.waits)


def _canonical(plan: Plan) -> list[tuple[Any, ...]]:
    """The plan with every id replaced by its task's position: what a renaming must keep."""
    index = {t.id: i for i, t in enumerate(plan.tasks)}
    out = []
    for t in plan.tasks:
        fields = t.model_dump(exclude={"id", "after"})
        out.append((tuple(sorted(index[a] for a in t.after)), repr(sorted(fields.items()))))
    return out


def _decode_plans(traces: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """Every step's simulated plan and record of a short real decode run on 4 NDP-DIMMs
    (striped weights: dispatches and gathers) with a small cache (loads and evictions) and
    prefetch."""
    plans: list[list[tuple[Any, ...]]] = []

    def capture(hardware: Any, model: Any, plan: Plan, *args: Any, **kwargs: Any) -> Any:
        plans.append(_canonical(plan))
        return simulate(hardware, model, plan, *args, **kwargs)

    monkeypatch.setattr(solvers.decode_loop, "simulate", capture)
    trace = load_esft(traces / ESFT_FILES["law"])
    start = trace.sequences()[0][0]
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    base = layout_residency(hw, model, "striped", num_granules=4)
    records = []
    for dispatch in ("solver", "demand"):
        cfg = LoopConfig(capacity_experts=8, dispatch=dispatch)  # type: ignore[arg-type]
        run = DecodeRun(hw, model, base, cfg, trace, slice(start, start + 16), slice(20, 24))
        result = run.run()
        assert result.violations == 0
        records += [
            (s.latency_s, s.predicted_s, s.bytes_moved, s.weight_bytes) for s in result.steps
        ]
        assert result.stats.loads > 0 or dispatch == "solver"
    return plans, records


def test_renaming_every_lowered_id_changes_no_plan(
    traces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans, records = _decode_plans(traces, monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(plan_builder, "IDS", RenamedIds())
        renamed_plans, renamed_records = _decode_plans(traces, m)
    assert any(  # the run did lower gathers, loads and evictions
        "partial_sums" in f for plan in plans for _, f in plan
    )
    assert renamed_records == records
    assert renamed_plans == plans
