"""Every violation's whole record (code, task, resource, cycle, message), not only its code:
a runtime reads these to say what went wrong where, so each field is pinned on a plan that
breaks one rule (the plans of tests/test_executor_violations.py and a few more).

Cycles, on tests/tiny.py's figures: the dispatch of 10 rows takes 2,000 cycles, so the shard
finds its weights missing at 2,000; the bus then returns the partial sums at 62,000-64,000 and
carries 3,000-byte loads of 4,000 cycles each, so the third starts at 72,000 with a_mem at
12,000 + 3 x 3,000 = 21,000 bytes.
"""

from __future__ import annotations

import pytest

from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, EvictTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.report import Report
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from tests.test_executor_violations import ALL, back, good_tasks, run, shard, to

SHARED = {"num_shared_experts": 1, "shared_expert_ffn_size": 10}


def _load(i: int) -> TransferTask:
    return TransferTask(
        id=f"w{i}", link_id="bus", src_device_id="b", dst_device_id="a", payload="weights",
        layer=1, weights=WeightSlice(layer=1, expert=i % 2), purpose="prefetch",
    )  # fmt: skip


def _shared(**kw: object) -> ComputeTask:
    return ComputeTask.model_validate(
        {"id": "s", "device_id": "gpu", "op": "shared_expert", "layer": 0, "num_tokens": 1, **kw}
    )


def _case(name: str, hw: Hardware, model: ModelSpec) -> Report:
    good = good_tasks()
    if name == "duplicate_task":
        return run(hw, model, [*good, back("a", ("e0",))])
    if name == "unknown_device_compute":
        extra = ComputeTask(id="x", device_id="nowhere", op="reduce", layer=0, num_tokens=1)
        return run(hw, model, [*good, extra])
    if name == "unknown_device_transfer":
        extra = TransferTask(
            id="x", link_id="bus", src_device_id="gpu", dst_device_id="zz",
            payload="activations", layer=0, num_tokens=1,
        )  # fmt: skip
        return run(hw, model, [*good, extra])
    if name == "unknown_link":
        return run(hw, model, [*good, to("b", "x", link="nolink")])
    if name == "unknown_memory":
        evict = EvictTask(id="x", memory_id="nomem", weights=WeightSlice(layer=0, expert=1))
        return run(hw, model, [*good, evict])
    if name == "residency_unknown_memory":
        residency = Residency(by_memory={**ALL.by_memory, "zz_mem": (WeightSlice(),)})
        return run(hw, model, good, residency=residency)
    if name == "link_endpoint":
        return run(hw, model, [*good, to("b", "x", link="down_a")])
    if name == "slice_beyond_width":
        return run(hw, model, [*good, shard("e9", ffn_start=5, ffn_end=20)])
    if name == "unknown_expert":
        return run(hw, model, [*good, shard("e9", expert=7)])
    if name == "eviction_of_many":
        return run(hw, model, [*good, EvictTask(id="x", memory_id="a_mem", weights=WeightSlice())])
    if name == "weights_of_unknown_layer":
        bad = _load(0).model_copy(update={"id": "w", "weights": WeightSlice(layer=5, expert=0)})
        return run(hw, model, [*good, bad])
    if name == "shared_slice_beyond":
        return run(hw, model.model_copy(update=SHARED), [*good, _shared(ffn_start=5, ffn_end=15)])
    if name == "shared_start_beyond":
        return run(hw, model.model_copy(update=SHARED), [*good, _shared(ffn_start=10)])
    if name == "weights_not_resident":
        return run(hw, model, good, residency=Residency())
    if name == "memory_capacity":
        return run(hw, model, [*good, *(_load(i) for i in range(3))])
    if name == "resource_conflict":
        pinned = [to("a").model_copy(update={"start_cycle": 0}), shard(), back("a", ("e0",))]
        return run(hw, model, [*pinned, to("b", "to_b").model_copy(update={"start_cycle": 0})])
    if name == "coverage_twice":
        return run(hw, model, [to("a"), shard(), shard("e0bis"), back("a", ("e0", "e0bis"))])
    if name == "coverage_half":
        return run(hw, model, [to("a"), shard(num_tokens=5), back("a", ("e0",))])
    if name == "deadlock":
        cycle = [to("a", "t1", after=("t2",)), to("b", "t2", after=("t1",))]
        return run(hw, model, cycle, workload=None)
    if name == "resource_order":
        return run(hw, model, good, order={"bus": ("to", "back", "e0")})
    if name == "layer_order":
        wl = Workload(layer_ids=(0, 1), tokens_per_expert=((10, 0), (0, 0)), num_tokens=10)
        early = to("a", "to1", link="down_a", layer=1, after=("to",))
        return run(hw, model, [*good, early], workload=wl)
    if name == "compute_before_dispatch":
        return run(hw, model, [to("a"), shard(after=()), back("a", ("e0",))])
    if name == "never_returned":
        return run(hw, model, [to("a"), shard()])
    if name == "reduce_before_partials":
        red = ComputeTask(
            id="red", device_id="gpu", op="reduce", layer=0, num_tokens=10, after=("to",)
        )
        return run(hw, model, [*good, red])
    if name == "fused_attention_before_partials":
        # Layer 1's attention adds layer 0's partial sums in its prologue, but waits only on
        # the dispatch: it starts before they return (and so before layer 0 ends).
        attn = ComputeTask(
            id="attn", device_id="gpu", op="attention", layer=1, num_tokens=10, num_partials=2,
            after=("to",),
        )  # fmt: skip
        return run(hw, model, [*good, attn])
    if name == "order_twice":
        return run(hw, model, good, order={"bus": ("to", "to", "back")})
    if name == "order_unknown_resource":
        return run(hw, model, good, order={"zz": ("to",)})
    if name == "pinned_before_dependencies":
        return run(hw, model, [to("a"), shard().model_copy(update={"start_cycle": 10}), *good[2:]])
    assert name == "unknown_task"
    return run(hw, model, [to("a"), shard(after=("to", "ghost")), back("a", ("e0",))])


DEADLOCK = "task never became ready (cycle through 'after' and order)"
RECORDS: dict[str, list[tuple[str, str | None, str | None, int | None, str]]] = {
    "duplicate_task": [("duplicate_task", "back", None, None, "task id 'back' used twice")],
    "unknown_device_compute": [
        ("unknown_device", "x", "nowhere", None, "unknown device 'nowhere'")
    ],
    "unknown_device_transfer": [("unknown_device", "x", "zz", None, "unknown device 'zz'")],
    "unknown_link": [("unknown_link", "x", "nolink", None, "unknown link 'nolink'")],
    "unknown_memory": [("unknown_memory", "x", "nomem", None, "unknown memory 'nomem'")],
    "residency_unknown_memory": [
        ("unknown_memory", None, "zz_mem", None, "residency names unknown memory 'zz_mem'")
    ],
    "link_endpoint": [
        ("link_endpoint", "x", "down_a", None, "link 'down_a' does not carry gpu -> b")
    ],
    "slice_beyond_width": [("invalid_slice", "e9", None, None, "FFN slice beyond width 10")],
    "unknown_expert": [("invalid_slice", "e9", None, None, "expert 7 >= 2")],
    "eviction_of_many": [
        ("invalid_slice", "x", None, None, "an eviction drops one layer's expert slice")
    ],
    "weights_of_unknown_layer": [("invalid_slice", "w", None, None, "layer 5 >= num_moe_layers 2")],
    "shared_slice_beyond": [("invalid_slice", "s", None, None, "slice beyond shared width 10")],
    "shared_start_beyond": [("invalid_slice", "s", None, None, "slice beyond shared width 10")],
    "weights_not_resident": [
        ("weights_not_resident", "e0", "a", 2000, "layer 0 expert 0 cols [0, 10) not in 'a_mem'")
    ],
    "memory_capacity": [
        ("memory_capacity", "w2", "a_mem", 72000, "'a_mem' holds 21000 bytes > capacity 20000")
    ],
    "resource_conflict": [
        ("resource_conflict", "to_b", "bus", 0, "pinned start 0 but 'bus' is busy until 64000")
    ],
    "coverage_twice": [
        (
            "coverage",
            None,
            None,
            None,
            "layer 0 expert 0 cols [0, 10): 20 tokens computed, 10 routed",
        )
    ],
    "coverage_half": [
        (
            "coverage",
            None,
            None,
            None,
            "layer 0 expert 0 cols [0, 10): 5 tokens computed, 10 routed",
        )
    ],
    "deadlock": [
        ("deadlock", "t1", "bus", None, DEADLOCK),
        ("deadlock", "t2", "bus", None, DEADLOCK),
    ],
    "resource_order": [
        ("resource_order", "e0", "bus", None, "order of 'bus' lists a task that runs on 'a'")
    ],
    "unknown_task": [("unknown_task", "e0", None, None, "'after' names unknown task 'ghost'")],
    "layer_order": [
        (
            "dependency",
            None,
            None,
            2000,
            "micro-batch 0: layer 1 starts at 2000 before layer 0 ends at 64000",
        )
    ],
    "compute_before_dispatch": [
        ("dependency", "e0", "a", 0, "shard on 'a' starts before its activations arrive")
    ],
    "never_returned": [
        (
            "dependency",
            "e0",
            "a",
            62000,
            "result of the shard on 'a' is never sent back after it ends",
        )
    ],
    "reduce_before_partials": [
        (
            "dependency",
            "red",
            "gpu",
            2000,
            "reduce starts at 2000 before its partial sums arrive at 64000",
        )
    ],
    "fused_attention_before_partials": [
        (
            "dependency",
            None,
            None,
            2000,
            "micro-batch 0: layer 1 starts at 2000 before layer 0 ends at 64000",
        ),
        (
            "dependency",
            "attn",
            "gpu",
            2000,
            "attention starts at 2000 before its partial sums arrive at 64000",
        ),
    ],
    "order_twice": [("resource_order", "to", "bus", None, "order of 'bus' lists the task twice")],
    "order_unknown_resource": [
        ("unknown_device", None, "zz", None, "order names unknown resource 'zz'")
    ],
    "pinned_before_dependencies": [
        ("dependency", "e0", "a", 10, "pinned start 10 but dependencies end at 2000")
    ],
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_violation_records(hw: Hardware, model: ModelSpec, name: str) -> None:
    report = _case(name, hw, model)
    got = [(v.code, v.task_id, v.resource_id, v.cycle, v.message) for v in report.violations]
    assert got == RECORDS[name]
    assert not report.valid


def test_a_shared_slice_inside_the_width_is_valid(hw: Hardware, model: ModelSpec) -> None:
    report = run(
        hw, model.model_copy(update=SHARED), [*good_tasks(), _shared(ffn_start=5, ffn_end=10)]
    )
    assert report.valid, report.violations


def test_partial_eviction_timeline_and_cache_hits(hw: Hardware, model: ModelSpec) -> None:
    """The GPU holds layer 0's expert 0 and computes it in two halves (30,000 cycles each), then
    layer 1's expert 1 columns [0, 3) after loading them (900 bytes: 1,900 cycles): 3 hits.
    'a' drops columns [3, 6) of layer 1's expert 1: [6, 10) still runs there, [2, 4) does not
    (column 3 is gone). Timeline labels name the op, expert and slice."""
    residency = Residency(
        by_memory={"gpu_mem": (WeightSlice(layer=0, expert=0),), "a_mem": (WeightSlice(),)}
    )
    l1 = {"layer": 1, "expert": 1, "num_tokens": 1}
    tasks = [
        ComputeTask(id="g0", device_id="gpu", op="expert", layer=0, expert=0, num_tokens=10,
                    ffn_end=5),
        ComputeTask(id="g1", device_id="gpu", op="expert", layer=0, expert=0, num_tokens=10,
                    ffn_start=5, ffn_end=10, after=("g0",)),
        EvictTask(id="x", memory_id="a_mem",
                  weights=WeightSlice(layer=1, expert=1, ffn_start=3, ffn_end=6)),
        TransferTask(id="w", link_id="bus", src_device_id="a", dst_device_id="gpu",
                     payload="weights", layer=1,
                     weights=WeightSlice(layer=1, expert=1, ffn_end=3), after=("x",)),
        ComputeTask(id="g2", device_id="gpu", op="expert", ffn_end=3, after=("w", "g1"), **l1),
        ComputeTask(id="a1", device_id="a", op="expert", ffn_start=6, ffn_end=10, after=("x",),
                    **l1),
        ComputeTask(id="a2", device_id="a", op="expert", ffn_start=2, ffn_end=4, after=("a1",),
                    **l1),
    ]  # fmt: skip
    report = simulate(hw, model, Plan(tasks=tuple(tasks)), None, residency, include_timeline=True)
    assert [v.code for v in report.violations if v.code != "dependency"] == ["weights_not_resident"]
    missing = report.violations[0]
    assert (missing.task_id, missing.cycle) == ("a2", 2400)
    assert (report.cache_hits, report.cache_misses) == (3, 0)
    assert report.peak_memory_bytes == {"gpu_mem": 3900.0, "a_mem": 12000.0, "b_mem": 0.0}
    spans = [
        (s.task_id, s.resource_id, s.start_cycle, s.end_cycle, s.label, s.layer)
        for s in report.timeline
    ]
    assert spans == [
        ("g0", "gpu", 0, 30000, "expert e0 [0:5]", 0),
        ("g1", "gpu", 30000, 60000, "expert e0 [5:10]", 0),
        ("x", "a_mem", 0, 0, "evict e1", 1),
        ("w", "bus", 0, 1900, "weights e1 a->gpu", 1),
        ("g2", "gpu", 60000, 61800, "expert e1 [0:3]", 1),
        ("a1", "a", 0, 2400, "expert e1 [6:10]", 1),
        ("a2", "a", 2400, 3600, "expert e1 [2:4]", 1),
    ]
