"""Cycle-level, event-driven executor: runs a plan on a hardware model and checks it.

Semantics (the specification every solver is held to):

* Every task runs on one resource: a compute task on its device, a transfer on its link, an
  eviction on its memory. A device runs one task at a time; a link ``num_lanes`` at a time.
* Per resource, tasks start strictly in the plan's order for that resource (head-of-line:
  a task waits for the one before it on the same resource to start).
* A task starts at the first cycle at which its resource has a free lane, every task in its
  ``after`` list has ended, and its pinned ``start_cycle`` (if any) has come.
* Same-cycle order is defined in one place, the event key ``(cycle, priority, sequence)``:
  ends before start attempts, then first-scheduled first. Runs are deterministic.
* Weight transfers reserve their bytes in the destination memory when they start and make
  the slice usable when they end; evictions free bytes at once. Memory occupancy must stay
  within capacity at every cycle.

Checks (each a structured ``Violation``, never an exception): ids and references resolve,
coverage (every routed token of every expert computed exactly once across its shards),
weights resident where a shard runs, memory capacity, data-flow dependencies (dispatch before
compute before combine, a layer after the one before, per micro-batch), pinned start times,
and deadlock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from hwmodel import costs
from hwmodel.plan import ComputeTask, EvictTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.report import (
    DeviceStats,
    Imbalance,
    LinkStats,
    Report,
    TaskSpan,
    Violation,
    ViolationCode,
)
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload

# Event priorities at the same cycle: a task's end is processed before any start attempt, so
# a resource freed at cycle c can be reused at cycle c.
_END = 0
_TRY = 1

_DATA_PAYLOADS = ("activations", "partial_sums")


@dataclass(slots=True)
class _Run:
    """A task as the executor tracks it (slotted; pydantic stays out of the hot loop)."""

    index: int
    task: ComputeTask | TransferTask | EvictTask
    resource: str
    duration_cycles: int
    num_bytes: float = 0.0
    deps: list[int] = field(default_factory=list)
    dependents: list[int] = field(default_factory=list)
    pending: int = 0
    ready_cycle: int = 0
    start_cycle: int = -1
    end_cycle: int = -1
    lane: int = 0


@dataclass(slots=True)
class _Resource:
    key: str
    num_lanes: int
    queue: list[int] = field(default_factory=list)
    head: int = 0
    free_lanes: list[int] = field(default_factory=list)
    busy_until: int = 0


@dataclass(slots=True)
class _Held:
    """One resident piece of an expert's weights: FFN columns [start, end)."""

    start: int
    end: int
    origin: str  # "initial", "prefetch", "demand" or "data"


def _expert_pieces(model: ModelSpec, t: ComputeTask) -> list[tuple[int, int, int]]:
    """(expert, first column, end column) of each expert a compute task of op expert covers:
    one slice, or the same slice (or each its own: ``group_cols``) of every expert of a
    grouped GEMM (rows > 0 or not)."""
    assert t.expert is not None
    end = model.expert_ffn_size if t.ffn_end is None else t.ffn_end
    if t.group_cols:
        return [(t.expert + e, c0, c1) for e, (c0, c1) in enumerate(t.group_cols)]
    if t.group_rows:
        return [(t.expert + e, t.ffn_start, end) for e in range(len(t.group_rows))]
    return [(t.expert, t.ffn_start, end)]


class _Memories:
    """Residency and occupancy of every memory over time."""

    def __init__(self, hardware: Hardware, model: ModelSpec, residency: Residency | None) -> None:
        self.model = model
        self.capacity = {m.id: float(m.capacity_bytes) for m in hardware.memories}
        self.used = dict.fromkeys(self.capacity, 0.0)
        self.peak = dict.fromkeys(self.capacity, 0.0)
        self.held: dict[str, dict[tuple[int, int], list[_Held]]] = {m: {} for m in self.capacity}
        self.wildcards: dict[str, list[WeightSlice]] = {m: [] for m in self.capacity}
        self.bad_memories: list[str] = []
        if residency is None:
            return
        for mem_id, slices in residency.by_memory.items():
            if mem_id not in self.capacity:
                self.bad_memories.append(mem_id)
                continue
            for s in slices:
                self.wildcards[mem_id].append(s)
                self.used[mem_id] += self._slice_bytes(s)
            self.peak[mem_id] = self.used[mem_id]
        for mem_id, reserved in residency.reserved_bytes.items():
            if mem_id not in self.capacity:
                self.bad_memories.append(mem_id)
                continue
            self.used[mem_id] += reserved
            self.peak[mem_id] = self.used[mem_id]

    def _slice_bytes(self, s: WeightSlice) -> float:
        return costs.weight_slice_bytes(self.model, s)

    def pieces(self, mem_id: str, layer: int, expert: int) -> list[_Held]:
        """Resident pieces of (layer, expert), materializing wildcard entries on first use."""
        table = self.held[mem_id]
        key = (layer, expert)
        got = table.get(key)
        if got is None:
            got = []
            full = self.model.expert_ffn_size
            for s in self.wildcards[mem_id]:
                if s.layer in (None, layer) and s.expert in (None, expert):
                    got.append(
                        _Held(s.ffn_start, full if s.ffn_end is None else s.ffn_end, "initial")
                    )
            table[key] = got
        return got

    def covered(self, mem_id: str, layer: int, expert: int, start: int, end: int) -> str | None:
        """Origin of the weakest piece covering [start, end), or None if not fully resident.

        Returns "demand" when any covering piece came from a demand load, else another origin.
        """
        pieces = sorted(self.pieces(mem_id, layer, expert), key=lambda p: p.start)
        pos = start
        origin = "initial"
        for p in pieces:
            if p.start > pos:
                break
            if p.end > pos:
                if p.origin == "demand":
                    origin = "demand"
                pos = p.end
                if pos >= end:
                    return origin
        return origin if pos >= end else None

    def add(self, mem_id: str, s: WeightSlice) -> float:
        """Reserve a slice's bytes (transfer start); returns the new occupancy."""
        self.used[mem_id] += self._slice_bytes(s)
        self.peak[mem_id] = max(self.peak[mem_id], self.used[mem_id])
        return self.used[mem_id]

    def land(self, mem_id: str, s: WeightSlice, origin: str) -> None:
        """Make a transferred slice usable (transfer end)."""
        assert s.layer is not None and s.expert is not None
        end = self.model.expert_ffn_size if s.ffn_end is None else s.ffn_end
        self.pieces(mem_id, s.layer, s.expert).append(_Held(s.ffn_start, end, origin))

    def drop(self, mem_id: str, s: WeightSlice) -> float:
        """Remove [start, end) of one layer's expert from every piece; returns bytes freed."""
        assert s.layer is not None and s.expert is not None
        end = self.model.expert_ffn_size if s.ffn_end is None else s.ffn_end
        kept: list[_Held] = []
        freed_cols = 0
        for p in self.pieces(mem_id, s.layer, s.expert):
            lo, hi = max(p.start, s.ffn_start), min(p.end, end)
            if lo >= hi:
                kept.append(p)
                continue
            freed_cols += hi - lo
            if p.start < lo:
                kept.append(_Held(p.start, lo, p.origin))
            if hi < p.end:
                kept.append(_Held(hi, p.end, p.origin))
        self.held[mem_id][(s.layer, s.expert)] = kept
        freed = self.model.expert_bytes(freed_cols)
        self.used[mem_id] -= freed
        return freed


class _Simulation:
    def __init__(
        self,
        hardware: Hardware,
        model: ModelSpec,
        plan: Plan,
        workload: Workload | None,
        residency: Residency | None,
        context_tokens: int | None = None,
    ) -> None:
        self.hw = hardware
        if context_tokens is None:
            context_tokens = workload.context_tokens if workload is not None else 0
        self.context_tokens = context_tokens
        self.model = model
        self.plan = plan
        self.workload = workload
        self.violations: list[Violation] = []
        self.devices = {d.id: d for d in hardware.devices}
        self.links = {lk.id: lk for lk in hardware.links}
        self.memory_ids = {m.id for m in hardware.memories}
        self.mem = _Memories(hardware, model, residency)
        for mem_id in self.mem.bad_memories:
            self._flag("unknown_memory", f"residency names unknown memory '{mem_id}'", None, mem_id)
        self.runs: list[_Run] = []
        self.resources: dict[str, _Resource] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    def _flag(
        self,
        code: ViolationCode,
        message: str,
        task_id: str | None = None,
        resource_id: str | None = None,
        cycle: int | None = None,
    ) -> None:
        self.violations.append(
            Violation(
                code=code, message=message, task_id=task_id, resource_id=resource_id, cycle=cycle
            )
        )

    # ---------------------------------------------------------------- preparation

    def _slice_ok(
        self, task_id: str, layer: int, expert: int | None, start: int, end: int | None
    ) -> bool:
        m = self.model
        if layer >= m.num_moe_layers:
            self._flag(
                "invalid_slice", f"layer {layer} >= num_moe_layers {m.num_moe_layers}", task_id
            )
            return False
        if expert is not None and expert >= m.num_routed_experts:
            self._flag("invalid_slice", f"expert {expert} >= {m.num_routed_experts}", task_id)
            return False
        if (end if end is not None else m.expert_ffn_size) > m.expert_ffn_size or (
            end is None and start >= m.expert_ffn_size
        ):
            self._flag("invalid_slice", f"FFN slice beyond width {m.expert_ffn_size}", task_id)
            return False
        return True

    def _valid_refs(self, t: ComputeTask | TransferTask | EvictTask) -> bool:
        """True when every id and slice the task names resolves (flags what does not)."""
        if isinstance(t, ComputeTask):
            if t.device_id not in self.devices:
                self._flag("unknown_device", f"unknown device '{t.device_id}'", t.id, t.device_id)
                return False
            if t.op == "shared_expert" and self.model.num_shared_experts:
                total = self.model.num_shared_experts * self.model.shared_expert_ffn_size
                if (t.ffn_end or total) > total or (t.ffn_end is None and t.ffn_start >= total):
                    self._flag("invalid_slice", f"slice beyond shared width {total}", t.id)
                    return False
            if t.op != "expert":
                return True
            if t.group_rows and t.expert is not None:
                last = t.expert + len(t.group_rows) - 1
                if not self._slice_ok(t.id, t.layer, last, t.ffn_start, t.ffn_end):
                    return False
            return self._slice_ok(t.id, t.layer, t.expert, t.ffn_start, t.ffn_end)
        if isinstance(t, TransferTask):
            link = self.links.get(t.link_id)
            if link is None:
                self._flag("unknown_link", f"unknown link '{t.link_id}'", t.id, t.link_id)
                return False
            for dev in (t.src_device_id, t.dst_device_id):
                if dev not in self.devices:
                    self._flag("unknown_device", f"unknown device '{dev}'", t.id, dev)
                    return False
            if (
                t.src_device_id not in link.src_device_ids
                or t.dst_device_id not in link.dst_device_ids
            ):
                self._flag(
                    "link_endpoint",
                    f"link '{link.id}' does not carry {t.src_device_id} -> {t.dst_device_id}",
                    t.id,
                    link.id,
                )
                return False
            if t.weights is None:
                return True
            w = t.weights
            return self._slice_ok(t.id, w.layer or 0, w.expert, w.ffn_start, w.ffn_end)
        if t.memory_id not in self.memory_ids:
            self._flag("unknown_memory", f"unknown memory '{t.memory_id}'", t.id, t.memory_id)
            return False
        w = t.weights
        if w.layer is None or w.expert is None:
            self._flag("invalid_slice", "an eviction drops one layer's expert slice", t.id)
            return False
        return self._slice_ok(t.id, w.layer, w.expert, w.ffn_start, w.ffn_end)

    def prepare(self) -> None:
        index: dict[str, int] = {}
        for t in self.plan.tasks:
            if t.id in index:
                self._flag("duplicate_task", f"task id '{t.id}' used twice", t.id)
                continue
            if not self._valid_refs(t):
                continue
            resource, cycles, num_bytes = costs.task_cycles(
                self.hw, self.model, t, self.context_tokens
            )
            index[t.id] = len(self.runs)
            self.runs.append(_Run(len(self.runs), t, resource, cycles, num_bytes))
        for run in self.runs:
            for dep_id in run.task.after:
                dep = index.get(dep_id)
                if dep is None:
                    self._flag(
                        "unknown_task", f"'after' names unknown task '{dep_id}'", run.task.id
                    )
                    continue
                run.deps.append(dep)
                self.runs[dep].dependents.append(run.index)
            run.pending = len(run.deps)
        self._build_queues(index)

    def _lanes(self, key: str) -> int:
        link = self.links.get(key)
        return link.num_lanes if link is not None else 1

    def _build_queues(self, index: dict[str, int]) -> None:
        by_resource: dict[str, list[int]] = defaultdict(list)
        for run in self.runs:
            by_resource[run.resource].append(run.index)
        for key, default_order in by_resource.items():
            explicit = self.plan.order.get(key)
            queue = default_order
            if explicit is not None:
                queue = []
                seen: set[int] = set()
                for task_id in explicit:
                    i = index.get(task_id)
                    if i is None:
                        self._flag(
                            "unknown_task",
                            f"order of '{key}' names unknown task '{task_id}'",
                            task_id,
                            key,
                        )
                    elif self.runs[i].resource != key:
                        self._flag(
                            "resource_order",
                            f"order of '{key}' lists a task that runs on '{self.runs[i].resource}'",
                            task_id,
                            key,
                        )
                    elif i in seen:
                        self._flag(
                            "resource_order", f"order of '{key}' lists the task twice", task_id, key
                        )
                    else:
                        seen.add(i)
                        queue.append(i)
                for i in default_order:
                    if i not in seen:
                        self._flag(
                            "resource_order",
                            f"order of '{key}' omits the task; it runs last",
                            self.runs[i].task.id,
                            key,
                        )
                        queue.append(i)
            lanes = self._lanes(key)
            self.resources[key] = _Resource(key, lanes, queue, 0, list(range(lanes)))
        for key in self.plan.order:
            if (
                key not in self.resources
                and key not in self.devices
                and key not in self.links
                and key not in self.memory_ids
            ):
                self._flag("unknown_device", f"order names unknown resource '{key}'", None, key)

    # ---------------------------------------------------------------- simulation

    def run(self) -> None:
        heap: list[tuple[int, int, int, int]] = []  # (cycle, priority, sequence, payload)
        seq = 0
        keys = list(self.resources)
        key_index = {k: i for i, k in enumerate(keys)}
        tried: set[tuple[int, int]] = set()  # (cycle, resource index) already queued

        def push(cycle: int, priority: int, payload: int) -> None:
            nonlocal seq
            heapq.heappush(heap, (cycle, priority, seq, payload))
            seq += 1

        def want_try(cycle: int, key: str) -> None:
            ri = key_index[key]
            if (cycle, ri) not in tried:
                tried.add((cycle, ri))
                push(cycle, _TRY, ri)

        for key in keys:
            want_try(0, key)
        while heap:
            cycle, priority, _, payload = heapq.heappop(heap)
            if priority == _END:
                run = self.runs[payload]
                self._on_end(run)
                res = self.resources[run.resource]
                res.free_lanes.append(run.lane)
                want_try(cycle, run.resource)
                for d in run.dependents:
                    dep = self.runs[d]
                    dep.pending -= 1
                    dep.ready_cycle = max(dep.ready_cycle, cycle)
                    if dep.pending == 0:
                        want_try(cycle, dep.resource)
            else:
                tried.discard((cycle, payload))
                self._try_start(self.resources[keys[payload]], cycle, push, want_try)
        stuck = [r for r in self.runs if r.start_cycle < 0]
        for r in stuck[:20]:
            self._flag(
                "deadlock",
                "task never became ready (cycle through 'after' and order)",
                r.task.id,
                r.resource,
            )
        if len(stuck) > 20:
            self._flag("deadlock", f"{len(stuck) - 20} more tasks never became ready")

    def _try_start(
        self,
        res: _Resource,
        now: int,
        push: Callable[[int, int, int], None],
        want_try: Callable[[int, str], None],
    ) -> None:
        while res.head < len(res.queue) and res.free_lanes:
            run = self.runs[res.queue[res.head]]
            if run.pending > 0:
                return
            pinned = run.task.start_cycle
            if pinned is not None and pinned > now:
                want_try(pinned, res.key)
                return
            if pinned is not None and now > pinned:
                if run.ready_cycle > pinned:
                    self._flag(
                        "dependency",
                        f"pinned start {pinned} but dependencies end at {run.ready_cycle}",
                        run.task.id,
                        res.key,
                        pinned,
                    )
                else:
                    self._flag(
                        "resource_conflict",
                        f"pinned start {pinned} but '{res.key}' is busy until {now}",
                        run.task.id,
                        res.key,
                        pinned,
                    )
            res.free_lanes.sort()
            run.lane = res.free_lanes.pop(0)
            run.start_cycle = now
            run.end_cycle = now + run.duration_cycles
            res.head += 1
            self._on_start(run)
            push(run.end_cycle, _END, run.index)

    def _on_start(self, run: _Run) -> None:
        t = run.task
        now = run.start_cycle
        if isinstance(t, TransferTask) and t.payload == "weights":
            assert t.weights is not None
            mem_id = self.devices[t.dst_device_id].memory_id
            used = self.mem.add(mem_id, t.weights)
            self._check_capacity(mem_id, used, t.id, now)
        elif isinstance(t, EvictTask):
            self.mem.drop(t.memory_id, t.weights)
        elif isinstance(t, ComputeTask) and t.op == "expert" and t.num_tokens > 0:
            assert t.expert is not None
            rows = t.group_rows or (t.num_tokens,)
            for (expert, start, end), n in zip(_expert_pieces(self.model, t), rows, strict=True):
                if n > 0:  # a grouped GEMM does not read an expert it has no rows for
                    self._check_resident(t, expert, start, end, now)

    def _check_resident(self, t: ComputeTask, expert: int, start: int, end: int, now: int) -> None:
        device = self.devices[t.device_id]
        origin = self.mem.covered(device.memory_id, t.layer, expert, start, end)
        if origin is None:
            self._flag(
                "weights_not_resident",
                f"layer {t.layer} expert {expert} cols [{start}, {end}) not in "
                f"'{device.memory_id}'",
                t.id,
                t.device_id,
                now,
            )
        elif device.kind == "gpu":
            if origin == "demand":
                self.cache_misses += 1
            else:
                self.cache_hits += 1

    def _on_end(self, run: _Run) -> None:
        t = run.task
        if isinstance(t, TransferTask) and t.payload == "weights":
            assert t.weights is not None
            self.mem.land(self.devices[t.dst_device_id].memory_id, t.weights, t.purpose)

    def _check_capacity(self, mem_id: str, used: float, task_id: str | None, cycle: int) -> None:
        if used > self.mem.capacity[mem_id] + 1e-6:
            self._flag(
                "memory_capacity",
                f"'{mem_id}' holds {used:.0f} bytes > capacity {self.mem.capacity[mem_id]:.0f}",
                task_id,
                mem_id,
                cycle,
            )

    def check_initial_capacity(self) -> None:
        """Hard: what every memory holds at cycle 0 fits in it."""
        for mem_id, used in self.mem.used.items():
            self._check_capacity(mem_id, used, None, 0)


# ---------------------------------------------------------------- checks after the run
# One function per rule; each returns the violations it finds, in the order of the runs.


def _violation(
    code: ViolationCode,
    message: str,
    task_id: str | None = None,
    resource_id: str | None = None,
    cycle: int | None = None,
) -> Violation:
    return Violation(
        code=code, message=message, task_id=task_id, resource_id=resource_id, cycle=cycle
    )


def check_coverage(
    runs: list[_Run], model: ModelSpec, workload: Workload | None
) -> list[Violation]:
    """Hard: every routed token of every (layer, expert) computed exactly once per column."""
    if workload is None:
        return []
    expected: dict[tuple[int, int], int] = {}
    for layer, row in zip(workload.layer_ids, workload.tokens_per_expert, strict=True):
        for e, n in enumerate(row):
            if n > 0:
                expected[(layer, e)] = n
    shards: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for run in runs:
        t = run.task
        if isinstance(t, ComputeTask) and t.op == "expert" and t.num_tokens > 0:
            assert t.expert is not None
            rows = t.group_rows or (t.num_tokens,)
            for (expert, start, end), n in zip(_expert_pieces(model, t), rows, strict=True):
                if n > 0:
                    shards[(t.layer, expert)].append((start, end, n))
    width = model.expert_ffn_size
    found = []
    for key in sorted(set(expected) | set(shards)):
        want = expected.get(key, 0)
        pieces = shards.get(key, [])
        cuts = sorted({0, width, *(p[0] for p in pieces), *(p[1] for p in pieces)})
        for lo, hi in itertools.pairwise(cuts):
            got = sum(n for s, e, n in pieces if s <= lo and e >= hi)
            if got != want:
                found.append(
                    _violation(
                        "coverage",
                        f"layer {key[0]} expert {key[1]} cols [{lo}, {hi}): {got} tokens computed, "
                        f"{want} routed",
                    )
                )
                break
    return found


@dataclass
class _DataFlow:
    """When the data transfers of a run moved, indexed for the dependency checks.

    ``arrivals[(dst, layer, mb)]``: end cycles of activations/partial sums into dst;
    ``departures[(src, layer, mb)]``: their start cycles out of src; ``layer_span[(mb,
    layer)]``: [first start, last end] of the layer's compute and data transfers;
    ``partial_end[(dst, layer, mb)]``: the last partial sum's arrival.
    """

    arrivals: dict[tuple[str, int, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    departures: dict[tuple[str, int, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    layer_span: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    partial_end: dict[tuple[str, int, int], int] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: list[_Run]) -> _DataFlow:
        flow = cls()
        for run in runs:
            t = run.task
            if run.start_cycle < 0:
                continue
            if isinstance(t, TransferTask):
                if t.payload not in _DATA_PAYLOADS:
                    continue
                flow.arrivals[(t.dst_device_id, t.layer, t.micro_batch)].append(run.end_cycle)
                if t.payload == "partial_sums":
                    key3 = (t.dst_device_id, t.layer, t.micro_batch)
                    flow.partial_end[key3] = max(flow.partial_end.get(key3, -1), run.end_cycle)
                flow.departures[(t.src_device_id, t.layer, t.micro_batch)].append(run.start_cycle)
            elif not isinstance(t, ComputeTask):
                continue
            span = flow.layer_span.setdefault(
                (t.micro_batch, t.layer), [run.start_cycle, run.end_cycle]
            )
            span[0] = min(span[0], run.start_cycle)
            span[1] = max(span[1], run.end_cycle)
        return flow


def check_remote_shards(runs: list[_Run], flow: _DataFlow, home: str) -> list[Violation]:
    """Hard: a shard away from the home device starts after its activations arrive, and its
    result is sent back after it ends."""
    found = []
    for run in runs:
        t = run.task
        if not (isinstance(t, ComputeTask) and t.op == "expert" and t.device_id != home):
            continue
        if run.start_cycle < 0 or t.num_tokens == 0:
            continue
        key = (t.device_id, t.layer, t.micro_batch)
        if not any(end <= run.start_cycle for end in flow.arrivals.get(key, [])):
            found.append(
                _violation(
                    "dependency",
                    f"shard on '{t.device_id}' starts before its activations arrive",
                    t.id,
                    t.device_id,
                    run.start_cycle,
                )
            )
        if not any(start >= run.end_cycle for start in flow.departures.get(key, [])):
            found.append(
                _violation(
                    "dependency",
                    f"result of the shard on '{t.device_id}' is never sent back after it ends",
                    t.id,
                    t.device_id,
                    run.end_cycle,
                )
            )
    return found


def check_layer_order(flow: _DataFlow) -> list[Violation]:
    """Hard: within a micro-batch, a layer starts only after the one before it has ended."""
    by_mb: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for (mb, layer), span in flow.layer_span.items():
        by_mb[mb].append((layer, span))
    found = []
    for mb, spans in by_mb.items():
        spans.sort()
        for (la, a), (lb, b) in itertools.pairwise(spans):
            if b[0] < a[1]:
                found.append(
                    _violation(
                        "dependency",
                        f"micro-batch {mb}: layer {lb} starts at {b[0]} before layer {la} ends at "
                        f"{a[1]}",
                        None,
                        None,
                        b[0],
                    )
                )
    return found


def check_reduce_after_partials(runs: list[_Run], flow: _DataFlow) -> list[Violation]:
    """Hard: a reduce starts after every partial sum it combines has arrived, and so does an
    attention that adds the layer before's partial sums in its prologue (``num_partials`` >
    1: those of layer ``layer - 1``)."""
    found = []
    for run in runs:
        t = run.task
        if not isinstance(t, ComputeTask) or run.start_cycle < 0:
            continue
        if t.op == "reduce":
            layer = t.layer
        elif t.op == "attention" and t.num_partials > 1:
            layer = t.layer - 1
        else:
            continue
        last = flow.partial_end.get((t.device_id, layer, t.micro_batch), -1)
        if last > run.start_cycle:
            found.append(
                _violation(
                    "dependency",
                    f"{t.op} starts at {run.start_cycle} before its partial sums arrive at {last}",
                    t.id,
                    t.device_id,
                    run.start_cycle,
                )
            )
    return found


def check_dependencies(runs: list[_Run], home: str) -> list[Violation]:
    """Hard: dispatch before remote compute before its result returns; layers in order; a
    reduce after its partial sums."""
    flow = _DataFlow.of(runs)
    return [
        *check_remote_shards(runs, flow, home),
        *check_layer_order(flow),
        *check_reduce_after_partials(runs, flow),
    ]


# ---------------------------------------------------------------- report


@dataclass
class _Usage:
    """Per resource: busy cycles, expert-compute cycles, tasks run, bytes moved."""

    busy: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    expert_busy: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    link_bytes: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def of(cls, runs: list[_Run]) -> _Usage:
        u = cls()
        for r in runs:
            if r.start_cycle < 0:
                continue
            t = r.task
            u.busy[r.resource] += r.duration_cycles
            u.count[r.resource] += 1
            if isinstance(t, ComputeTask) and t.op == "expert":
                u.expert_busy[r.resource] += r.duration_cycles
            if isinstance(t, TransferTask):
                u.link_bytes[r.resource] += r.num_bytes
        return u


def _imbalance(hw: Hardware, u: _Usage) -> tuple[Imbalance, ...]:
    """Expert-compute imbalance across the devices of each kind (max over mean, CV)."""
    out = []
    for kind in ("gpu", "ndp", "cpu"):
        loads = [u.expert_busy[d.id] for d in hw.devices if d.kind == kind]
        if not loads:
            continue
        mean = sum(loads) / len(loads)
        std = math.sqrt(sum((x - mean) ** 2 for x in loads) / len(loads))
        out.append(
            Imbalance(
                kind=kind,
                num_devices=len(loads),
                max_over_mean=max(loads) / mean if mean > 0 else 1.0,
                cv=std / mean if mean > 0 else 0.0,
            )
        )
    return tuple(out)


def build_report(sim: _Simulation, include_timeline: bool) -> Report:
    """The report of a finished run: makespan, per-device and per-link statistics, imbalance,
    memory peaks, cache hits, the violations, and (``include_timeline``) every task's span."""
    hw, runs = sim.hw, sim.runs
    makespan = max((r.end_cycle for r in runs if r.end_cycle >= 0), default=0)
    u = _Usage.of(runs)
    span = max(makespan, 1)
    devices = tuple(
        DeviceStats(
            device_id=d.id,
            kind=d.kind,
            busy_cycles=u.busy[d.id],
            expert_busy_cycles=u.expert_busy[d.id],
            utilization=u.busy[d.id] / span,
            num_tasks=u.count[d.id],
        )
        for d in hw.devices
    )
    links = tuple(
        LinkStats(
            link_id=lk.id,
            bytes_moved=u.link_bytes[lk.id],
            busy_cycles=u.busy[lk.id],
            utilization=u.busy[lk.id] / (lk.num_lanes * span),
            num_transfers=u.count[lk.id],
        )
        for lk in hw.links
    )
    timeline: tuple[TaskSpan, ...] = ()
    if include_timeline:
        timeline = tuple(_span(r) for r in runs if r.start_cycle >= 0)
    return Report(
        valid=not sim.violations,
        makespan_cycles=makespan,
        makespan_s=makespan / hw.clock_hz,
        clock_hz=hw.clock_hz,
        num_tasks=len(runs),
        devices=devices,
        links=links,
        imbalance=_imbalance(hw, u),
        bytes_moved=sum(u.link_bytes.values()),
        peak_memory_bytes=dict(sim.mem.peak),
        cache_hits=sim.cache_hits,
        cache_misses=sim.cache_misses,
        violations=tuple(sim.violations),
        timeline=timeline,
    )


def _span(r: _Run) -> TaskSpan:
    t = r.task
    if isinstance(t, ComputeTask):
        label = t.op if t.expert is None else f"{t.op} e{t.expert}"
        if t.op == "expert" and t.ffn_end is not None:
            label += f" [{t.ffn_start}:{t.ffn_end}]"
        layer: int | None = t.layer
    elif isinstance(t, TransferTask):
        label = t.payload if t.weights is None else f"weights e{t.weights.expert}"
        label += f" {t.src_device_id}->{t.dst_device_id}"
        layer = t.layer
    else:
        label = f"evict e{t.weights.expert}"
        layer = t.weights.layer
    return TaskSpan(
        task_id=t.id,
        resource_id=r.resource,
        lane=r.lane,
        start_cycle=r.start_cycle,
        end_cycle=r.end_cycle,
        label=label,
        layer=layer,
        micro_batch=t.micro_batch,
    )


def simulate(
    hardware: Hardware,
    model: ModelSpec,
    plan: Plan,
    workload: Workload | None = None,
    residency: Residency | None = None,
    include_timeline: bool = False,
    context_tokens: int | None = None,
) -> Report:
    """Run ``plan`` on ``hardware`` and check it.

    Args:
        hardware: devices, memories and links.
        model: the MoE model (expert shape, bytes per weight).
        plan: tasks, per-resource order, account.
        workload: the histogram the plan must cover; without it coverage is not checked.
        residency: what every memory holds at cycle 0.
        include_timeline: add every task's span to the report.
        context_tokens: KV-cache length for attention costs (default: the workload's, else 0).

    Returns:
        The report; ``report.valid`` is False when any rule is broken (see ``violations``).
    """
    sim = _Simulation(hardware, model, plan, workload, residency, context_tokens)
    sim.check_initial_capacity()
    sim.prepare()
    sim.run()
    sim.violations += check_coverage(sim.runs, model, workload)
    sim.violations += check_dependencies(sim.runs, hardware.home_device_id)
    return build_report(sim, include_timeline)
