"""More pinned quality figures: cases the planted bugs and the surviving mutants showed were
loose (each test names what it pins and why the figure is what it is)."""

from __future__ import annotations

from hwmodel.plan import Residency, WeightSlice
from hwmodel.spec import Hardware, Link, Memory, ModelSpec
from solvers.common import Budget
from solvers.decode_loop import DecodeRun, LoopConfig
from solvers.placement.problem import PlacementInstance, PlacementProblem
from solvers.placement.solve import solve_layer
from tests.solvers.test_decode_loop import HOST, roomy, trace_of
from tests.solvers.test_placement import brute_force
from tests.tiny import tiny_device, tiny_hardware, tiny_model

# ---------------------------------------------------------------- greedy split holders


def three_replicas() -> Hardware:
    """A slow home GPU (0.1 GFLOP/s, holding nothing) and three NDP units a, b, c (1 GFLOP/s)
    that each hold every expert; links so fast (1 TB/s, 1 ns) that compute decides."""
    gpu = tiny_device("gpu", "gpu", peak_flops_per_s=1e8, mem_bandwidth_bytes_per_s=1e8)
    return Hardware(
        name="three-replicas",
        devices=(gpu, *(tiny_device(d) for d in "abc")),
        memories=(Memory(id="gpu_mem", capacity_bytes=1),
                  *(Memory(id=f"{d}_mem", capacity_bytes=10**6) for d in "abc")),
        links=(
            Link(id="down", src_device_ids=("gpu",), dst_device_ids=tuple("abc"),
                 bandwidth_bytes_per_s=1e12, latency_s=1e-9),
            Link(id="up", src_device_ids=tuple("abc"), dst_device_ids=("gpu",),
                 bandwidth_bytes_per_s=1e12, latency_s=1e-9),
        ),
        home_device_id="gpu",
    )  # fmt: skip


THREE_EXPERTS = ModelSpec(
    name="tiny-3", hidden_size=100, expert_ffn_size=10, num_routed_experts=3, top_k=2,
    num_moe_layers=1, bytes_per_weight=1.0, bytes_per_activation=1.0,
)  # fmt: skip


def test_greedy_splits_onto_the_least_loaded_holders() -> None:
    """Tokens (30, 20, 10), every expert on a, b and c, 2 granules. A full expert costs
    6,000 cycles a token (2 * 3 * 100 * 10 FLOPs at 1 GFLOP/s), a half 3,000. Heaviest first:
    expert 0 splits over a and b (90,000 each), expert 1 runs whole on c (120,000); expert 2's
    halves must then go to the two least-loaded holders a and b (120,000 each), not to c.
    That is the optimum (brute force: 240,015 cycles); sending a half to the busiest holder
    (c) gives 270,012."""
    everywhere = Residency(by_memory={f"{d}_mem": (WeightSlice(),) for d in "abc"})
    p = PlacementProblem(
        three_replicas(), THREE_EXPERTS, 0, (30, 20, 10), 30, everywhere, num_granules=2
    )
    best, _ = brute_force(PlacementInstance(p))
    sol = solve_layer(p, "greedy", budget=Budget.work(5.0))
    assert sol.assignment is not None
    assert dict(sol.assignment.runs) == {
        0: (("a", 0, 1), ("b", 1, 2)),
        1: (("c", 0, 2),),
        2: (("a", 0, 1), ("b", 1, 2)),
    }
    busy = {d.device_id: d.busy_cycles for d in sol.instance.simulate(sol.assignment).devices}
    assert busy == {"gpu": 120_000, "a": 120_000, "b": 120_000, "c": 120_000}
    assert sol.account.objective_cycles == best == 240_015


# ------------------------------------------------ the decode loop stages its prefetch


def test_decode_loop_stages_what_it_prefetches() -> None:
    """Tiny setting of tests/solvers/test_decode_loop.py (an expert loads in 4,000 cycles,
    computes one token in 6,000, reduces in 200), one cache line per layer. The prompt routes
    (0, 0), (1, 1) twice, so layer 1 follows layer 0's expert; decode routes (1, 1), (0, 0),
    (1, 1), (0, 0). Layer 0 misses every step (10,200 cycles: load, compute, reduce); layer 1's
    expert is staged during layer 0 and hits (6,200): 16,400 a step, 4 hits and 4 demand loads.
    A loop that chose the prefetch set but staged none of it misses both: 20,400, 0 hits."""
    trace = trace_of([[[0], [0]], [[1], [1]]] * 2 + [[[1], [1]], [[0], [0]]] * 2, 2)
    for cache in ("lru", "moesched"):
        cfg = LoopConfig(capacity_experts=1, cache=cache, prefetch=True, dispatch="demand")
        run = DecodeRun(
            roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 4), slice(4, 8)
        )
        result = run.run()
        assert [round(s.latency_s * 1e9) for s in result.steps] == [16_400] * 4, cache
        assert result.stats.hits == 4 and result.stats.loads == 4, cache
        assert result.stats.prefetches >= 4 and result.violations == 0, cache
