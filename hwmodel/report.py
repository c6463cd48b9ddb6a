"""What the executor says about a plan: timing, utilization, traffic, and every violation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hwmodel.spec import Frozen

ViolationCode = Literal[
    "duplicate_task",  # two tasks share an id
    "unknown_device",  # a task names a device the hardware lacks
    "unknown_link",  # a transfer names a link the hardware lacks
    "unknown_memory",  # an eviction or residency names a memory the hardware lacks
    "unknown_task",  # 'after' or 'order' names a task the plan lacks
    "link_endpoint",  # a transfer's devices are not this link's source/destination
    "invalid_slice",  # an FFN slice outside [0, expert_ffn_size) or an unknown expert/layer
    "resource_order",  # Plan.order lists a task on a resource it does not run on, or twice
    "coverage",  # an expert's routed tokens are not computed exactly once across its shards
    "weights_not_resident",  # a shard ran where its weights were not
    "memory_capacity",  # a memory held more than its capacity
    "dependency",  # data-flow order broken (dispatch -> compute -> combine; layer order)
    "deadlock",  # tasks never became ready (a cycle through 'after' and resource order)
    "resource_conflict",  # a pinned start_cycle found its resource busy
]


class Violation(Frozen):
    """One broken rule, with where and when."""

    code: ViolationCode = Field(description="Which rule.")
    message: str = Field(description="What happened, in words.")
    task_id: str | None = Field(default=None, description="Task involved, if one.")
    resource_id: str | None = Field(default=None, description="Device, link or memory involved.")
    cycle: int | None = Field(default=None, description="When, in reference-clock cycles.")


class TaskSpan(Frozen):
    """When one task ran."""

    task_id: str = Field(description="Task id.")
    resource_id: str = Field(description="Device, link or memory it ran on.")
    lane: int = Field(default=0, description="Link lane (0 for devices).")
    start_cycle: int = Field(description="Start.")
    end_cycle: int = Field(description="End (exclusive).")
    label: str = Field(description="Short description (op or payload, layer, expert).")
    layer: int | None = Field(default=None, description="MoE layer.")
    micro_batch: int = Field(default=0, description="Micro-batch.")


class DeviceStats(Frozen):
    """Per-device work."""

    device_id: str = Field(description="Device id.")
    kind: str = Field(description="gpu, ndp or cpu.")
    busy_cycles: int = Field(description="Cycles spent on compute tasks.")
    expert_busy_cycles: int = Field(description="Cycles spent on expert shards.")
    utilization: float = Field(description="busy_cycles / makespan_cycles.")
    num_tasks: int = Field(description="Compute tasks run.")


class LinkStats(Frozen):
    """Per-link traffic."""

    link_id: str = Field(description="Link id.")
    bytes_moved: float = Field(description="Bytes carried.")
    busy_cycles: int = Field(description="Lane-cycles spent on transfers.")
    utilization: float = Field(description="busy_cycles / (num_lanes * makespan_cycles).")
    num_transfers: int = Field(description="Transfers carried.")


class Imbalance(Frozen):
    """Load spread of expert work over the devices of one kind."""

    kind: str = Field(description="Device kind.")
    num_devices: int = Field(description="Devices of that kind.")
    max_over_mean: float = Field(description="Max / mean expert-busy cycles (1.0 = balanced).")
    cv: float = Field(description="Coefficient of variation (std-dev / mean).")


class Report(Frozen):
    """The executor's account of one plan on one hardware."""

    valid: bool = Field(description="True when there are no violations.")
    makespan_cycles: int = Field(description="End of the last task.")
    makespan_s: float = Field(description="makespan_cycles / clock_hz.")
    clock_hz: float = Field(description="Reference clock.")
    num_tasks: int = Field(description="Tasks simulated.")
    devices: tuple[DeviceStats, ...] = Field(description="Per-device work.")
    links: tuple[LinkStats, ...] = Field(description="Per-link traffic.")
    imbalance: tuple[Imbalance, ...] = Field(description="Expert-load spread per device kind.")
    bytes_moved: float = Field(description="Bytes over all links.")
    peak_memory_bytes: dict[str, float] = Field(description="Highest occupancy per memory.")
    cache_hits: int = Field(description="GPU expert shards whose weights were resident/prefetched.")
    cache_misses: int = Field(description="GPU expert shards that waited on a demand load.")
    violations: tuple[Violation, ...] = Field(description="Every broken rule.")
    timeline: tuple[TaskSpan, ...] = Field(default=(), description="Per-task spans, if asked.")

    def codes(self) -> set[str]:
        """The distinct violation codes."""
        return {v.code for v in self.violations}
