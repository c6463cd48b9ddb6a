"""Exact cases for rules of the executor that its surviving mutants showed no test pinned
(``python -m tests.mutants --groups executor``; docs/mutants.json). Figures by hand from the
tiny model and hardware of tests/tiny.py."""

from __future__ import annotations

from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, EvictTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from tests.test_executor_violations import back, good_tasks, run, shard, to


def test_a_grouped_gemm_covers_its_consecutive_experts(hw: Hardware, model: ModelSpec) -> None:
    """One launch on 'a' computing expert 0 (6 rows) and expert 1 (4 rows): the workload routes
    exactly that, so the plan is valid; each expert's rows are counted against its own column."""
    wl = Workload(layer_ids=(0,), tokens_per_expert=((6, 4),), num_tokens=10)
    grouped = shard(group_rows=(6, 4))
    report = run(hw, model, [to("a"), grouped, back("a", ("e0",))], workload=wl)
    assert report.valid, report.violations
    # The same launch against a workload that routes the 4 rows to expert 0 is a coverage error.
    other = Workload(layer_ids=(0,), tokens_per_expert=((10, 0),), num_tokens=10)
    report = run(hw, model, [to("a"), grouped, back("a", ("e0",))], workload=other)
    assert report.codes() == {"coverage"}, report.violations


def test_a_grouped_gemm_past_the_last_expert_is_an_invalid_slice(
    hw: Hardware, model: ModelSpec
) -> None:
    """Experts 1 and 2 of a 2-expert model: the group's last expert (2) does not exist."""
    wl = Workload(layer_ids=(0,), tokens_per_expert=((0, 6),), num_tokens=6)
    grouped = shard(expert=1, num_tokens=10, group_rows=(6, 4))
    report = run(hw, model, [to("a"), grouped, back("a", ("e0",))], workload=wl)
    bad = [v for v in report.violations if v.code == "invalid_slice"]
    assert [(v.task_id, v.message) for v in bad] == [("e0", "expert 2 >= 2")]


def test_unknown_residency_memory_names_it(hw: Hardware, model: ModelSpec) -> None:
    """Both places a residency names memories: what they hold and the bytes they reserve."""
    residency = Residency(
        by_memory={"a_mem": (WeightSlice(),), "nowhere": (WeightSlice(),)},
        reserved_bytes={"a_mem": 10.0, "elsewhere": 10.0},
    )
    report = run(hw, model, good_tasks(), residency=residency)
    assert [(v.code, v.resource_id) for v in report.violations] == [
        ("unknown_memory", "nowhere"),
        ("unknown_memory", "elsewhere"),
    ]
    assert [v.message for v in report.violations] == [
        "residency names unknown memory 'nowhere'",
        "residency names unknown memory 'elsewhere'",
    ]


def test_an_order_for_a_known_resource_without_tasks_is_valid(
    hw: Hardware, model: ModelSpec
) -> None:
    """'b', 'down_a' and 'b_mem' exist but run nothing here: an empty order for them is no
    error (only an order naming a resource the hardware lacks is)."""
    report = run(hw, model, good_tasks(), order={"b": (), "down_a": (), "b_mem": ()})
    assert report.valid, report.violations
    report = run(hw, model, good_tasks(), order={"nowhere": ()})
    assert [(v.code, v.resource_id) for v in report.violations] == [("unknown_device", "nowhere")]


def test_twenty_one_stuck_tasks_report_twenty_and_one_more(hw: Hardware, model: ModelSpec) -> None:
    """A ring of 21 reduces, each after the next: 20 named deadlocks and '1 more'."""
    n = 21
    ring = [
        ComputeTask(id=f"r{i}", device_id="gpu", op="reduce", layer=0, num_tokens=1,
                    after=(f"r{(i + 1) % n}",))
        for i in range(n)
    ]  # fmt: skip
    report = simulate(hw, model, Plan(tasks=tuple(ring)))
    dead = [v for v in report.violations if v.code == "deadlock"]
    assert len(dead) == 21
    assert [v.task_id for v in dead[:20]] == [f"r{i}" for i in range(20)]
    assert dead[20].task_id is None and dead[20].message == "1 more tasks never became ready"


def test_expert_busy_cycles_and_imbalance(hw: Hardware, model: ModelSpec) -> None:
    """The base plan's one shard on 'a': 60,000 expert cycles on 'a', none on 'b'; across the two
    NDP devices mean 30,000, max/mean 2, standard deviation 30,000 (CV 1). The GPU runs no
    expert: its one-device imbalance is max/mean 1, CV 0 by convention."""
    report = run(hw, model, good_tasks())
    by_id = {d.device_id: d for d in report.devices}
    assert by_id["a"].expert_busy_cycles == 60_000
    assert by_id["a"].busy_cycles == 60_000
    assert by_id["b"].expert_busy_cycles == 0
    assert by_id["gpu"].expert_busy_cycles == 0
    imb = {i.kind: (i.num_devices, i.max_over_mean, i.cv) for i in report.imbalance}
    assert imb == {"gpu": (1, 1.0, 0.0), "ndp": (2, 2.0, 1.0)}


def _reduce(tid: str, dev: str) -> ComputeTask:
    return ComputeTask(id=tid, device_id=dev, op="reduce", layer=0, num_tokens=10, num_partials=2)


def test_same_cycle_start_attempts_run_first_scheduled_first(
    hw: Hardware, model: ModelSpec
) -> None:
    """Two reduces of equal length end at the same cycle: 'q' on 'b' (started first: 'b' is
    tried before 'gpu' at cycle 0) and 'p' on the GPU. The eviction waits for 'q', the weight
    load for 'p'. At that cycle 'q''s end is handled first, so 'a_mem' is tried before
    'down_a': the eviction frees expert 0's 3,000 bytes before expert 1's 3,000 are reserved,
    and 'a_mem' (17,000 reserved + expert 0 = its 20,000 capacity) never overflows. Tried in
    resource order instead ('down_a' is listed first) the load would reserve 23,000 bytes."""
    load = TransferTask(
        id="load", link_id="down_a", src_device_id="gpu", dst_device_id="a", payload="weights",
        layer=0, weights=WeightSlice(layer=0, expert=1), after=("p",),
    )  # fmt: skip
    evict = EvictTask(
        id="evict", memory_id="a_mem", weights=WeightSlice(layer=0, expert=0), after=("q",)
    )
    plan = Plan(tasks=(load, evict, _reduce("q", "b"), _reduce("p", "gpu")))
    residency = Residency(
        by_memory={"a_mem": (WeightSlice(layer=0, expert=0),)}, reserved_bytes={"a_mem": 17_000}
    )
    report = simulate(hw, model, plan, None, residency, include_timeline=True)
    assert report.valid, report.violations
    spans = {s.task_id: (s.start_cycle, s.end_cycle) for s in report.timeline}
    end = spans["q"][1]
    assert spans["p"][1] == end and spans["q"][0] == spans["p"][0] == 0
    assert spans["evict"][0] == spans["load"][0] == end
    assert report.peak_memory_bytes["a_mem"] == 20_000


def test_a_grouped_gemm_reads_only_the_experts_it_has_rows_for(
    hw: Hardware, model: ModelSpec
) -> None:
    """Columns [0, 5) of experts 0 and 1 in one launch on 'a', which holds expert 1 only:
    with rows (0, 10) the group reads expert 1's slice alone (the other half in a shard of
    its own), and the plan is valid; with rows (4, 6) it reads expert 0's slice too, which
    'a' does not hold."""
    only_one = Residency(by_memory={"a_mem": (WeightSlice(layer=0, expert=1),)})
    rest = shard("e1", expert=1, ffn_start=5, ffn_end=10)
    grouped = shard(ffn_start=0, ffn_end=5, group_rows=(0, 10))
    wl = Workload(layer_ids=(0,), tokens_per_expert=((0, 10),), num_tokens=10)
    tasks = [to("a"), grouped, rest, back("a", ("e0", "e1"))]
    report = run(hw, model, tasks, workload=wl, residency=only_one)
    assert report.valid, report.violations
    both = shard(ffn_start=0, ffn_end=5, group_rows=(4, 6))
    wl = Workload(layer_ids=(0,), tokens_per_expert=((4, 6),), num_tokens=10)
    report = run(hw, model, [to("a"), both, back("a", ("e0",))], workload=wl, residency=only_one)
    assert "weights_not_resident" in report.codes(), report.violations
