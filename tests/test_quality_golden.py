"""Golden quality figures: every solver's answer on small real and hand-built instances, pinned
exactly (or to the stated tolerance), so that a change in quality fails a test.

When a pinned figure changes on purpose (a better greedy, a new cost), re-derive it, say why in
the commit, and update it here; a figure that moved without a reason is a bug.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwmodel.executor import simulate
from hwmodel.plan import Plan, Residency, WeightSlice
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import gpu_ndp, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft
from hwmodel.spec import Hardware, Link, Memory, ModelSpec
from solvers.common import Budget
from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.model import EplbProblem
from solvers.eplb.solve import solve_eplb
from solvers.ordering.dep import DepProblem, solve_dep
from solvers.placement.greedy import solve_greedy
from solvers.placement.problem import PlacementInstance, PlacementProblem
from solvers.placement.solve import solve_layer
from solvers.prefetch.predict import Predictor
from solvers.prefetch.select import PrefetchProblem, select
from tests.tiny import tiny_device, tiny_hardware, tiny_model

# ---------------------------------------------------------------- placement on real ESFT layers

# (layout, layer, batch) -> (greedy makespan, proven optimum), in cycles of gpu-ndp-4dimm's clock.
# DeepSeek-V2-Lite, ESFT law routing of tokens [4000 + 97 * layer, + batch), the GPU caching the
# layer's 8 hottest experts of the first 512 tokens (the prompt: no offline data), 4 granules.
# Striped: every DIMM holds a quarter of every expert; greedy is within 0.003% of the optimum.
# Round robin: whole experts, one DIMM each; greedy is 13-18% above the optimum at batch 16/64
# (it cannot see the link queueing it causes); the optimum is CP-SAT's, proven.
ESFT_GOLDEN = {
    ("striped", 3, 1): (273_629, 273_629),
    ("striped", 3, 16): (1_781_885, 1_781_855),
    ("striped", 3, 64): (3_709_360, 3_709_360),
    ("round_robin", 3, 1): (525_227, 525_227),
    ("round_robin", 3, 16): (2_460_912, 2_088_115),
    ("round_robin", 3, 64): (4_347_591, 3_850_502),
}
# The worst greedy / optimum ratio above, the tolerance a greedy change may not exceed.
GREEDY_TOLERANCE = {"striped": 1.0001, "round_robin": 1.18}


def esft_problem(traces: Path, layout: str, layer: int, batch: int) -> PlacementProblem:
    trace = load_esft(traces / ESFT_FILES["law"])
    hw, model = gpu_ndp(4), model_preset("deepseek-v2-lite")
    prefill = trace.histogram(slice(0, 512))
    start = 4000 + 97 * layer
    hist = trace.histogram(slice(start, start + batch))[layer]
    hot = [int(e) for e in np.argsort(-prefill[layer], kind="stable")[:8]]
    residency = layout_residency(hw, model, layout, cached_experts=hot)  # type: ignore[arg-type]
    return PlacementProblem(
        hw, model, layer, tuple(int(v) for v in hist), batch, residency, num_granules=4
    )


@pytest.mark.parametrize(("layout", "layer", "batch"), sorted(ESFT_GOLDEN))
def test_greedy_placement_on_real_esft_layers(
    traces: Path, layout: str, layer: int, batch: int
) -> None:
    """Greedy's makespan is pinned, and within the stated tolerance of CP-SAT's proven optimum;
    the executor simulates exactly the makespan greedy predicts."""
    want_greedy, want_opt = ESFT_GOLDEN[layout, layer, batch]
    p = esft_problem(traces, layout, layer, batch)
    inst = PlacementInstance(p)
    greedy = solve_greedy(inst)
    assert inst.predict(greedy) == want_greedy
    assert inst.simulate(greedy).makespan_cycles == want_greedy
    assert want_greedy <= want_opt * GREEDY_TOLERANCE[layout]
    assert inst.lower_bound() <= want_opt
    sol = solve_layer(p, "cpsat", budget=Budget.work(30.0, workers=1))
    assert sol.account.status == "optimal"
    assert sol.account.objective_cycles == want_opt
    assert sol.account.lower_bound_cycles == want_opt
    assert sol.assignment is not None
    report = sol.instance.simulate(sol.assignment)
    assert report.valid and report.makespan_cycles == want_opt


# ---------------------------------------------------------------- DEP micro-batches, by hand


def dep_hardware(link_bytes_per_s: float) -> Hardware:
    """Attention GPU 'att' (1 GFLOP/s, 1 GB/s, 1 us launch) and expert GPU 'exp' (10 GFLOP/s,
    10 GB/s, no launch), one link each way (1 us latency)."""
    att = tiny_device("att", "gpu", launch_s=1e-6)
    exp = tiny_device("exp", "gpu", peak_flops_per_s=1e10, mem_bandwidth_bytes_per_s=1e10)
    return Hardware(
        name="tiny-dep",
        devices=(att, exp),
        memories=(
            Memory(id="att_mem", capacity_bytes=10**6),
            Memory(id="exp_mem", capacity_bytes=10**6),
        ),
        links=(
            Link(id="a2e", src_device_ids=("att",), dst_device_ids=("exp",),
                 bandwidth_bytes_per_s=link_bytes_per_s, latency_s=1e-6),
            Link(id="e2a", src_device_ids=("exp",), dst_device_ids=("att",),
                 bandwidth_bytes_per_s=link_bytes_per_s, latency_s=1e-6),
        ),
        home_device_id="att",
        groups={"attention": ("att",), "experts": ("exp",)},
    )  # fmt: skip


DEP_MODEL = ModelSpec(
    name="tiny-dep", hidden_size=100, expert_ffn_size=10, num_routed_experts=1, top_k=1,
    num_moe_layers=1, num_shared_experts=1, shared_expert_ffn_size=10, bytes_per_weight=1.0,
    bytes_per_activation=1.0,
)  # fmt: skip


@pytest.mark.parametrize("backend", ["greedy", "auto"])
def test_dep_overlapping_the_shared_expert_with_the_dispatch_wins(backend: str) -> None:
    """One layer, 2 tokens, 100 MB/s links. Per micro-batch of t tokens (cycles at 1 GHz):
    attention 1,000 (launch only: no attention shape); shared expert 1,000 + 6,000 t
    (2*3*100*10 t FLOPs at 1 GFLOP/s); dispatch and combine 1,000 + 1,000 t each (100 bytes
    per row); routed expert 600 t (10 GFLOP/s).

    r = 1: the shared expert (1,000..14,000) hides the dispatch, expert and combine
    (1,000..8,200): 14,000. r = 2: the attention GPU alone is busy 2 x (1,000 + 7,000) =
    16,000. Serial (shared before dispatch): 1,000 + 13,000 + 3,000 + 1,200 + 3,000 = 21,200.
    Without the overlap the best would be r = 2 at 20,600."""
    problem = DepProblem(dep_hardware(1e8), DEP_MODEL, 2, 1, 0)
    sol = solve_dep(problem, backend, budget=Budget.work(5.0, workers=1))  # type: ignore[arg-type]
    assert (sol.micro_batches, sol.makespan_cycles) == (1, 14_000)
    assert sol.serial_cycles == 21_200
    assert sol.by_r[1] == 14_000 and sol.by_r[2] == 16_000
    assert sol.makespan_cycles <= sol.pppipe_cycles


@pytest.mark.parametrize("backend", ["greedy", "auto"])
def test_dep_pipelining_two_micro_batches_wins_on_a_slow_link(backend: str) -> None:
    """The same, at 10 MB/s: dispatch and combine cost 1,000 + 10,000 t.

    r = 1: attention to 1,000, dispatch to 22,000, expert to 23,200, combine to 44,200.
    r = 2: dispatch 0 1,000..12,000, expert 12,000..12,600, combine 12,600..23,600; dispatch 1
    12,000..23,000, expert 23,000..23,600, combine 23,600..34,600 (the combine link is the
    bottleneck after the first dispatch), the shared experts hidden on the attention GPU:
    34,600. Serial: 1,000 + 13,000 + 21,000 + 1,200 + 21,000 = 57,200."""
    problem = DepProblem(dep_hardware(1e7), DEP_MODEL, 2, 1, 0)
    sol = solve_dep(problem, backend, budget=Budget.work(5.0, workers=1))  # type: ignore[arg-type]
    assert (sol.micro_batches, sol.makespan_cycles) == (2, 34_600)
    assert sol.by_r[1] == 44_200
    assert sol.serial_cycles == 57_200
    report = simulate(problem.hardware, DEP_MODEL, sol.plan, None, problem.residency())
    assert report.valid and report.makespan_cycles == 34_600


# ---------------------------------------------------------------- EPLB: DeepSeek's tie-breaks

# DeepSeek's eplb.py breaks every tie toward the lowest index: ``max(dim=-1).indices`` (the
# first maximum) picks the expert that gets the next replica, Python's ``min`` the first
# lightest pack, and the descending sort keeps equal weights in index order (stable on CPU).
# Each case below has ties at every step; the expected maps are derived by hand in the
# docstrings. Weights are integers whose per-replica shares are exact in binary, so float32
# (EPLB) and float64 (ours) sums cannot order them differently.


def test_eplb_global_ties_follow_deepseek() -> None:
    """[6, 6, 3, 3, 3, 3, 2, 2], 10 slots on 2 GPUs (5 each), one group, one node.

    Replication: slot 8 -> expert 0 (6 = 6: the first), slot 9 -> expert 1 (3 < 6). Shares
    [3, 3, 3, 3, 3, 3, 2, 2, 3, 3]; packing in order 0, 1, 2, 3, 4, 5, 8, 9, 6, 7 alternates
    packs 0 and 1 (every tie to pack 0): pack 0 = [0, 2, 4, 8, 6], pack 1 = [1, 3, 5, 9, 7]."""
    w = np.array([[6, 6, 3, 3, 3, 3, 2, 2]])
    phy2log, log2phy, logcnt = rebalance_experts(w, 10, 1, 1, 2)
    assert phy2log.tolist() == [[0, 2, 4, 0, 6, 1, 3, 5, 1, 7]]
    assert logcnt.tolist() == [[2, 2, 1, 1, 1, 1, 1, 1]]
    assert log2phy[0, :2].tolist() == [[0, 3], [5, 8]]
    sol = solve_eplb(EplbProblem(w, 10, 1, 1, 2), "greedy")
    assert sol.phy2log.tolist() == phy2log.tolist()
    assert sol.gpu_loads.tolist() == [[14.0, 14.0]]
    assert sol.balancedness.tolist() == [1.0]


def test_eplb_hierarchical_ties_follow_deepseek() -> None:
    """[2, 2, 2, 2, 1, 1, 1, 1], 4 groups of 2 on 2 nodes, 12 slots on 4 GPUs.

    Group sums [4, 4, 2, 2] go to nodes 0, 1, 0, 1 (ties: node 0): node 0 holds experts
    0, 1, 4, 5, node 1 experts 2, 3, 6, 7. In each node the two extra slots go to its two
    weight-2 experts in index order; six shares of 1 then alternate GPUs: node 0's slots are
    [0, 4, 0 | 1, 5, 1], node 1's [2, 6, 2 | 3, 7, 3]."""
    w = np.array([[2, 2, 2, 2, 1, 1, 1, 1]])
    phy2log, _, logcnt = rebalance_experts(w, 12, 4, 2, 4)
    assert phy2log.tolist() == [[0, 4, 0, 1, 5, 1, 2, 6, 2, 3, 7, 3]]
    assert logcnt.tolist() == [[2, 2, 2, 2, 1, 1, 1, 1]]
    sol = solve_eplb(EplbProblem(w, 12, 4, 2, 4), "greedy")
    assert sol.gpu_loads.tolist() == [[3.0, 3.0, 3.0, 3.0]]


def test_eplb_packing_ties_and_balancedness() -> None:
    """[5, 5, 5, 5, 3, 3, 1, 1], no redundant slot, 4 GPUs of 2: the 5s take GPUs 0-3, the 3s
    the first two lightest (0, 1), the 1s GPUs 2, 3: loads [8, 8, 6, 6], balancedness
    mean / max = 7 / 8."""
    w = np.array([[5, 5, 5, 5, 3, 3, 1, 1]])
    sol = solve_eplb(EplbProblem(w, 8, 1, 1, 4), "greedy")
    assert sol.phy2log.tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]
    assert sol.gpu_loads.tolist() == [[8.0, 8.0, 6.0, 6.0]]
    assert sol.balancedness.tolist() == [0.875]


# ---------------------------------------------------------------- prefetch knapsack

# Four candidates; memory 10 bytes, link 10 cycles. Expected savings (p x saved): 70, 50, 50,
# 20; bytes 6, 5, 5, 4; link cycles 6, 5, 5, 1. Greedy by saving per byte takes 0 (11.7/B) and
# then only 3 fits: 90. The optimum is {1, 2}: 100 (10 bytes, 10 cycles); {0, 3} is 90, and no
# other pair or triple fits both limits.
KNAPSACK = PrefetchProblem(
    experts=(10, 11, 12, 13),
    probability=(1.0, 1.0, 0.5, 1.0),
    size_bytes=(6.0, 5.0, 5.0, 4.0),
    transfer_cycles=(6, 5, 5, 1),
    saved_cycles=(70, 50, 100, 20),
    free_bytes=10.0,
    link_budget_cycles=10,
)


@pytest.mark.parametrize(
    ("backend", "chosen", "value"),
    [("greedy", [0, 3], 90.0), ("cpsat", [1, 2], 100.0), ("milp", [1, 2], 100.0),
     ("auto", [1, 2], 100.0)],
)  # fmt: skip
def test_prefetch_set_is_the_knapsack_answer(backend: str, chosen: list[int], value: float) -> None:
    got = select(KNAPSACK, backend, budget=Budget.work(5.0, workers=1))
    assert got.chosen == chosen
    assert got.value == value


# ---------------------------------------------------------------- decayed counts and drift


def test_session_drift_after_decayed_observations(tmp_path: Path) -> None:
    """Two layers of four experts, counts starting at 1 (uniform), decay 0.5, drift threshold 1
    (no re-solve: the plan's counts stay uniform, 0.25 each). Every row sums to 4 after each
    step (half of 4, plus 2), so every figure is exact in binary.

    step 1: L0 + [2, 0, 0, 0] -> [2.5, .5, .5, .5]       /4 -> TV(uniform) .375
            L1 + [1, 1, 0, 0] -> [1.5, 1.5, .5, .5]      /4 -> .25        drift .3125
    step 2: L0 + [0, 0, 2, 0] -> [1.25, .25, 2.25, .25]  /4 -> .375
            L1 + [2, 0, 0, 0] -> [2.75, .75, .25, .25]   /4 -> .4375      drift .40625
    step 3: L0 + [0, 0, 0, 2] -> [.625, .125, 1.125, 2.125]  -> .3125
            L1 + [0, 2, 0, 0] -> [1.375, 2.375, .125, .125]  -> .4375     drift .375
    Without the decay step 1 alone would give L0 [3, 1, 1, 1] / 6: TV 1/4, drift .25 - 1/24."""
    from service.schemas import Observation, SessionCreate
    from service.sessions import SessionManager
    from service.settings import Settings
    from service.store import SQLiteStore

    spec = SessionCreate.model_validate(
        {
            "hardware_preset": "gpu-ndp-4dimm",
            "model": {
                "name": "tiny-4", "hidden_size": 64, "expert_ffn_size": 64,
                "num_routed_experts": 4, "top_k": 2, "num_moe_layers": 2,
            },
            "layout": "striped",
            "policy": {"backend": "greedy", "drift_threshold": 1.0, "decay": 0.5},
        }
    )  # fmt: skip
    steps = [
        ([[2, 0, 0, 0], [1, 1, 0, 0]], 0.3125),
        ([[0, 0, 2, 0], [2, 0, 0, 0]], 0.40625),
        ([[0, 0, 0, 2], [0, 2, 0, 0]], 0.375),
    ]
    settings = Settings(db_path=tmp_path / "s.db")
    manager = SessionManager(SQLiteStore(settings.db_path), settings)
    try:
        sid = manager.create(spec).id
        drifts = [manager.observe(sid, Observation(histogram=h)).drift for h, _ in steps]
        info = manager.info(sid)
        row = manager.store.get(sid)
    finally:
        manager.close()
    assert drifts == [want for _, want in steps]
    assert info.num_observations == 3 and info.drift == 0.375 and info.version == 1
    assert row is not None
    assert row.counts.tolist() == [[0.625, 0.125, 1.125, 2.125], [1.375, 2.375, 0.125, 0.125]]


def test_predictor_counts_decay_per_token() -> None:
    """One layer of 4 experts, top-1, decay 0.5: tokens choosing 0, 0, 1 leave counts
    [(1 x .5 + 1) x .5, 1, 0, 0] = [.75, 1, 0, 0]; against the (empty, then seeded) plan
    snapshot of [1, 0, 0, 0] the drift is 0.5 x (|.75/1.75 - 1| + 1/1.75) = 1/1.75."""
    pred = Predictor(1, 4, 1, decay=0.5)
    gates = np.ones((1, 1))
    pred.observe(np.array([[0]]), gates)
    pred.refresh(threshold=0.0)  # plan snapshot [1, 0, 0, 0]
    pred.observe(np.array([[0]]), gates)
    pred.observe(np.array([[1]]), gates)
    assert pred.counts.tolist() == [[0.75, 1.0, 0.0, 0.0]]
    assert pred.mass.tolist() == [[0.75, 1.0, 0.0, 0.0]]
    assert pred.drift() == pytest.approx(1 / 1.75, rel=1e-15)


# ---------------------------------------------------------------- cycle-0 residency


def test_residency_over_capacity_at_cycle_0_is_a_violation() -> None:
    """a_mem (12,000 bytes here) holds every expert of both layers (2 x 2 x 3,000 = 12,000):
    valid. One more column of one expert (300 bytes) overflows it before any task runs."""
    base = tiny_hardware()
    hw = base.model_copy(
        update={
            "memories": tuple(
                m.model_copy(update={"capacity_bytes": 12_000}) if m.id == "a_mem" else m
                for m in base.memories
            )
        }
    )
    model, plan = tiny_model(), Plan(tasks=())
    full = Residency(by_memory={"a_mem": (WeightSlice(),)})
    assert simulate(hw, model, plan, None, full).valid
    over = Residency(
        by_memory={"a_mem": (WeightSlice(), WeightSlice(layer=1, expert=1, ffn_start=9))}
    )
    report = simulate(hw, model, plan, None, over)
    assert not report.valid
    assert [(v.code, v.cycle) for v in report.violations] == [("memory_capacity", 0)]
    assert "12300" in report.violations[0].message
