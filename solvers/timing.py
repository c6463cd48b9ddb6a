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


class Timeline:
    """The forward pass, fed a list at a time: tasks are scheduled in the order added.

    ``times`` holds (start, end) cycles of every task added so far; ``free_at(resource)`` is
    when a resource's earliest lane frees up.
    """

    def __init__(
        self, hardware: Hardware, model: ModelSpec, context_tokens: int = 0, start_cycle: int = 0
    ) -> None:
        self.hardware, self.model, self.context_tokens = hardware, model, context_tokens
        self.start_cycle = start_cycle
        self.lanes = {lk.id: [start_cycle] * lk.num_lanes for lk in hardware.links}
        self.last_start: dict[str, int] = {}
        self.times: dict[str, tuple[int, int]] = {}
        self._end: int | None = start_cycle  # the latest end so far (None: to recompute)

    def ready(self, task: ComputeTask | TransferTask | EvictTask) -> int:
        """When every task ``task`` waits on has ended.

        Raises:
            ValueError: when it waits on a task not added yet.
        """
        ready = self.start_cycle
        for dep in task.after:
            if dep not in self.times:
                raise ValueError(f"task '{task.id}' waits on '{dep}', which comes later")
            ready = max(ready, self.times[dep][1])
        return ready

    def free_at(self, resource: str) -> int:
        return max(min(self.lanes.get(resource, [self.start_cycle])),
                   self.last_start.get(resource, self.start_cycle))  # fmt: skip

    def add(self, tasks: Sequence[ComputeTask | TransferTask | EvictTask]) -> None:
        for t in tasks:
            resource, cycles, _ = costs.task_cycles(
                self.hardware, self.model, t, self.context_tokens
            )
            free = self.lanes.setdefault(resource, [self.start_cycle])
            lane = min(range(len(free)), key=free.__getitem__)
            start = max(self.ready(t), free[lane], self.last_start.get(resource, self.start_cycle))
            free[lane] = start + cycles
            self.last_start[resource] = start
            if t.id in self.times:  # a task added again replaces its times: recount
                self._end = None
            self.times[t.id] = (start, start + cycles)
            if self._end is not None and start + cycles > self._end:
                self._end = start + cycles

    @property
    def end(self) -> int:
        """End of the last task (the start cycle when there is none)."""
        if self._end is None:
            self._end = max((end for _, end in self.times.values()), default=self.start_cycle)
        return self._end


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
    line = Timeline(hardware, model, context_tokens, start_cycle)
    line.add(tasks)
    return line.times


def makespan(
    hardware: Hardware,
    model: ModelSpec,
    tasks: Sequence[ComputeTask | TransferTask | EvictTask],
    context_tokens: int = 0,
) -> int:
    """End of the last task under ``forward_pass`` (0 for no tasks)."""
    times = forward_pass(hardware, model, tasks, context_tokens)
    return max((end for _, end in times.values()), default=0)
