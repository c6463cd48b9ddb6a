"""One plan per violation kind, each built to break exactly that rule and no other."""

from __future__ import annotations

import typing

import pytest

from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, EvictTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.report import ViolationCode
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload

ALL = Residency(by_memory={"a_mem": (WeightSlice(),), "b_mem": (WeightSlice(),)})
WL = Workload(layer_ids=(0,), tokens_per_expert=((10, 0),), num_tokens=10)


def to(
    dev: str, tid: str = "to", link: str = "bus", layer: int = 0, after: tuple[str, ...] = ()
) -> TransferTask:
    return TransferTask(
        id=tid, link_id=link, src_device_id="gpu", dst_device_id=dev,
        payload="activations", layer=layer, num_tokens=10, after=after,
    )  # fmt: skip


def back(dev: str, after: tuple[str, ...], tid: str = "back", layer: int = 0) -> TransferTask:
    return TransferTask(
        id=tid, link_id="bus", src_device_id=dev, dst_device_id="gpu",
        payload="partial_sums", layer=layer, num_tokens=10, after=after,
    )  # fmt: skip


def shard(
    tid: str = "e0", dev: str = "a", after: tuple[str, ...] = ("to",), **kw: object
) -> ComputeTask:
    fields: dict[str, object] = {
        "id": tid, "device_id": dev, "op": "expert", "layer": 0, "expert": 0,
        "num_tokens": 10, "after": after,
    }  # fmt: skip
    fields.update(kw)
    return ComputeTask.model_validate(fields)


def good_tasks() -> list[ComputeTask | TransferTask | EvictTask]:
    return [to("a"), shard(), back("a", ("e0",))]


def run(hw: Hardware, model: ModelSpec, tasks: typing.Sequence[object], **kw: object):  # type: ignore[no-untyped-def]
    plan_fields: dict[str, object] = {"tasks": tuple(tasks)}
    plan_fields.update({k: v for k, v in kw.items() if k == "order"})
    plan = Plan.model_validate(plan_fields)
    residency = kw.get("residency", ALL)
    workload = kw.get("workload", WL)
    return simulate(hw, model, plan, workload, residency)  # type: ignore[arg-type]


def test_the_base_plan_is_valid(hw: Hardware, model: ModelSpec) -> None:
    report = run(hw, model, good_tasks())
    assert report.valid, report.violations


def only(report, code: str) -> None:  # type: ignore[no-untyped-def]
    assert report.codes() == {code}, report.violations
    assert not report.valid


def test_duplicate_task(hw: Hardware, model: ModelSpec) -> None:
    only(run(hw, model, [*good_tasks(), back("a", ("e0",))]), "duplicate_task")


def test_unknown_device(hw: Hardware, model: ModelSpec) -> None:
    extra = ComputeTask(id="x", device_id="nowhere", op="reduce", layer=0, num_tokens=1)
    only(run(hw, model, [*good_tasks(), extra]), "unknown_device")


def test_unknown_link(hw: Hardware, model: ModelSpec) -> None:
    only(run(hw, model, [*good_tasks(), to("b", "x", link="nolink")]), "unknown_link")


def test_unknown_memory(hw: Hardware, model: ModelSpec) -> None:
    evict = EvictTask(id="x", memory_id="nomem", weights=WeightSlice(layer=0, expert=1))
    only(run(hw, model, [*good_tasks(), evict]), "unknown_memory")


def test_unknown_task_in_after(hw: Hardware, model: ModelSpec) -> None:
    only(
        run(hw, model, [to("a"), shard(after=("to", "ghost")), back("a", ("e0",))]), "unknown_task"
    )


def test_link_endpoint(hw: Hardware, model: ModelSpec) -> None:
    """'down_a' only carries gpu -> a."""
    only(run(hw, model, [*good_tasks(), to("b", "x", link="down_a")]), "link_endpoint")


def test_invalid_slice(hw: Hardware, model: ModelSpec) -> None:
    wl = Workload(layer_ids=(0,), tokens_per_expert=((10, 0),), num_tokens=10)
    bad = shard("e9", ffn_start=5, ffn_end=20)
    report = run(hw, model, [*good_tasks(), bad], workload=wl)
    only(report, "invalid_slice")


def test_resource_order(hw: Hardware, model: ModelSpec) -> None:
    """The bus's order lists a compute task of device a."""
    only(run(hw, model, good_tasks(), order={"bus": ("to", "back", "e0")}), "resource_order")


def test_coverage_missing_tokens(hw: Hardware, model: ModelSpec) -> None:
    half = shard(num_tokens=5)
    only(run(hw, model, [to("a"), half, back("a", ("e0",))]), "coverage")


def test_coverage_missing_columns(hw: Hardware, model: ModelSpec) -> None:
    """Only columns [0, 5) of expert 0 are computed."""
    part = shard(ffn_start=0, ffn_end=5)
    only(run(hw, model, [to("a"), part, back("a", ("e0",))]), "coverage")


def test_coverage_computed_twice(hw: Hardware, model: ModelSpec) -> None:
    twice = [to("a"), shard(), shard("e0bis"), back("a", ("e0", "e0bis"))]
    only(run(hw, model, twice), "coverage")


def test_weights_not_resident(hw: Hardware, model: ModelSpec) -> None:
    only(run(hw, model, good_tasks(), residency=Residency()), "weights_not_resident")


def test_memory_capacity(hw: Hardware, model: ModelSpec) -> None:
    """a holds 12,000 B; loading 3 more expert slices of 3,000 B exceeds 20,000 B."""
    loads = [
        TransferTask(
            id=f"w{i}", link_id="bus", src_device_id="b", dst_device_id="a", payload="weights",
            layer=1, weights=WeightSlice(layer=1, expert=i % 2, ffn_start=0), purpose="prefetch",
        )
        for i in range(3)
    ]  # fmt: skip
    only(run(hw, model, [*good_tasks(), *loads]), "memory_capacity")


def test_eviction_makes_room(hw: Hardware, model: ModelSpec) -> None:
    """The same loads fit when two resident slices are evicted first."""
    evicts = [
        EvictTask(id=f"x{e}", memory_id="a_mem", weights=WeightSlice(layer=1, expert=e))
        for e in range(2)
    ]
    loads = [
        TransferTask(
            id=f"w{i}", link_id="bus", src_device_id="b", dst_device_id="a", payload="weights",
            layer=1, weights=WeightSlice(layer=1, expert=i % 2), after=("x0", "x1"),
        )
        for i in range(3)
    ]  # fmt: skip
    report = run(hw, model, [*good_tasks(), *evicts, *loads])
    assert report.valid, report.violations
    assert report.peak_memory_bytes["a_mem"] == 15000


def test_dependency_compute_before_dispatch(hw: Hardware, model: ModelSpec) -> None:
    """The shard does not wait for its activations."""
    only(run(hw, model, [to("a"), shard(after=()), back("a", ("e0",))]), "dependency")


def test_dependency_result_never_returned(hw: Hardware, model: ModelSpec) -> None:
    only(run(hw, model, [to("a"), shard()]), "dependency")


def test_dependency_layer_order(hw: Hardware, model: ModelSpec) -> None:
    """Layer 1's dispatch (on its own link, so the bus order cannot hold it back) runs while
    layer 0's shard is still computing."""
    wl = Workload(layer_ids=(0, 1), tokens_per_expert=((10, 0), (0, 0)), num_tokens=10)
    early = to("a", "to1", link="down_a", layer=1, after=("to",))
    only(run(hw, model, [*good_tasks(), early], workload=wl), "dependency")


def test_dependency_reduce_before_partials(hw: Hardware, model: ModelSpec) -> None:
    red = ComputeTask(id="red", device_id="gpu", op="reduce", layer=0, num_tokens=10, after=("to",))
    only(run(hw, model, [*good_tasks(), red]), "dependency")


def test_deadlock(hw: Hardware, model: ModelSpec) -> None:
    """Each dispatch waits for the other."""
    cycle = [to("a", "t1", after=("t2",)), to("b", "t2", after=("t1",))]
    only(run(hw, model, cycle, workload=None), "deadlock")


def test_resource_conflict(hw: Hardware, model: ModelSpec) -> None:
    """Two dispatches both pinned at cycle 0 on the one-lane bus."""
    pinned = [
        to("a").model_copy(update={"start_cycle": 0}),
        shard(),
        back("a", ("e0",)),
        to("b", "to_b").model_copy(update={"start_cycle": 0}),
    ]
    only(run(hw, model, pinned), "resource_conflict")


def test_pinned_start_before_dependencies(hw: Hardware, model: ModelSpec) -> None:
    early = shard().model_copy(update={"start_cycle": 10})
    only(run(hw, model, [to("a"), early, back("a", ("e0",))]), "dependency")


def test_every_code_has_a_test() -> None:
    """The Literal of codes and the tests above stay in step."""
    tested = {
        "duplicate_task", "unknown_device", "unknown_link", "unknown_memory", "unknown_task",
        "link_endpoint", "invalid_slice", "resource_order", "coverage", "weights_not_resident",
        "memory_capacity", "dependency", "deadlock", "resource_conflict",
    }  # fmt: skip
    assert set(typing.get_args(ViolationCode)) == tested


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_bad_numbers_are_refused_at_the_edge(bad: float) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Workload(
            layer_ids=(0,),
            tokens_per_expert=((10, 0),),
            num_tokens=10,
            gate_weight_sum=((bad, 0.0),),
        )
