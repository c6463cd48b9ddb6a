"""The end-to-end decode loop: a hand-computed run, invariants on every configuration, and
real traces.

Tiny setting (see ``tests/tiny.py``): an expert is 3,000 bytes; loading it over the bus takes
3,000 + 1,000 (latency) = 4,000 cycles; computing it for one token on the GPU takes 6,000
cycles (60,000 FLOP... here 6,000 FLOP at 1 GFLOP/s); the reduce of one partial sum 200 cycles;
attention costs nothing (the tiny model has no attention spec).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel.plan import Residency, WeightSlice
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import RoutingTrace
from solvers.decode_loop import DecodeRun, LoopConfig, LoopResult, cache_hardware
from tests.tiny import tiny_hardware, tiny_model

HOST = Residency(by_memory={"a_mem": (WeightSlice(),)})


def roomy(hw: Hardware) -> Hardware:
    """The tiny hardware with memories large enough to hold every expert of every layer."""
    memories = tuple(m.model_copy(update={"capacity_bytes": 10**6}) for m in hw.memories)
    return hw.model_copy(update={"memories": memories})


def trace_of(routes: list[list[list[int]]], num_experts: int) -> RoutingTrace:
    """``routes [tokens][layers][k]`` as a one-sequence trace."""
    ids = np.array(routes, dtype=np.int16)
    return RoutingTrace(
        "tiny", np.arange(ids.shape[1]), ids, None, np.zeros(ids.shape[0], dtype=np.int32),
        num_experts,
    )  # fmt: skip


def test_lru_demand_run_by_hand() -> None:
    """Prompt: expert 0 in both layers, so both caches (1 line) start with expert 0.
    Decode (layer 0, layer 1): (1, 0), (1, 0), (0, 0).
    Step 0: layer 0 misses: load 4,000 + compute 6,000 + reduce 200; layer 1 hits: 6,200.
    Step 1: both hit: 12,400. Step 2: layer 0 misses again (LRU kept 1): 16,400.
    Hits: 4 of 6 requests; 2 demand loads."""
    model = tiny_model()
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]], [[1], [0]], [[0], [0]]], 2)
    cfg = LoopConfig(capacity_experts=1, cache="lru", prefetch=False, dispatch="demand")
    run = DecodeRun(roomy(tiny_hardware()), model, HOST, cfg, trace, slice(0, 2), slice(2, 5))
    result = run.run()
    assert [round(s.latency_s * 1e9) for s in result.steps] == [16_400, 12_400, 16_400]
    assert [round(s.predicted_s * 1e9) for s in result.steps] == [16_400, 12_400, 16_400]
    assert result.stats.hits == 4 and result.stats.loads == 2
    assert result.violations == 0
    assert [s.weight_bytes for s in result.steps] == [3000, 0, 3000]


def test_cpu_assisted_placement_runs_the_miss_remotely() -> None:
    """The same first step with the placement solver. Layer 0: sending one activation row to
    'a' (100 + 1,000 cycles), computing there (6,000) and returning it (1,100) beats loading
    (4,000 + 6,000): 8,400 cycles with the reduce, and nothing is loaded. Layer 1: the cached
    expert 0 is split in two (tensor parallel): half on the GPU (3,000) while 'a' computes the
    other half (1,100 + 3,000 + 1,100), then a reduce of two partial sums (300): 5,500."""
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]]], 2)
    cfg = LoopConfig(capacity_experts=1, cache="lru", prefetch=False, dispatch="solver")
    run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                    slice(2, 3))  # fmt: skip
    step = run.run().steps[0]
    assert round(step.latency_s * 1e9) == 8_400 + 5_500
    assert step.weight_bytes == 0


def test_split_load_by_hand() -> None:
    """No cache line, 2 granules per expert (5 columns, 1,500 bytes), room for 2 experts in
    flight. Without split loads each layer runs its expert on 'a': dispatch 1,100, compute
    6,000, return 1,100, reduce 200: 8,400 a layer. With them, 'a' gives the top granule of its
    stripe to the GPU over the bus after the dispatch (1,000 + 1,500 = 2,500: 1,100 -> 3,600),
    'a' computes the other half (3,000: 1,100 -> 4,100) and returns it (4,100 -> 5,200) while
    the GPU computes the loaded half (3,600 -> 6,600); the reduce of two partial sums (300):
    6,900 a layer. The granule is freed after use; prediction = simulation, no violation."""
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]]], 2)
    latency = []
    for split in (False, True):
        cfg = LoopConfig(capacity_experts=0, cache="lru", prefetch=False, dispatch="solver",
                         num_granules=2, split_loads=split)  # fmt: skip
        run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                        slice(2, 3), in_flight=2)  # fmt: skip
        step = run.run().steps[0]
        assert step.violations == [] and step.latency_s == step.predicted_s
        assert step.weight_bytes == (3_000 if split else 0)  # two granules in the step
        latency.append(round(step.latency_s * 1e9))
    assert latency == [2 * 8_400, 2 * 6_900]


def test_fold_reduce_by_hand() -> None:
    """Folding a layer's reduce into the next layer's attention (``fold_reduce``) removes only
    the reduce's launch (none on the tiny GPU) and a reduce of one partial sum (the returned
    row is the layer's output: nothing to add). The CPU-assisted step
    (``test_cpu_assisted_placement_runs_the_miss_remotely``, 8,400 + 5,500): layer 0's single
    partial sum from 'a' needs no add, 8,200; layer 1 (the step's last) keeps its reduce of two
    partial sums, 5,500. The split-load step (``test_split_load_by_hand``, 2 x 6,900): layer 0
    ends with the GPU's loaded half at 6,600 (the return from 'a' at 5,200); layer 1's
    attention adds the two partial sums in its prologue (300, as the reduce did: the add's
    work stays), 6,600 -> 6,900, then as before: 13,800, the same; the add is now part of the
    attention phase."""
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]]], 2)
    got = []
    for split in (False, True):
        for fold in (False, True):
            cfg = LoopConfig(
                capacity_experts=0 if split else 1, cache="lru", prefetch=False,
                dispatch="solver", num_granules=2 if split else 4, fold_reduce=fold,
            )  # fmt: skip
            run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace,
                            slice(0, 2), slice(2, 3), in_flight=2 if split else None)  # fmt: skip
            step = run.run().steps[0]
            assert step.violations == [] and step.latency_s == step.predicted_s
            got.append(round(step.latency_s * 1e9))
            if split:
                phases = {k: round(v * 1e9) for k, v in step.phase_s.items()}
                assert (phases["reduce"], phases["attention"]) == ((300, 300) if fold else (600, 0))
    assert got == [8_400 + 5_500, 8_200 + 5_500, 2 * 6_900, 2 * 6_900]


def test_grouped_shards_by_hand() -> None:
    """Top-2 of 2 experts, no cache, expert-parallel: both experts of a layer run on 'a'
    (here with a 500 ns launch). Per layer: the dispatch (1,100), expert 0 (500 + 6,000) and
    expert 1 (500 + 6,000), the return (1,100), the reduce of one partial sum (200): 15,400,
    30,800 a step. As one grouped GEMM (``group_shards``) 'a' launches once: 500 + 12,000, so
    14,900 a layer, 29,800 a step; the same weights are read, the executor checks the plan
    (residency, coverage) and agrees with the prediction."""
    hw = roomy(tiny_hardware())
    hw = hw.model_copy(update={"devices": tuple(
        d.model_copy(update={"launch_s": 5e-7}) if d.id == "a" else d for d in hw.devices
    )})  # fmt: skip
    model = tiny_model().model_copy(update={"top_k": 2})
    trace = trace_of([[[0, 1], [0, 1]]] * 3, 2)
    got = []
    for group in (False, True):
        cfg = LoopConfig(capacity_experts=0, cache="lru", prefetch=False,
                         dispatch="expert_parallel", group_shards=group)  # fmt: skip
        run = DecodeRun(hw, model, HOST, cfg, trace, slice(0, 2), slice(2, 3))
        step = run.run().steps[0]
        assert step.violations == [] and step.latency_s == step.predicted_s
        got.append(round(step.latency_s * 1e9))
    assert got == [30_800, 29_800]


def flame_decode(traces: Path, num_granules: int, **flags: bool | int) -> LoopResult:
    """FLAME-MoE-290M on the 4-DIMM preset, ``num_granules`` striped, 6 real decode tokens
    after a 64-token prompt, no per-layer cache and 64 global lines, run: every step passes
    the executor with prediction = simulation, the bound below it and its phases summing to
    its latency."""
    from hwmodel.plan_builder import layout_residency
    from hwmodel.presets import hardware_preset, model_preset
    from hwmodel.routing_traces import FLAME_FILE, load_trace

    trace = load_trace(traces / FLAME_FILE)
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("flame-moe-290m")
    base = layout_residency(hw, model, "striped", num_granules=num_granules)
    cfg = LoopConfig(capacity_experts=0, global_lines=64, num_granules=num_granules, **flags)
    run = DecodeRun(hw, model, base, cfg, trace, slice(0, 64), slice(64, 70), in_flight=64)
    result = run.run()
    assert result.violations == 0
    assert all(s.latency_s == s.predicted_s and s.bound_s <= s.latency_s for s in result.steps)
    assert all(abs(sum(s.phase_s.values()) - s.latency_s) < 1e-12 for s in result.steps)
    return result


def test_split_loads_on_real_routing(traces: Path) -> None:
    """FLAME on 8 granules (2 per DIMM, ``flame_decode``): split loads happen, and decoding
    is faster than without them."""
    means = []
    for split in (True, False):
        result = flame_decode(traces, 8, split_loads=split)
        assert (result.stats.split_loads > 0) == split
        means.append(result.mean("latency_s"))
    assert means[0] < means[1]


def test_cache_memory_is_sized_to_the_cache() -> None:
    """1 line x 2 layers + 1 in flight = 3 experts = 9,000 bytes (+1)."""
    hw = cache_hardware(roomy(tiny_hardware()), tiny_model(), 1, 1)
    assert next(m.capacity_bytes for m in hw.memories if m.id == "gpu_mem") == 9_001


def wide_model() -> ModelSpec:
    return tiny_model().model_copy(
        update={"num_routed_experts": 4, "top_k": 2, "num_moe_layers": 3}
    )


@given(
    routes=st.lists(
        st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2, unique=True),
                 min_size=3, max_size=3),
        min_size=3, max_size=7,
    ),
    dispatch=st.sampled_from(["solver", "monde", "monde_paper", "expert_parallel", "demand"]),
    cache=st.sampled_from(["none", "lru", "lfu", "belady", "moesched", "static"]),
    capacity=st.integers(0, 3),
    prefetch=st.booleans(),
    substitute=st.booleans(),
    in_flight=st.integers(2, 4),
    gpu_speed=st.sampled_from([1.0, 4.0]),
    kernels=st.booleans(),
)  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_every_configuration_passes_the_executor(
    routes: list[list[list[int]]], dispatch: str, cache: str, capacity: int, prefetch: bool,
    substitute: bool, in_flight: int, gpu_speed: float, kernels: bool,
) -> None:  # fmt: skip
    """Whatever the routing and configuration: no violation in any step (capacity, residency,
    coverage, order), and the solver-side prediction equals the executor's makespan (with
    room in flight, split loads too)."""
    trace = trace_of(routes, 4)
    cfg = LoopConfig(
        capacity_experts=capacity, cache=cache, prefetch=prefetch, dispatch=dispatch,  # type: ignore[arg-type]
        substitute_below=1.0 if substitute else 0.0, quality_budget=0.5, drift_threshold=0.0,
        num_granules=2, fold_reduce=kernels, group_shards=kernels, prefetch_spill=kernels,
        prefetch_chunks=16 if kernels else 8,
    )  # fmt: skip
    hw = roomy(tiny_hardware())
    hw = hw.model_copy(update={"devices": tuple(
        d.model_copy(update={"peak_flops_per_s": gpu_speed * d.peak_flops_per_s})
        if d.id == "gpu" else d
        for d in hw.devices
    )})  # fmt: skip
    run = DecodeRun(hw, wide_model(), HOST, cfg, trace, slice(0, 2), slice(2, len(routes)),
                    in_flight=in_flight)  # fmt: skip
    result = run.run()
    assert result.violations == 0, [s.violations for s in result.steps]
    for s in result.steps:
        assert s.latency_s == s.predicted_s
        assert s.bound_s <= s.latency_s + 1e-12  # the bandwidth bound is a lower bound
    stats = result.stats
    assert stats.requests == 2 * 3 * (len(routes) - 2)
    assert stats.hits + stats.substitutions <= stats.requests


def test_global_cache_allocation() -> None:
    """The 3 hottest (layer, expert) cells of [[5, 1], [4, 0], [0, 0]] are (0, 0), (1, 0) and
    (0, 1): 2 lines for layer 0, 1 for layer 1, none for layer 2; a layer without lines admits
    nothing, and the executor checks the cache sized to 3 lines in all."""
    from solvers.prefetch.cache import ExpertCaches, global_allocation

    assert global_allocation(np.array([[5, 1], [4, 0], [0, 0]]), 3) == [2, 1, 0]
    caches = ExpertCaches("lru", [2, 1, 0], 3, 2)
    assert caches.insert(0, 0, None) and caches.insert(0, 1, None)
    assert caches.insert(1, 0, None) and not caches.insert(1, 1, None)
    assert not caches.insert(2, 0, None) and caches.victim(2, 0, set()) is None
    routes = [[[0, 1], [0, 2], [1, 3]]] * 2 + [[[0, 1], [2, 3], [1, 2]]] * 3
    cfg = LoopConfig(capacity_experts=0, global_lines=3, cache="lru", prefetch=True,
                     dispatch="demand")  # fmt: skip
    run = DecodeRun(roomy(tiny_hardware()), wide_model(), HOST, cfg, trace_of(routes, 4),
                    slice(0, 2), slice(2, 5))  # fmt: skip
    assert sum(run.caches.caps) == 3
    result = run.run()
    assert result.violations == 0 and result.stats.hits > 0


def test_real_trace_offload(traces: Path) -> None:
    """DeepSeek-V2-Lite on the A6000 offload preset, 12 real law decode steps at 25% cache:
    score-aware caching with prefetch hits at least as often as LRU; running misses on the
    host CPU (the placement solver) is faster than loading them; no violations anywhere."""
    from hwmodel.presets import hardware_preset, model_preset
    from hwmodel.routing_traces import ESFT_FILES, load_esft

    trace = load_esft(traces / ESFT_FILES["law"])
    start, end = trace.sequences()[0]
    mid = start + (end - start) // 4
    hw, model = hardware_preset("offload-a6000-pcie4"), model_preset("deepseek-v2-lite")
    base = Residency(by_memory={"host_dram": (WeightSlice(),)})

    def go(**kw: object) -> tuple[float, float, int]:
        cfg = LoopConfig(capacity_experts=16, **kw)  # type: ignore[arg-type]
        r = DecodeRun(hw, model, base, cfg, trace, slice(start, mid), slice(mid, mid + 12)).run()
        return r.mean("latency_s"), r.stats.hit_rate, r.violations

    lru = go(cache="lru", prefetch=False, dispatch="demand")
    ours = go(cache="moesched", prefetch=True, dispatch="demand")
    cpu = go(cache="moesched", prefetch=True, dispatch="solver")
    assert ours[1] >= lru[1]
    assert cpu[0] < 0.5 * lru[0]
    assert lru[2] == ours[2] == cpu[2] == 0


def test_prefill_by_hand() -> None:
    """A two-token prompt, GPU-only demand loads, 1 cache line warmed with expert 0.
    Layer 0 (experts 0 and 1, one token each): expert 0 on the GPU (6,000) while expert 1
    loads (4,000), then expert 1 (6,000), reduce of two rows (400): 12,400. Layer 1 (expert 0,
    both tokens): 12,000 + 400. The load is freed after use; 3,000 bytes moved."""
    trace = trace_of([[[0], [0]], [[1], [0]], [[0], [0]]], 2)
    cfg = LoopConfig(capacity_experts=1, cache="lru", prefetch=False, dispatch="demand")
    run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                    slice(2, 3), in_flight=2)  # fmt: skip
    step = run.prefill(trace.histogram(slice(0, 2)))
    assert round(step.latency_s * 1e9) == 12_400 + 12_400 == round(step.predicted_s * 1e9)
    assert step.weight_bytes == 3_000 and step.violations == []


def test_step_bound_by_hand() -> None:
    """The CPU-assisted step above (13,900 cycles) and its lower bound. Unit 'a' computes in
    place at 2 ns per weight byte (6,000 FLOP per 3,000 bytes at 1 GFLOP/s): R = 0.5 GB/s; the
    bus into the GPU P = 1 GB/s; the shortest round trip to 'a' f = 100 (down_a) + 1,100 (bus)
    = 1,200 ns. Layer 0 (expert 1 absent, 3,000 bytes): min(A / P = 3,000, (A + R f) / (R + P)
    = 3,600 / 1.5 = 2,400) = 2,400 ns; layer 1 (resident): all bytes over every path and the
    GPU (0.5 GB/s) = 3,000 / 2 = 1,500 ns: 3,900 ns per layer. The whole step counts the bus
    once: its four activation trips (4 x 1,100 ns = 4,400 bytes of bus time) share it with the
    demand loads, and in layer 0 (absent bytes) 'a' streams nothing for min(f, A / P) =
    1,200 ns (R x 1,200 ns = 600 bytes): (3,000 + 600 + 4,400) / 1.5 GB/s = 5,333 ns, the
    bound."""
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]]], 2)
    cfg = LoopConfig(capacity_experts=1, cache="lru", prefetch=False, dispatch="solver")
    run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                    slice(2, 3))  # fmt: skip
    step = run.run().steps[0]
    assert round(step.latency_s * 1e9) == 13_900
    assert abs(step.bound_layers_s - 3.9e-6) < 1e-15
    assert abs(step.bound_step_s - 8_000 / 1.5e9) < 1e-15
    assert step.bound_s == max(step.bound_layers_s, step.bound_step_s) <= step.latency_s


def test_figures_do_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Machine load cannot move a figure: with every clock the loop could read running 1,000
    times slower than the work (each reading 10 s after the last, as on an overloaded
    machine), a configuration with prefetch and placement gives the same latencies, bounds,
    hits and prefetches as with the real clocks; only the reported planning time changes."""
    import time

    routes = [[[0, 1], [2, 3], [1, 2]], [[0, 2], [2, 3], [0, 1]], [[1, 3], [0, 2], [2, 3]]] * 3
    trace = trace_of(routes, 4)
    cfg = LoopConfig(capacity_experts=1, drift_threshold=0.0)

    def figures() -> list[tuple[float, float, int, int]]:
        run = DecodeRun(roomy(tiny_hardware()), wide_model(), HOST, cfg, trace, slice(0, 2),
                        slice(2, len(routes)))  # fmt: skip
        result = run.run()
        s = result.stats
        return [(x.latency_s, x.bound_s, s.hits, s.prefetches) for x in result.steps]

    calm = figures()
    ticks = iter(range(1, 10**9))
    for name in ("perf_counter", "process_time", "monotonic", "time"):
        real = getattr(time, name)
        monkeypatch.setattr(time, name, lambda real=real: real() + 10.0 * next(ticks))
    assert figures() == calm
    assert any(s > 0 for _, _, _, s in calm)  # something was prefetched


def test_step_phases_by_hand() -> None:
    """The split step of ``test_split_load_by_hand`` (6,900 ns a layer) cut into phases. Per
    layer: the dispatch to 'a' (0 -> 1,100) runs alone on the links; 'a' computes (1,100 ->
    4,100) while 'b' holds nothing of the layer (some units idle); the GPU computes the loaded
    half (3,600 -> 6,600), alone from 4,100 on; the reduce (6,600 -> 6,900). No attention
    (the tiny model has none). The phases sum to the step."""
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]]], 2)
    cfg = LoopConfig(capacity_experts=0, cache="lru", prefetch=False, dispatch="solver",
                     num_granules=2, split_loads=True)  # fmt: skip
    run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                    slice(2, 3), in_flight=2)  # fmt: skip
    step = run.run().steps[0]
    got = {k: round(v * 1e9) for k, v in step.phase_s.items()}
    assert got == {"units_all": 0, "units_some": 2 * 3_000, "attention": 0, "reduce": 2 * 300,
                   "gpu_experts": 2 * 2_500, "links_only": 2 * 1_100, "idle": 0}  # fmt: skip
    assert abs(sum(step.phase_s.values()) - step.latency_s) < 1e-15


def test_trimmed_loads_on_real_routing(traces: Path) -> None:
    """FLAME on 16 granules (``flame_decode``): trimming the last whole demand load of a
    layer (its end granules stay on the DIMMs, the line is staged) decodes faster than
    without it (0.8290 against 0.8409 ms a token); folding each reduce into the next layer's
    attention (``fold_reduce``) on top is worth 7 reduce launches of 5 us a step (0.7940 ms a
    token: the add's own work stays, and the plans come out the same); running each DIMM's
    (and the GPU's) shards of a layer as one grouped GEMM (``group_shards``) on top saves
    their launches: 0.7545 ms (0.7683 when only shards on the same columns group: a DIMM
    whose stripe of one expert a split load cut keeps one launch with ``group_cols``)."""
    means = [flame_decode(traces, 16, trim_loads=t).mean("latency_s") for t in (True, False)]
    assert round(means[0] * 1e7) == 8_290 and round(means[1] * 1e7) == 8_409
    folded = flame_decode(traces, 16, fold_reduce=True).mean("latency_s")
    assert round(folded * 1e7) == 7_940
    grouped = flame_decode(traces, 16, fold_reduce=True, group_shards=True)
    assert round(grouped.mean("latency_s") * 1e7) == 7_545
    # Finer prefetch chunks, and the round after the returns spilling up to one chunk into the
    # next layer's window: more is staged (217 chunks against 94); on these 6 tokens it is
    # no gain (0.7596 ms), on bench ndp's 96 it is (docs/bench_ndp.json).
    spill = flame_decode(traces, 16, fold_reduce=True, group_shards=True, prefetch_chunks=16,
                         prefetch_spill=True)  # fmt: skip
    assert round(spill.mean("latency_s") * 1e7) == 7_596
    assert (grouped.stats.prefetches, spill.stats.prefetches) == (94, 217)


def test_measure_floor_times_the_steps_own_tasks_and_changes_no_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``measure_floor`` records the CPU to re-time and rebuild each step's tasks (the floor
    ``bench ndp`` reports under planning) and nothing else: every simulated figure is the same
    as without it; ``num_tasks`` is the size of the plan the executor ran."""
    import solvers.decode_loop as loop

    simulated: list[int] = []
    real_simulate = loop.simulate

    def counting(hw, model, plan, workload, residency):  # type: ignore[no-untyped-def]
        simulated.append(len(plan.tasks))
        return real_simulate(hw, model, plan, workload, residency)

    monkeypatch.setattr(loop, "simulate", counting)
    trace = trace_of([[[0], [0]]] * 2 + [[[1], [0]], [[0], [1]]], 2)
    records = []
    for measure in (False, True):
        simulated.clear()
        cfg = LoopConfig(capacity_experts=0, cache="lru", prefetch=True, dispatch="solver",
                         num_granules=2, measure_floor=measure)  # fmt: skip
        run = DecodeRun(roomy(tiny_hardware()), tiny_model(), HOST, cfg, trace, slice(0, 2),
                        slice(2, 4), in_flight=2)  # fmt: skip
        steps = run.run().steps
        assert [s.num_tasks for s in steps] == simulated[-len(steps) :]
        records.append(steps)
    plain, measured = records
    for a, b in zip(plain, measured, strict=True):
        assert a.floor_cpu_s == {} and set(b.floor_cpu_s) == {"retime", "validate"}
        assert all(v >= 0.0 for v in b.floor_cpu_s.values())
        same = ("latency_s", "predicted_s", "bytes_moved", "weight_bytes", "num_tasks", "busy_s")
        assert [getattr(a, k) for k in same] == [getattr(b, k) for k in same]
