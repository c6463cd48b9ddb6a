"""The decode loop's DIMM work: the placement refinement (``LoopConfig.refine_placement``) on
a layer of DeepSeek-V2-Lite on the 4-DIMM GPU-NDP preset worked by hand and on real routing
through the executor; the GPU's shards in the order their weights arrive; a device's shards
of different columns as one grouped GEMM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwmodel import costs
from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import RoutingTrace, Workload
from solvers.decode_loop import AnyTask, DecodeRun, Dispatch, LoopConfig, LoopResult, _grouped
from solvers.placement.greedy import solve_greedy
from solvers.placement.problem import Assignment, PlacementInstance, PlacementProblem
from tests.tiny import tiny_hardware, tiny_model

ROUTED = [14, 19, 21, 22, 25, 60]


def law_layer(dispatch: Dispatch = "solver", batch: int = 1) -> tuple[DecodeRun, PlacementInstance]:
    """Law's step 10, layer 11 (``bench ndp``): experts 14, 19, 21 and 25 cached on the GPU,
    22 a line being staged (its granules 0-7, the stripes of DIMMs 0 and 1, already there),
    60 absent; 16 granules striped over the 4 DIMMs (4 each); ``batch`` tokens each."""
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    base = layout_residency(hw, model, "striped", num_granules=16)
    ids = np.tile(np.array(ROUTED, dtype=np.int16), (4, model.num_moe_layers, 1))
    trace = RoutingTrace(
        "law-like", np.arange(model.num_moe_layers), ids, None, np.zeros(4, dtype=np.int32),
        model.num_routed_experts,
    )  # fmt: skip
    cfg = LoopConfig(capacity_experts=0, global_lines=64, num_granules=16, dispatch=dispatch,
                     refine_placement=True)  # fmt: skip
    run = DecodeRun(hw, model, base, cfg, trace, slice(0, 2), slice(2, 4), in_flight=64)
    lines = [WeightSlice(layer=11, expert=e) for e in (14, 19, 21, 25)]
    lines.append(WeightSlice(layer=11, expert=22, ffn_start=0, ffn_end=704))
    by_memory = dict(base.by_memory)
    by_memory["gpu_vram"] = tuple(lines)
    tokens = tuple(batch * int(e in ROUTED) for e in range(model.num_routed_experts))
    problem = PlacementProblem(run.hardware, model, 11, tokens, batch,
                               Residency(by_memory=by_memory), 16)  # fmt: skip
    return run, PlacementInstance(problem)


def test_refine_by_hand() -> None:
    """One token on ``law_layer``, per the cost model: a whole expert on the GPU 26.21 us (5 us
    of it the launch), a DIMM's 4-granule stripe of one 65.80 us (1 us launch), the shared
    experts 47.42 us, the activations' trip to a DIMM and back 1.08 + 1 + 1.08 = 3.16 us, a
    missing stripe's load 87.51 us over PCIe.

    The greedy runs the 4 cached experts on the GPU, 60 on its stripes, and loads 22's
    missing stripes: the GPU's resident work 47.42 + 4 x 26.21 - 3 x 5 (one grouped GEMM)
    = 137.27 us, then 22 after its loads (2 x 87.51 = 175.02) + 26.21 = 201.23 us; the DIMMs
    3.16 + 65.80 = 68.96. Refined, 22 runs on its four stripes, grouped with 60's (one launch
    a DIMM): 3.16 + 65.80 + 64.80 = 133.76 us a DIMM, the GPU 137.27: 137.27 us. (Its staged
    granules 0-7 on the GPU instead, in its grouped GEMM: 137.27 + 21.21 / 2 = 147.88, no
    better.) Both are
    placements, and the layer's timeline without the shared experts agrees (206.26 -> 142.03
    us)."""
    run, inst = law_layer()
    greedy = solve_greedy(inst)
    assert greedy.loaded == (22,) and greedy.runs[60] == (
        ("ndp0", 0, 4), ("ndp1", 4, 8), ("ndp2", 8, 12), ("ndp3", 12, 16),
    )  # fmt: skip
    refined = run._refine(inst, greedy)
    assert refined.loaded == () and refined.runs[22] == refined.runs[60]
    assert all(refined.runs[e] == (("gpu", 0, 16),) for e in (14, 19, 21, 25))
    got = [run._window_s(inst, dict(a.runs), set(a.loaded)) * 1e6 for a in (greedy, refined)]
    assert [round(x, 2) for x in got] == [201.23, 137.27]
    staged = dict(refined.runs)
    staged[22] = (("gpu", 0, 8), ("ndp2", 8, 12), ("ndp3", 12, 16))
    assert round(run._window_s(inst, staged, set()) * 1e6, 2) == 147.88
    assert inst.check(greedy) == inst.check(refined) == []
    assert [round(inst.predict(a) / 1e3, 2) for a in (greedy, refined)] == [206.26, 142.03]
    assert run._solve(inst) == refined  # what the decode loop solves with the flag on


def test_only_the_solver_dispatch_is_refined() -> None:
    """The baselines' placements stay theirs (here GPU-only offloading: every absent expert
    loaded, though its stripes would run sooner on the DIMMs)."""
    run, inst = law_layer("demand")
    assert run._solve(inst) == Assignment(
        runs={e: (("gpu", 0, 16),) for e in (14, 19, 21, 25)}, loaded=(22, 60)
    )


def law_decode(traces: Path, **flags: bool) -> LoopResult:
    """DeepSeek-V2-Lite on the 4-DIMM preset, 16 granules striped, 8 real ESFT law decode
    tokens after a 64-token prompt, 260 global cache lines, the kernels and prefetch of
    ``bench ndp``: every step passes the executor with prediction = simulation and the
    bound below it."""
    from hwmodel.routing_traces import ESFT_FILES, load_trace

    trace = load_trace(traces / ESFT_FILES["law"])
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    base = layout_residency(hw, model, "striped", num_granules=16)
    cfg = LoopConfig(
        capacity_experts=0, global_lines=260, num_granules=16, fold_reduce=True,
        group_shards=True, prefetch_chunks=16, prefetch_spill=True, **flags,
    )  # fmt: skip
    run = DecodeRun(hw, model, base, cfg, trace, slice(0, 64), slice(64, 72), in_flight=64)
    result = run.run()
    assert result.violations == 0
    assert all(s.latency_s == s.predicted_s and s.bound_s <= s.latency_s for s in result.steps)
    return result


def test_refine_on_real_routing(traces: Path) -> None:
    """On real law routing (``law_decode``) the refined placements decode faster: 6.1571 ->
    6.0376 ms a token."""
    means = [law_decode(traces, refine_placement=r).mean("latency_s") for r in (False, True)]
    assert [round(m * 1e7) for m in means] == [61_571, 60_376]


def test_a_batch_is_the_greedy_s() -> None:
    """A layer of several tokens (the prefill's) keeps the greedy's placement, though the
    refinement would change it at two tokens a routed expert: the estimate is one token's
    (the shared experts' seconds)."""
    run, inst = law_layer(batch=2)
    assert run._refine(inst, solve_greedy(inst)) != solve_greedy(inst)
    assert run._solve(inst) == solve_greedy(inst)


def test_gpu_runs_its_shards_as_their_weights_arrive() -> None:
    """On ``law_layer`` with 60 loaded whole and 22's staged half on the GPU as a split piece
    (its weights come over the link after the load's): the GPU runs its resident shards,
    then 60 (the link brings it first), then 22's piece, never a shard whose weights are
    still coming before one whose weights are in (FLAME, step 31, layer 7 of ``bench ndp``:
    a loaded expert, in at 236.7 us, waited behind a split piece in at 262.3 us, and the
    layer's GPU work ended 10.3 us later than in arrival order)."""
    run, inst = law_layer()
    runs = {e: (("gpu", 0, 16),) for e in (14, 19, 21, 25)}
    runs[22] = (("gpu", 0, 8), ("ndp2", 8, 12), ("ndp3", 12, 16))
    lw = inst.lowered(Assignment(runs=runs, loaded=(60,)), attention=True)
    tasks = run._gpu_order(lw, lw.tasks(), {22}, set())
    gpu = [t.expert for t in tasks if isinstance(t, ComputeTask) and t.device_id == "gpu"
           and t.op == "expert"]  # fmt: skip
    assert gpu == [14, 19, 21, 25, 60, 22]
    trimmed = run._gpu_order(lw, lw.tasks(), {22, 25}, {25})  # 25 as a trimmed load's run
    gpu = [t.expert for t in trimmed if isinstance(t, ComputeTask) and t.device_id == "gpu"
           and t.op == "expert"]  # fmt: skip
    assert gpu == [14, 19, 21, 60, 25, 22]
    assert sorted(t.id for t in tasks) == sorted(t.id for t in lw.tasks())


def tiny_three() -> tuple[Hardware, ModelSpec]:
    """The tiny setting (``tests/tiny.py``) with 3 experts and a 500 ns launch on unit 'a'."""
    hw = tiny_hardware()
    hw = hw.model_copy(update={"devices": tuple(
        d.model_copy(update={"launch_s": 5e-7}) if d.id == "a" else d for d in hw.devices
    )})  # fmt: skip
    return hw, tiny_model().model_copy(update={"num_routed_experts": 3})


def unit_shard(e: int, start: int, end: int, device: str = "a") -> ComputeTask:
    after = ("to.a",) if device == "a" else ()
    return ComputeTask(id=f"e{e}.{device}", device_id=device, op="expert", layer=0, expert=e,
                       ffn_start=start, ffn_end=end, num_tokens=1, after=after)  # fmt: skip


def test_unit_shards_of_different_columns_group_by_hand() -> None:
    """Three experts on unit 'a' of the tiny setting (one token: 600 ns a column, 300 bytes a
    column at 1 GB/s, a 500 ns launch), all after their dispatch: 0 on columns 0-10, 1 on 0-5
    (its columns 5-10 split to the GPU), 2 on 0-10, a transfer between them in the list. One
    launch a shard: 3 x 500 + 6,000 + 3,000 + 6,000 = 16,500 ns. As one grouped GEMM with a
    slice per expert (``group_cols``): 500 + (6,000 + 3,000 + 6,000) = 15,500 ns (FLOPs
    15,000 ns against bytes 7,500 + 200 of activations: compute-bound); the transfer keeps
    its place."""
    hw, model = tiny_three()
    move = TransferTask(id="to.a", link_id="down_a", src_device_id="gpu", dst_device_id="a",
                        payload="activations", layer=0, num_tokens=1)  # fmt: skip
    tasks: list[AnyTask] = [unit_shard(0, 0, 10), move, unit_shard(1, 0, 5), unit_shard(2, 0, 10)]
    alias: dict[str, str] = {}
    grouped = _grouped(list(tasks), alias)
    assert [t.id for t in grouped] == ["e0.a.group3", "to.a"]
    group = grouped[0]
    assert isinstance(group, ComputeTask)
    assert (group.group_rows, group.group_cols) == ((1, 1, 1), ((0, 10), (0, 5), (0, 10)))
    assert (group.ffn_start, group.ffn_end) == (0, 10)
    one_each = sum(costs.task_cycles(hw, model, t, 0)[1] for t in tasks if t.kind == "compute")
    assert (one_each, costs.task_cycles(hw, model, group, 0)[1]) == (16_500, 15_500)
    # The same expert twice (never made by the loop) is not one group.
    again = _grouped([unit_shard(0, 0, 5), unit_shard(0, 5, 10)], {})
    assert len(again) == 2


def test_a_grouped_gemm_reads_each_expert_s_own_slice() -> None:
    """The executor on the tiny plan of ``test_unit_shards_of_different_columns_group_by_hand``
    ('a' holds experts 0 and 2 whole and 1's columns 0-5; the GPU computes 1's columns 5-10):
    no violation, every expert covered once: the dispatch (100 ns on 'down_a'), the group
    (15,500), the return (1,000 + 100 on 'bus'): 16,700 ns. Claiming 1's columns 0-10 on 'a'
    reads columns 'a' does not hold and computes 5-10 twice: flagged."""
    hw, model = tiny_three()
    move = TransferTask(id="to.a", link_id="down_a", src_device_id="gpu", dst_device_id="a",
                        payload="activations", layer=0, num_tokens=1)  # fmt: skip
    group = _grouped([unit_shard(0, 0, 10), unit_shard(1, 0, 5), unit_shard(2, 0, 10)], {})[0]
    assert isinstance(group, ComputeTask)
    residency = Residency(by_memory={
        "a_mem": (WeightSlice(layer=0, expert=0), WeightSlice(layer=0, expert=1, ffn_end=5),
                  WeightSlice(layer=0, expert=2)),
        "gpu_mem": (WeightSlice(layer=0, expert=1, ffn_start=5, ffn_end=10),),
    })  # fmt: skip
    workload = Workload(layer_ids=(0,), tokens_per_expert=((1, 1, 1),), num_tokens=1)
    gpu_part = unit_shard(1, 5, 10, device="gpu")
    back = TransferTask(
        id="from.a", link_id="bus", src_device_id="a", dst_device_id="gpu",
        payload="partial_sums", layer=0, num_tokens=1, after=(group.id,),
    )  # fmt: skip
    report = simulate(hw, model, Plan(tasks=(move, group, gpu_part, back)), workload, residency)
    assert report.violations == ()
    assert report.makespan_cycles == 100 + 15_500 + 1_100
    wrong = group.model_copy(update={"group_cols": ((0, 10), (0, 10), (0, 10))})
    report = simulate(hw, model, Plan(tasks=(move, wrong, gpu_part, back)), workload, residency)
    assert {v.code for v in report.violations} == {"coverage", "weights_not_resident"}


def test_group_cols_are_checked() -> None:
    """A slice per expert of group_rows, each non-empty and within [ffn_start, ffn_end)."""
    base = {"id": "g", "device_id": "a", "op": "expert", "layer": 0, "expert": 0,
            "ffn_start": 0, "ffn_end": 10, "num_tokens": 2, "group_rows": (1, 1)}  # fmt: skip
    ComputeTask.model_validate({**base, "group_cols": ((0, 10), (0, 5))})
    for cols in (((0, 10),), ((0, 10), (5, 5)), ((0, 10), (0, 11))):
        with pytest.raises(ValueError):
            ComputeTask.model_validate({**base, "group_cols": cols})
