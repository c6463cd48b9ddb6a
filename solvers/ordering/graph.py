"""Ordering any task graph: which task each resource runs next, to minimize the makespan.

Input: the tasks of a plan (their durations and resources come from ``hwmodel.costs``, their
dependencies from ``after``). Output: a start cycle per task; the plan is re-emitted in start
order, which is each resource's queue order and a data-flow order, so the executor's
simulated makespan equals ``solvers.timing``'s prediction for it.

Backends: ``greedy`` (list scheduling; the ready task with the longest path to the end goes
first), ``cpsat`` (an interval per task, no-overlap or cumulative per resource, precedences),
``milp`` (disjunctive big-M, for small graphs).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from hwmodel import costs
from hwmodel.plan import ComputeTask, EvictTask, TransferTask
from hwmodel.spec import Hardware, ModelSpec

AnyTask = ComputeTask | TransferTask | EvictTask


@dataclass
class TaskGraph:
    """Tasks as indices: duration, resource, predecessors; resources with lane counts."""

    tasks: list[AnyTask]
    duration: list[int]
    resource: list[str]
    preds: list[list[int]]
    lanes: dict[str, int]
    succs: list[list[int]] = field(default_factory=list)

    @classmethod
    def of(
        cls, hardware: Hardware, model: ModelSpec, tasks: Sequence[AnyTask], context_tokens: int = 0
    ) -> TaskGraph:
        """The graph of a plan's tasks (references must resolve)."""
        index = {t.id: i for i, t in enumerate(tasks)}
        duration, resource = [], []
        for t in tasks:
            res, cycles, _ = costs.task_cycles(hardware, model, t, context_tokens)
            duration.append(cycles)
            resource.append(res)
        preds = [[index[a] for a in t.after] for t in tasks]
        succs: list[list[int]] = [[] for _ in tasks]
        for i, ps in enumerate(preds):
            for p in ps:
                succs[p].append(i)
        lanes = {lk.id: lk.num_lanes for lk in hardware.links}
        return cls(list(tasks), duration, resource, preds, lanes, succs)

    def lanes_of(self, resource: str) -> int:
        return self.lanes.get(resource, 1)

    def tail(self) -> list[int]:
        """Longest path from each task's start to the end of the graph (its own included)."""
        order = self.topological()
        tail = [0] * len(self.tasks)
        for i in reversed(order):
            tail[i] = self.duration[i] + max((tail[s] for s in self.succs[i]), default=0)
        return tail

    def topological(self) -> list[int]:
        indeg = [len(p) for p in self.preds]
        ready = [i for i, d in enumerate(indeg) if d == 0]
        out = []
        while ready:
            i = ready.pop()
            out.append(i)
            for s in self.succs[i]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if len(out) != len(self.tasks):
            raise ValueError("the task graph has a cycle")
        return out

    def lower_bound(self) -> int:
        """max(critical path, busiest resource's total work / its lanes)."""
        load: dict[str, int] = {}
        for d, r in zip(self.duration, self.resource, strict=True):
            load[r] = load.get(r, 0) + d
        busiest = max((w // self.lanes_of(r) for r, w in load.items()), default=0)
        return max(max(self.tail(), default=0), busiest)

    def emit(self, starts: list[int]) -> list[AnyTask]:
        """The tasks sorted by start (ties: dependencies first, then input order)."""
        rank = {i: k for k, i in enumerate(self.topological())}
        return [
            self.tasks[i]
            for i in sorted(range(len(self.tasks)), key=lambda i: (starts[i], rank[i]))
        ]


def list_schedule(graph: TaskGraph, priority: Sequence[float] | None = None) -> list[int]:
    """Greedy: whenever a resource has a free lane, start its ready task of highest priority
    (default: the longest path to the end). Returns start cycles.

    A task joins its resource's queue when its last predecessor ends, so queued tasks are
    always ready and only lanes make them wait.
    """
    prio = list(priority) if priority is not None else [float(x) for x in graph.tail()]
    pending = [len(p) for p in graph.preds]
    start = [-1] * len(graph.tasks)
    busy: dict[str, int] = {}
    queues: dict[str, list[tuple[float, int]]] = {}
    ends: list[tuple[int, int]] = []  # (cycle, task)

    def enqueue(i: int) -> None:
        heapq.heappush(queues.setdefault(graph.resource[i], []), (-prio[i], i))

    for i, p in enumerate(pending):
        if p == 0:
            enqueue(i)
    now = 0
    while True:
        for res, queue in queues.items():
            while queue and busy.get(res, 0) < graph.lanes_of(res):
                _, i = heapq.heappop(queue)
                start[i] = now
                busy[res] = busy.get(res, 0) + 1
                heapq.heappush(ends, (now + graph.duration[i], i))
        if not ends:
            break
        now = ends[0][0]
        while ends and ends[0][0] == now:
            _, i = heapq.heappop(ends)
            busy[graph.resource[i]] -= 1
            for s in graph.succs[i]:
                pending[s] -= 1
                if pending[s] == 0:
                    enqueue(s)
    if any(x < 0 for x in start):
        raise ValueError("list scheduling left tasks unstarted (a cycle in the graph)")
    return start


def makespan_of(graph: TaskGraph, starts: Sequence[int]) -> int:
    return max((s + d for s, d in zip(starts, graph.duration, strict=True)), default=0)
