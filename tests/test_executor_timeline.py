"""Exact timelines, computed by hand in each test (see conftest for the tiny figures)."""

from __future__ import annotations

import pytest

from hwmodel import costs
from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.spec import Hardware, Link, Memory, ModelSpec
from hwmodel.workload import Workload
from tests.tiny import tiny_device, tiny_hardware

ALL = Residency(by_memory={"a_mem": (WeightSlice(),), "b_mem": (WeightSlice(),), "gpu_mem": ()})


def spans(report) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    return {s.task_id: (s.start_cycle, s.end_cycle) for s in report.timeline}


def dispatch(task_id: str, dst: str, after: tuple[str, ...] = (), tokens: int = 10) -> TransferTask:
    return TransferTask(
        id=task_id, link_id="bus", src_device_id="gpu", dst_device_id=dst,
        payload="activations", layer=0, num_tokens=tokens, after=after,
    )  # fmt: skip


def gather(task_id: str, src: str, after: tuple[str, ...], tokens: int = 10) -> TransferTask:
    return TransferTask(
        id=task_id, link_id="bus", src_device_id=src, dst_device_id="gpu",
        payload="partial_sums", layer=0, num_tokens=tokens, after=after,
    )  # fmt: skip


def shard(
    task_id: str, dev: str, expert: int, after: tuple[str, ...], lo: int = 0, hi: int = 10
) -> ComputeTask:
    return ComputeTask(
        id=task_id, device_id=dev, op="expert", layer=0, expert=expert,
        ffn_start=lo, ffn_end=hi, num_tokens=10, after=after,
    )  # fmt: skip


def reduce(after: tuple[str, ...], partials: int) -> ComputeTask:
    return ComputeTask(
        id="reduce", device_id="gpu", op="reduce", layer=0, num_tokens=10,
        num_partials=partials, after=after,
    )  # fmt: skip


def test_two_devices_one_shared_link_queue(hw: Hardware, model: ModelSpec) -> None:
    """Two experts on a and b; every transfer shares the one-lane bus and queues.

    dispatch a [0, 2000); dispatch b waits for the bus [2000, 4000);
    shard a [2000, 62000); shard b [4000, 64000)   (60,000 FLOPs at 1 GFLOP/s);
    return a [62000, 64000); return b [64000, 66000);
    reduce of 2 partials: max(1,000 FLOPs, 3,000 bytes) = 3,000 cycles -> [66000, 69000).
    """
    plan = Plan(
        tasks=(
            dispatch("to_a", "a"),
            dispatch("to_b", "b"),
            shard("e0", "a", 0, ("to_a",)),
            shard("e1", "b", 1, ("to_b",)),
            gather("from_a", "a", ("e0",)),
            gather("from_b", "b", ("e1",)),
            reduce(("from_a", "from_b"), 2),
        )
    )
    wl = Workload(layer_ids=(0,), tokens_per_expert=((10, 10),), num_tokens=20)
    report = simulate(hw, model, plan, wl, ALL, include_timeline=True)
    assert report.valid, report.violations
    assert spans(report) == {
        "to_a": (0, 2000),
        "to_b": (2000, 4000),
        "e0": (2000, 62000),
        "e1": (4000, 64000),
        "from_a": (62000, 64000),
        "from_b": (64000, 66000),
        "reduce": (66000, 69000),
    }
    assert report.makespan_cycles == 69000
    assert report.makespan_s == pytest.approx(69e-6)
    bus = next(lk for lk in report.links if lk.link_id == "bus")
    assert bus.bytes_moved == 4000
    assert bus.busy_cycles == 8000
    a = next(d for d in report.devices if d.device_id == "a")
    assert a.busy_cycles == 60000
    assert a.utilization == pytest.approx(60000 / 69000)


def test_two_lane_link_runs_transfers_at_once(model: ModelSpec) -> None:
    """With num_lanes=2 both dispatches run in [0, 2000) and nothing queues."""
    hw2 = tiny_hardware(num_lanes=2)
    plan = Plan(tasks=(dispatch("to_a", "a"), dispatch("to_b", "b")))
    report = simulate(hw2, model, plan, include_timeline=True)
    assert spans(report) == {"to_a": (0, 2000), "to_b": (0, 2000)}
    assert {s.lane for s in report.timeline} == {0, 1}


@pytest.mark.parametrize(
    ("sram_bytes", "expected_cycles"),
    [
        # 1 tile of 3,000 B: load 0.1 + 3.0 us, then compute 2.0 us -> 5.1 us.
        (6000, 5100),
        # 1 full tile of 2,000 B + 1 of 1,000 B: load 2.1, max(load 1.1, compute 1.333),
        # compute 0.667 -> 4.1 us.
        (4000, 4100),
        # 3 tiles of 1,000 B: load 1.1 + 2 * max(1.1, 0.667) + compute 0.667 = 3.9667 us.
        (2000, 3967),
    ],
)
def test_ndp_tile_pipeline_depends_on_sram(
    model: ModelSpec, sram_bytes: int, expected_cycles: int
) -> None:
    """One token, a full expert: 3,000 weight bytes at 1 GB/s, 6,000 FLOPs at 3 GFLOP/s,
    0.1 us per tile. Smaller SRAM means more, smaller tiles that overlap load and compute."""
    ndp = tiny_device("a", peak_flops_per_s=3e9, sram_bytes=sram_bytes, tile_overhead_s=1e-7)
    assert costs.to_cycles(costs.expert_shard_s(ndp, model, 1, 10), 1e9) == expected_cycles


def test_tile_pipeline_matches_the_tile_by_tile_sum(model: ModelSpec) -> None:
    """The closed form equals the literal double-buffer recurrence for an uneven tiling."""
    ndp = tiny_device("a", peak_flops_per_s=2e9, sram_bytes=1400, tile_overhead_s=3e-8)
    total_bytes, flops = 3000.0, 6000.0
    tiles = [700.0] * 4 + [200.0]
    load = [3e-8 + b / 1e9 for b in tiles]
    comp = [b * flops / total_bytes / 2e9 for b in tiles]
    expected = load[0] + sum(max(load[i], comp[i - 1]) for i in range(1, 5)) + comp[-1]
    assert costs.tile_pipeline_s(ndp, flops, total_bytes) == pytest.approx(expected)


def _single_expert_plan(split: bool) -> Plan:
    if not split:
        return Plan(
            tasks=(
                dispatch("to_a", "a"),
                shard("e0", "a", 0, ("to_a",)),
                gather("from_a", "a", ("e0",)),
                reduce(("from_a",), 1),
            )
        )
    return Plan(
        tasks=(
            dispatch("to_a", "a"),
            dispatch("to_b", "b"),
            shard("e0a", "a", 0, ("to_a",), 0, 5),
            shard("e0b", "b", 0, ("to_b",), 5, 10),
            gather("from_a", "a", ("e0a",)),
            gather("from_b", "b", ("e0b",)),
            reduce(("from_a", "from_b"), 2),
        )
    )


def test_tensor_parallel_expert_counts_its_reduction(hw: Hardware, model: ModelSpec) -> None:
    """Whole on a: 2000 + 60000 + 2000 + reduce(1 partial: 2,000 B) 2000 = 66,000.

    Split in halves on a and b: dispatches [0,2000) [2000,4000); halves take 30,000 each:
    [2000,32000) [4000,34000); returns [32000,34000) [34000,36000); reduce of 2 partials
    3,000 -> 39,000. The split pays one more transfer (2,000) and a larger reduce (+1,000).
    """
    wl = Workload(layer_ids=(0,), tokens_per_expert=((10, 0),), num_tokens=10)
    whole = simulate(hw, model, _single_expert_plan(False), wl, ALL, include_timeline=True)
    split = simulate(hw, model, _single_expert_plan(True), wl, ALL, include_timeline=True)
    assert whole.valid and split.valid, (whole.violations, split.violations)
    assert whole.makespan_cycles == 66000
    assert split.makespan_cycles == 39000
    s = spans(split)
    assert s["e0a"] == (2000, 32000) and s["e0b"] == (4000, 34000)
    assert s["reduce"] == (36000, 39000)
    assert split.bytes_moved == whole.bytes_moved + 2000


def test_tensor_parallel_loses_when_transfers_dominate(model: ModelSpec) -> None:
    """Slow link (1 MB/s): each 1,000 B transfer costs 1,001,000 cycles, so the split's
    extra dispatch and return (2,002,000) outweigh the 30,000 cycles of compute it saves."""
    slow = tiny_hardware(bandwidth_bytes_per_s=1e6)
    wl = Workload(layer_ids=(0,), tokens_per_expert=((10, 0),), num_tokens=10)
    whole = simulate(slow, model, _single_expert_plan(False), wl, ALL)
    split = simulate(slow, model, _single_expert_plan(True), wl, ALL)
    assert whole.valid and split.valid
    # whole: 1,001,000 + 60,000 + 1,001,000 + 2,000
    assert whole.makespan_cycles == 2_064_000
    # split: dispatches end 1,001,000 / 2,002,000; shards end 1,031,000 / 2,032,000; the
    # return from a waits for the bus: [2,002,000, 3,003,000), from b [3,003,000, 4,004,000);
    # reduce 3,000.
    assert split.makespan_cycles == 4_007_000
    assert split.makespan_cycles > whole.makespan_cycles


def test_pinned_start_times_are_honoured(hw: Hardware, model: ModelSpec) -> None:
    """A task pinned at 5,000 waits for it even though its resource is free at 0."""
    plan = Plan(tasks=(dispatch("to_a", "a").model_copy(update={"start_cycle": 5000}),))
    report = simulate(hw, model, plan, include_timeline=True)
    assert report.valid
    assert spans(report) == {"to_a": (5000, 7000)}


def test_explicit_order_overrides_list_order(hw: Hardware, model: ModelSpec) -> None:
    """Plan.order puts b's dispatch first on the bus."""
    plan = Plan(
        tasks=(dispatch("to_a", "a"), dispatch("to_b", "b")),
        order={"bus": ("to_b", "to_a")},
    )
    report = simulate(hw, model, plan, include_timeline=True)
    assert report.valid
    assert spans(report) == {"to_b": (0, 2000), "to_a": (2000, 4000)}


def test_weight_transfer_then_compute_counts_hits_and_misses(model: ModelSpec) -> None:
    """A demand load of expert 1 to the GPU is a miss; expert 0 resident at start is a hit.

    Weights 3,000 B over the bus: 1,000 + 3,000 = 4,000 cycles. The GPU shard of expert 1
    waits for them: [4000, 64000).
    """
    hw = Hardware(
        name="offload",
        devices=(tiny_device("gpu", "gpu"), tiny_device("cpu", "cpu")),
        memories=(
            Memory(id="gpu_mem", capacity_bytes=6000),
            Memory(id="cpu_mem", capacity_bytes=10**6),
        ),
        links=(
            Link(
                id="pcie",
                src_device_ids=("cpu",),
                dst_device_ids=("gpu",),
                bandwidth_bytes_per_s=1e9,
                latency_s=1e-6,
            ),
        ),
        home_device_id="gpu",
    )
    residency = Residency(
        by_memory={"gpu_mem": (WeightSlice(layer=0, expert=0),), "cpu_mem": (WeightSlice(),)}
    )
    plan = Plan(
        tasks=(
            TransferTask(
                id="load1", link_id="pcie", src_device_id="cpu", dst_device_id="gpu",
                payload="weights", layer=0, weights=WeightSlice(layer=0, expert=1),
                purpose="demand",
            ),
            ComputeTask(id="e0", device_id="gpu", op="expert", layer=0, expert=0, num_tokens=10),
            ComputeTask(
                id="e1", device_id="gpu", op="expert", layer=0, expert=1, num_tokens=10,
                after=("load1",),
            ),
        )
    )  # fmt: skip
    wl = Workload(layer_ids=(0,), tokens_per_expert=((10, 10),), num_tokens=20)
    report = simulate(hw, model, plan, wl, residency, include_timeline=True)
    assert report.valid, report.violations
    assert spans(report)["load1"] == (0, 4000)
    assert spans(report)["e1"] == (60000, 120000)  # the GPU runs e0 first, in list order
    assert (report.cache_hits, report.cache_misses) == (1, 1)
    assert report.peak_memory_bytes["gpu_mem"] == 6000
