"""The solvers' own timing model: the makespan of a task list whose order is its schedule.

For plans whose tasks are emitted in data-flow order (every task after the tasks it waits on,
every resource's queue in emission order), the schedule is a single forward pass:
``start = max(ready, previous start on the resource, earliest free lane)``. Solvers use this to
predict makespans; the executor simulates the same plan independently, and the tests check
that both agree.
"""

from __future__ import annotations

from collections.abc import Sequence

from hwmodel import costs
from hwmodel.plan import ComputeTask, EvictTask, TransferTask
from hwmodel.spec import Hardware, ModelSpec


def forward_pass(
    hardware: Hardware,
    model: ModelSpec,
    tasks: Sequence[ComputeTask | TransferTask | EvictTask],
    context_tokens: int = 0,
    start_cycle: int = 0,
) -> dict[str, tuple[int, int]]:
    """(start, end) cycles of every task, scheduling them in list order.

    Raises:
        ValueError: when a task waits on one that comes later in the list.
    """
    lanes = {lk.id: [start_cycle] * lk.num_lanes for lk in hardware.links}
    last_start: dict[str, int] = {}
    times: dict[str, tuple[int, int]] = {}
    for t in tasks:
        resource, cycles, _ = costs.task_cycles(hardware, model, t, context_tokens)
        ready = start_cycle
        for dep in t.after:
            if dep not in times:
                raise ValueError(f"task '{t.id}' waits on '{dep}', which comes later")
            ready = max(ready, times[dep][1])
        free = lanes.setdefault(resource, [start_cycle])
        lane = min(range(len(free)), key=free.__getitem__)
        start = max(ready, free[lane], last_start.get(resource, start_cycle))
        free[lane] = start + cycles
        last_start[resource] = start
        times[t.id] = (start, start + cycles)
    return times


def makespan(
    hardware: Hardware,
    model: ModelSpec,
    tasks: Sequence[ComputeTask | TransferTask | EvictTask],
    context_tokens: int = 0,
) -> int:
    """End of the last task under ``forward_pass`` (0 for no tasks)."""
    times = forward_pass(hardware, model, tasks, context_tokens)
    return max((end for _, end in times.values()), default=0)
