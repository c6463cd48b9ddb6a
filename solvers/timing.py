"""The solvers' own timing model: the makespan of a task list whose order is its schedule.

For plans whose tasks are emitted in data-flow order (every task after the tasks it waits on,
every resource's queue in emission order), the schedule is a single forward pass:
``start = max(ready, previous start on the resource, earliest free lane)``. Solvers use this to
predict makespans; the executor simulates the same plan independently, and the tests check
that both agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress

from hwmodel import costs
from hwmodel.plan import ComputeTask, EvictTask, TransferTask
from hwmodel.spec import Hardware, ModelSpec

Task = ComputeTask | TransferTask | EvictTask
# What a task's resource and duration depend on (``costs.task_cycles``), as a key.
CostKey = tuple[object, ...]


def cost_key(task: Task, context_tokens: int) -> CostKey:
    """What ``costs.task_cycles`` reads of ``task`` (and the context, for an attention task):
    two tasks with equal keys take the same resource for the same cycles. An expert shard is
    keyed by its width, not where its columns start; a grouped GEMM by the rows (and column
    slices) of its experts with rows, in order (``costs.grouped_expert_s`` adds nothing for an
    expert with none: the same sums, so the same cycles)."""
    if isinstance(task, ComputeTask):
        if task.op == "expert":
            end = task.ffn_end
            width = ("to end", task.ffn_start) if end is None else end - task.ffn_start
            if not task.group_rows:
                return ("x", task.device_id, task.num_tokens, width)
            rows = task.group_rows
            if task.group_cols:
                pairs = zip(rows, task.group_cols, strict=True)
                return ("g", task.device_id, tuple(compress(pairs, rows)))
            return ("g", task.device_id, width, tuple(compress(rows, rows)))
        return (
            "c", task.device_id, task.op, task.num_tokens, task.ffn_start, task.ffn_end,
            task.group_rows, task.group_cols, task.num_partials, task.num_sequences,
            context_tokens if task.op == "attention" else None,
        )  # fmt: skip
    if isinstance(task, TransferTask):
        w = task.weights
        return (
            "t", task.link_id, task.payload, task.num_tokens, task.element_bytes,
            None if w is None else (w.ffn_start, w.ffn_end),
        )  # fmt: skip
    return ("e", task.memory_id)


class Timeline:
    """The forward pass, fed a list at a time: tasks are scheduled in the order added.

    ``times`` holds (start, end) cycles of every task added so far; ``free_at(resource)`` is
    when a resource's earliest lane frees up.

    Args:
        cycles: (resource, cycles) by ``cost_key``, filled from ``costs.task_cycles`` and read
            before it (a caller timing many plans of one hardware and model, such as the
            decode loop's steps, passes one dict to all of them); None: a fresh one.
    """

    def __init__(
        self,
        hardware: Hardware,
        model: ModelSpec,
        context_tokens: int = 0,
        start_cycle: int = 0,
        cycles: dict[CostKey, tuple[str, int]] | None = None,
    ) -> None:
        self.hardware, self.model, self.context_tokens = hardware, model, context_tokens
        self.cycles = {} if cycles is None else cycles
        self.start_cycle = start_cycle
        self.lanes = {lk.id: [start_cycle] * lk.num_lanes for lk in hardware.links}
        self.last_start: dict[str, int] = {}
        self.times: dict[str, tuple[int, int]] = {}
        self._end: int | None = start_cycle  # the latest end so far (None: to recompute)

    def ready(self, task: Task) -> int:
        """When every task ``task`` waits on has ended.

        Raises:
            ValueError: when it waits on a task not added yet.
        """
        ready, times = self.start_cycle, self.times
        for dep in task.after:
            got = times.get(dep)
            if got is None:
                raise ValueError(f"task '{task.id}' waits on '{dep}', which comes later")
            if got[1] > ready:
                ready = got[1]
        return ready

    def free_at(self, resource: str) -> int:
        return max(min(self.lanes.get(resource, [self.start_cycle])),
                   self.last_start.get(resource, self.start_cycle))  # fmt: skip

    def add(self, tasks: Sequence[Task]) -> None:
        memo, times, last_start, origin = self.cycles, self.times, self.last_start, self.start_cycle
        for t in tasks:
            key = cost_key(t, self.context_tokens)
            got = memo.get(key)
            if got is None:
                resource, cycles, _ = costs.task_cycles(
                    self.hardware, self.model, t, self.context_tokens
                )
                got = memo[key] = (resource, cycles)
            resource, cycles = got
            free = self.lanes.setdefault(resource, [origin])
            lane = 0 if len(free) == 1 else min(range(len(free)), key=free.__getitem__)
            start = max(self.ready(t), free[lane], last_start.get(resource, origin))
            free[lane] = start + cycles
            last_start[resource] = start
            if t.id in times:  # a task added again replaces its times: recount
                self._end = None
            times[t.id] = (start, start + cycles)
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
