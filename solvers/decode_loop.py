"""The end-to-end schedule of a decode run, step by step, through the executor.

For every decode step (one token, batch 1) and every MoE layer:

1. the token's routed experts are served from the GPU expert cache (hit), by a similar resident
   expert (opt-in substitution), or they miss;
2. the layer is placed: ``dispatch`` decides where each expert runs (``solver``: greedy
   placement over the GPU, the NDP units or the CPU, with tensor-parallel splitting and loads;
   ``monde``: the MoNDE-style baseline at its best hot-set size per layer; ``monde_paper``: MoNDE
   with the fixed hot-set rule; ``expert_parallel``: every expert whole on the unit that
   holds it; ``demand``: everything on the GPU, misses loaded over the link);
3. experts loaded to the GPU enter the cache under its policy (an eviction task frees the
   victim first) or are freed after use;
4. the next layer's prefetch set is chosen (a knapsack of granule chunks: expected saving,
   within the link time this layer leaves idle before its partial sums return) and staged on
   the link in that gap; an expert too large for one gap arrives over several, and each new
   line replaces a less likely resident.

The step's tasks are chained into one plan, the solver-side timing predicts its makespan, and
the executor simulates it (residency at the step's start, memory capacity, coverage of the
token's experts); both figures are recorded per step. The GPU memory is sized to exactly the
cache plus the experts in flight (``top_k`` by default), so the executor checks the cache's
capacity. ``prefill`` runs the prompt the same way as one batch.

The prediction's plan counts are re-snapshot when routing drifts past ``drift_threshold``
(0: every step); every re-snapshot is a re-solve of the prefetch plan and is counted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from hwmodel import costs
from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, EvictTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.plan_builder import LoweredLayer, effective_granules
from hwmodel.spec import Device, Hardware, ModelSpec
from hwmodel.workload import RoutingTrace, Workload
from solvers import timing
from solvers.decode_tables import Candidates, DecodeTables, ranked
from solvers.placement.baselines import monde, monde_paper, round_robin
from solvers.placement.greedy import solve_greedy
from solvers.placement.memo import PlanMemo
from solvers.placement.problem import Assignment, PlacementInstance, PlacementProblem
from solvers.prefetch.cache import ExpertCaches, Policy, ReplayStats, global_allocation, serve
from solvers.prefetch.predict import Predictor, TokenPredictions, TransitionMemory
from solvers.prefetch.select import greedy_indices, greedy_runs

Dispatch = Literal["solver", "monde", "monde_paper", "expert_parallel", "demand"]
AnyTask = ComputeTask | TransferTask | EvictTask
REFINE_ROUNDS = 4  # the most rounds of ``DecodeRun._refine`` over a layer's experts


@dataclass(frozen=True)
class LoopConfig:
    """How a decode run is scheduled.

    Attributes:
        capacity_experts: GPU cache lines per layer (experts).
        cache: eviction policy of the GPU cache (``static``: the prompt's hottest experts,
            pinned for the run).
        prefetch: stage predicted experts during the previous layer.
        dispatch: where experts run (see the module docstring).
        drift_threshold: mean total-variation drift that triggers a re-solve (0: every step).
        lookahead_layers: layers ahead the prefetch stages for (0: as many as one expert's
            load takes layers of GPU work, 1 to 3).
        global_lines: when set, the GPU holds this many cache lines in all, allocated across
            layers by the prompt's global top-k (layer, expert) cells (``global_allocation``);
            ``capacity_experts`` is then ignored.
        split_loads: (``solver`` dispatch, granules > 1) load granules of the layer's absent
            experts over the link while the units compute the rest, as many as lower the
            layer's estimated finish (``DecodeRun._split_loads``); freed after use.
        trim_loads: (with ``split_loads``) the layer's last whole demand load leaves the
            granules at both ends of it to the units that hold them when that lowers the
            layer's estimated finish (``DecodeRun._trim_loads``); the line enters the cache
            with those granules missing, and the prefetch completes it later.
        fold_reduce: a layer's partial sums are added in the prologue of the next layer's
            attention kernel (a fused residual add: ``num_partials`` on the attention task)
            instead of by a reduce kernel of their own; the add's FLOPs and bytes stay, its
            launch goes. The step's last layer keeps its reduce (no kernel follows in the step).
        group_shards: a device's consecutive expert shards of a layer that wait on the same
            tasks run as one grouped GEMM (``ComputeTask.group_rows``, and ``group_cols``
            when their columns differ: one launch, every expert's slice read as before;
            ``_grouped``).
        prefetch_chunks: the most chunks an expert's prefetch is cut into (a divisor of the
            granules): finer chunks fill the link's idle gaps closer, each paying the link's
            latency once.
        prefetch_spill: the prefetch round after a layer's returns may run up to one chunk
            (and half the gap) past its gap (the next layer's attention) into the next
            layer's expert window;
            that layer's own loads then start behind it, and its placement sees the link
            busy (``_link_busy_s``). Without it, a gap shorter than a chunk stays idle.
        refine_placement: (``solver`` dispatch, one-token layers) after the greedy, each
            expert in turn takes again its best option with the others fixed (whole on a
            holder, its layout's split over the units with or without the GPU's granules, or
            loaded), under the decode layer's estimate (the GPU's shared experts first,
            grouped launches: ``DecodeRun._window_s``), until none changes
            (``DecodeRun._refine``). The greedy places experts heaviest first with the
            GPU's shared experts unseen, so a resident expert split over the units early can
            leave a partial line's or an absent expert's stripes no room.
        measure_floor: (benchmarks) after each step, time on the CPU what any planner that
            emits this step's tasks pays at least: re-timing them on a fresh timeline with the
            run's cost memo, and building them again as validated tasks
            (``StepRecord.floor_cpu_s``). Outside the planning CPU; changes no plan.
    """

    capacity_experts: int
    cache: Policy = "moesched"
    prefetch: bool = True
    dispatch: Dispatch = "solver"
    substitute_below: float = 0.0
    quality_budget: float = 0.0
    drift_threshold: float = 0.05
    decay: float = 0.98
    transition_weight: float = 1.0
    num_granules: int = 4
    lookahead_layers: int = 0
    global_lines: int | None = None
    split_loads: bool = True
    trim_loads: bool = True
    fold_reduce: bool = False
    group_shards: bool = False
    prefetch_chunks: int = 8
    prefetch_spill: bool = False
    refine_placement: bool = False
    measure_floor: bool = False


@dataclass
class StepRecord:
    """One decode step as the executor ran it (seconds, bytes)."""

    step: int
    latency_s: float
    predicted_s: float
    gpu_util: float
    ndp_load_cv: float | None
    bytes_moved: float
    weight_bytes: float
    solve_s: float  # planning CPU time (``DecodeRun.run_step``; prefill: its placements)
    resolved: bool
    violations: list[str]
    bound_s: float = 0.0  # a lower bound on latency_s for this step's cache states
    bound_layers_s: float = 0.0  # its per-layer part
    bound_step_s: float = 0.0  # its whole-step part (links shared with the step's prefetch)
    # Busy seconds by resource class in this step's timeline (``_Step.busy_s``).
    busy_s: dict[str, float] = field(default_factory=dict)
    # The step's wall of simulated time split into exclusive phases (``_Step.phases_s``).
    phase_s: dict[str, float] = field(default_factory=dict)
    num_tasks: int = 0  # tasks in the step's plan
    # With ``LoopConfig.measure_floor``: CPU seconds to re-time the step's tasks (``retime``)
    # and to build them again as validated tasks (``validate``): ``DecodeRun._floor_cpu_s``.
    floor_cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopResult:
    """Every step of a run, the cache counts, and re-solves."""

    steps: list[StepRecord] = field(default_factory=list)
    stats: ReplayStats = field(default_factory=ReplayStats)
    resolves: int = 0
    plans_solved: int = 0  # layer placements solved (a new shape)
    plans_reused: int = 0  # layer placements looked up by shape

    @property
    def violations(self) -> int:
        return sum(len(s.violations) for s in self.steps)

    def mean(self, attr: str) -> float:
        values = [getattr(s, attr) for s in self.steps if getattr(s, attr) is not None]
        return float(np.mean(values)) if values else 0.0


def cache_hardware(
    hardware: Hardware,
    model: ModelSpec,
    capacity_experts: int,
    in_flight: int,
    total_lines: int | None = None,
) -> Hardware:
    """``hardware`` with the home GPU's memory sized to the expert cache: ``capacity_experts``
    per layer for every layer (or ``total_lines`` in all), plus ``in_flight`` experts
    (transient loads).

    Raises:
        ValueError: when that is more than the GPU memory the preset has.
    """
    home_mem = hardware.device(hardware.home_device_id).memory_id
    lines = capacity_experts * model.num_moe_layers if total_lines is None else total_lines
    need = (lines + in_flight) * model.expert_bytes()
    have = next(m.capacity_bytes for m in hardware.memories if m.id == home_mem)
    if need > have:
        raise ValueError(
            f"capacity_experts: {lines} cache lines + {in_flight} in flight need "
            f"{need / 2**30:.2f} GiB; '{home_mem}' has {have / 2**30:.2f} GiB"
        )
    memories = tuple(
        m.model_copy(update={"capacity_bytes": int(need) + 1}) if m.id == home_mem else m
        for m in hardware.memories
    )
    return hardware.model_copy(update={"memories": memories})


def max_cache_lines(hardware: Hardware, model: ModelSpec, in_flight: int) -> int:
    """The most cache lines in all (every layer together) the home GPU's memory takes with
    ``in_flight`` experts more."""
    home_mem = hardware.device(hardware.home_device_id).memory_id
    have = next(m.capacity_bytes for m in hardware.memories if m.id == home_mem)
    return max(0, int(have // model.expert_bytes()) - in_flight)


def max_cache_experts(hardware: Hardware, model: ModelSpec, in_flight: int) -> int:
    """The most cache lines per layer the home GPU's memory takes with ``in_flight`` more."""
    home_mem = hardware.device(hardware.home_device_id).memory_id
    have = next(m.capacity_bytes for m in hardware.memories if m.id == home_mem)
    lines = int(have // model.expert_bytes()) - in_flight
    return max(0, min(model.num_routed_experts, lines // model.num_moe_layers))


class _Step:
    """Builds one decode step's plan layer by layer (the loop's working state)."""

    def __init__(self, run: DecodeRun, step: int, context_tokens: int) -> None:
        self.step = step
        self.tasks: list[AnyTask] = []
        self.timeline = timing.Timeline(run.hardware, run.model, context_tokens, cycles=run.cycles)
        self.after: list[str] = []
        # Partial sums the next layer's attention adds in its prologue (``fold_reduce``; 1: none).
        self.fold = 1
        self.alias: dict[str, str] = {}  # shard id -> the grouped GEMM that runs it
        self.staged: dict[tuple[int, int], list[str]] = {}  # (layer, expert) -> prefetch ids
        # The token's rankings, each computed once (decode steps only: the prefill has none).
        self.rank = TokenPredictions(run.predictor, run.ids[step]) if step >= 0 else None
        # (target layer, layer) -> its prefetch items (``DecodeRun._prefetch``).
        self.targets: dict[tuple[int, int], _TargetItems] = {}
        self.cover: list[tuple[int, ...]] = []
        self.solve_s = 0.0
        self.report_s = 0.0  # CPU in the step's reported bounds (not planning: ``run_step``)
        self.weight_bytes = 0.0
        self.bound_s = 0.0  # the per-layer bounds, summed (``DecodeRun._bound_s``)
        self.absent_bytes = 0.0  # weight bytes the step's layers ran that were not on the GPU
        self.attention_s = 0.0  # the layers' attention, summed
        # Per layer with absent bytes, the least time every weight-holding unit streams
        # nothing in it (``DecodeRun._bound_s``), summed.
        self.unit_idle_s = 0.0

    def emit(self, tasks: list[AnyTask]) -> None:
        """Append tasks to the step's plan and timeline. A task that waits on a layer's expert
        shards must wait on their grouped GEMMs instead (``_grouped`` does so for the tasks
        it is given; ``_aliased`` for the others)."""
        self.tasks.extend(tasks)
        self.timeline.add(tasks)


class DecodeRun:
    """A decode run of one sequence: prefill seeds the prediction, then step by step."""

    def __init__(
        self,
        hardware: Hardware,
        model: ModelSpec,
        base: Residency,
        config: LoopConfig,
        trace: RoutingTrace,
        prefill: slice,
        decode: slice,
        in_flight: int | None = None,
        memory: TransitionMemory | None = None,
    ) -> None:
        """``in_flight``: experts the GPU memory takes beyond the cache (default top_k; a
        prefill that loads experts needs up to every expert of a layer). ``memory``: the
        transitions pooled over the session's earlier requests (None: this request's own)."""
        if trace.num_layers != model.num_moe_layers or trace.num_experts != (
            model.num_routed_experts
        ):
            raise ValueError(
                f"trace: {trace.num_layers} layers x {trace.num_experts} experts does not match "
                f"{model.name} ({model.num_moe_layers} x {model.num_routed_experts})"
            )
        self.model = model
        self.hardware = cache_hardware(
            hardware, model, config.capacity_experts, in_flight or trace.top_k,
            config.global_lines,
        )  # fmt: skip
        self.home = hardware.home_device_id
        self.home_mem = hardware.device(self.home).memory_id
        self.base = base
        self.config = config
        self.ids = trace.expert_ids[decode].astype(np.int64)  # [steps, L, k]
        self.gates = (
            trace.gate_weights[decode].astype(np.float64)
            if trace.gate_weights is not None
            else np.full(self.ids.shape, 1.0 / trace.top_k)
        )
        self.prefill_tokens = len(range(trace.num_tokens)[prefill])
        self.predictor = Predictor(
            trace.num_layers, trace.num_experts, trace.top_k, config.decay,
            config.transition_weight, memory=memory,
        )  # fmt: skip
        self.predictor.seed(trace, prefill)
        capacity: int | list[int] = config.capacity_experts
        if config.global_lines is not None:
            capacity = global_allocation(self.predictor.plan_counts, config.global_lines)
        self.caches = ExpertCaches(
            config.cache, capacity, trace.num_layers, trace.num_experts, self.ids
        )
        self.G = effective_granules(model.expert_ffn_size, config.num_granules)
        most = min(self.G, max(1, config.prefetch_chunks))
        self.chunks = max(c for c in range(1, most + 1) if self.G % c == 0)
        self.result = LoopResult()
        self.memo = PlanMemo(self._solve)
        # Task cycles by cost key, shared by every step's timeline (``Timeline(cycles=)``).
        self.cycles: dict[timing.CostKey, tuple[str, int]] = {}
        self.tables = DecodeTables(self.hardware, model, base, config.num_granules)
        self.lookahead = config.lookahead_layers or self._auto_lookahead()
        self._warm_start()

    # ------------------------------------------------------------------------ run

    def run(self, validate: bool = True) -> LoopResult:
        """Every decode step through the executor; returns the records."""
        for step in range(self.ids.shape[0]):
            self.result.steps.append(self.run_step(step, validate))
        self.result.resolves = self.predictor.resolves
        self.result.plans_solved, self.result.plans_reused = self.memo.solved, self.memo.reused
        return self.result

    def run_step(self, step: int, validate: bool = True) -> StepRecord:
        # Planning CPU: everything the step computes to make its plan (prediction, cache
        # decisions, placements, splits, prefetch candidates and knapsack, the lowering and the
        # timeline the link budgets read), all but the executor's residency and simulation
        # and the reported bounds (``_Step.report_s``).
        started = time.process_time()
        resolved = step > 0 and self.predictor.refresh(self.config.drift_threshold)
        residency_started = time.process_time()
        residency = self._residency()
        st = _Step(self, step, self.prefill_tokens + step)
        st.report_s += time.process_time() - residency_started
        for layer in range(self.model.num_moe_layers):
            self._layer(st, layer)
        self.predictor.observe(self.ids[step], self.gates[step])
        st.solve_s = time.process_time() - started - st.report_s
        return self._record(st, residency, 1, validate, resolved)

    def _record(
        self, st: _Step, residency: Residency, batch: int, validate: bool, resolved: bool
    ) -> StepRecord:
        """Simulate a built step (when ``validate``) and record it."""
        predicted = st.timeline.end
        report = None
        if validate:
            workload = Workload(
                layer_ids=tuple(range(self.model.num_moe_layers)),
                tokens_per_expert=tuple(st.cover),
                num_tokens=batch,
                context_tokens=st.timeline.context_tokens,
            )
            report = simulate(
                self.hardware, self.model, Plan(tasks=tuple(st.tasks)), workload, residency
            )
        clock = self.hardware.clock_hz
        cycles = report.makespan_cycles if report is not None else predicted
        gpu = next(
            (d.utilization for d in report.devices if d.device_id == self.home), 0.0
        ) if report is not None else 0.0  # fmt: skip
        ndp = next((i.cv for i in report.imbalance if i.kind == "ndp"), None) if report else None
        return StepRecord(
            step=st.step,
            latency_s=cycles / clock,
            predicted_s=predicted / clock,
            gpu_util=gpu,
            ndp_load_cv=ndp,
            bytes_moved=report.bytes_moved if report is not None else 0.0,
            weight_bytes=st.weight_bytes,
            solve_s=st.solve_s,
            resolved=resolved,
            violations=[f"{v.code}: {v.message}" for v in report.violations] if report else [],
            bound_s=max(st.bound_s, self._step_bound_s(st)) if st.step >= 0 else 0.0,
            bound_layers_s=st.bound_s,
            bound_step_s=self._step_bound_s(st) if st.step >= 0 else 0.0,
            busy_s=self._busy_s(st),
            phase_s=self._phases_s(st),
            num_tasks=len(st.tasks),
            floor_cpu_s=self._floor_cpu_s(st) if self.config.measure_floor else {},
        )

    def _floor_cpu_s(self, st: _Step) -> dict[str, float]:
        """CPU seconds a planner that emits ``st.tasks`` pays at least, however it decides:
        ``retime``, the tasks timed again in order on a fresh timeline with the run's cost
        memo (every cost already known); ``validate``, each task built again from the fields
        its builder set (pydantic validation, nested models passed as they are)."""
        fields = [(type(t), {k: getattr(t, k) for k in t.model_fields_set}) for t in st.tasks]
        started = time.process_time()
        timing.Timeline(
            self.hardware, self.model, st.timeline.context_tokens, cycles=self.cycles
        ).add(st.tasks)
        retimed = time.process_time()
        for cls, kwargs in fields:
            cls(**kwargs)
        return {"retime": retimed - started, "validate": time.process_time() - retimed}

    def _busy_s(self, st: _Step) -> dict[str, float]:
        """Where a step's time goes, from its timeline (seconds busy): ``attention`` and
        ``gpu`` (all of the home GPU's compute, attention included); ``ndp_mean`` /
        ``ndp_max`` over the NDP units (``ndp_max - ndp_mean``: their imbalance); the links
        into the GPU by purpose (``link_in_demand``, ``link_in_prefetch``, ``link_in_data``:
        returned partial sums) and the links out of it (``link_out``: dispatched
        activations)."""
        clock = self.hardware.clock_hz
        ndp = {d.id: 0.0 for d in self.hardware.devices if d.kind == "ndp"}
        into = {lk.id for lk in self.hardware.links if self.home in lk.dst_device_ids}
        out = {"attention": 0.0, "gpu": 0.0, "link_in_demand": 0.0, "link_in_prefetch": 0.0,
               "link_in_data": 0.0, "link_out": 0.0}  # fmt: skip
        for t in st.tasks:
            start, end = st.timeline.times[t.id]
            sec = (end - start) / clock
            if isinstance(t, ComputeTask):
                if t.device_id == self.home:
                    out["gpu"] += sec
                    out["attention"] += sec if t.op == "attention" else 0.0
                elif t.device_id in ndp:
                    ndp[t.device_id] += sec
            elif isinstance(t, TransferTask):
                if t.link_id in into and t.dst_device_id == self.home:
                    kind = t.purpose if t.purpose in ("demand", "prefetch") else "data"
                    out[f"link_in_{kind}"] += sec
                else:
                    out["link_out"] += sec
        out["ndp_mean"] = float(np.mean(list(ndp.values()))) if ndp else 0.0
        out["ndp_max"] = max(ndp.values(), default=0.0)
        return out

    def _phases_s(self, st: _Step) -> dict[str, float]:
        """A step's timeline cut into exclusive phases that sum to its makespan (seconds), by
        what runs at each moment: ``units_all`` (every NDP unit computes), ``units_some``
        (some do, some idle: the tail imbalance across units), and, with no unit computing,
        ``attention`` (the GPU's attention), ``reduce`` (the GPU adds partial sums),
        ``gpu_experts`` (the GPU computes expert shards alone: the tail of demand-loaded
        experts), ``links_only`` (only transfers run: activation trips, loads the GPU waits
        on) and ``idle`` (nothing runs: launches waiting on nothing, gaps)."""
        clock = self.hardware.clock_hz
        units = sorted(d.id for d in self.hardware.devices if d.kind == "ndp")
        rank = {"attention": 1, "reduce": 2}
        # Events: (cycle, +1 / -1, what); per unit one task at a time, so a count of open
        # unit intervals is the number of units computing.
        events: list[tuple[int, int, str]] = []
        for t in st.tasks:
            start, end = st.timeline.times[t.id]
            if end <= start:
                continue
            if isinstance(t, ComputeTask) and t.device_id in units:
                what = "unit"
            elif isinstance(t, ComputeTask) and t.device_id == self.home:
                what = ("gpu_experts", "attention", "reduce")[rank.get(t.op, 0)]
            elif isinstance(t, TransferTask):
                what = "link"
            else:
                continue
            events += [(start, 1, what), (end, -1, what)]
        events.sort()
        open_: dict[str, int] = {}
        out = dict.fromkeys(
            ("units_all", "units_some", "attention", "reduce", "gpu_experts", "links_only",
             "idle"), 0.0,
        )  # fmt: skip
        last = 0
        for cycle, sign, what in events:
            if cycle > last:
                n = open_.get("unit", 0)
                if n and n >= len(units):
                    key = "units_all"
                elif n:
                    key = "units_some"
                else:
                    key = next(
                        (k for k in ("attention", "reduce", "gpu_experts") if open_.get(k)),
                        "links_only" if open_.get("link") else "idle",
                    )
                out[key] += (cycle - last) / clock
                last = cycle
            open_[what] = open_.get(what, 0) + sign
        end = max(st.timeline.end, last)
        out["idle"] += (end - last) / clock
        return out

    def prefill(self, histogram: np.ndarray, validate: bool = True) -> StepRecord:
        """The prompt as one batch through every layer (``histogram [L, E]`` tokens per expert),
        placed by ``dispatch`` over the warm cache; loads are freed after use."""
        batch = int(histogram[0].sum() // self.model.top_k)
        st = _Step(self, -1, batch)
        residency = self._residency()
        for layer in range(self.model.num_moe_layers):
            tokens = [int(v) for v in histogram[layer]]
            started = time.process_time()
            inst = self._instance(layer, [], tokens, batch)
            a = self._assign(inst)
            st.solve_s += time.process_time() - started
            lw = inst.lowered(a, tuple(st.after), attention=True)
            assert lw.attention is not None
            frees = [
                self._evict(
                    f"L{layer}.free.e{e}", layer, e, tuple(t.id for t in lw.shards_of(e))
                )
                for e in a.loaded
            ]  # fmt: skip
            st.weight_bytes += len(a.loaded) * self.model.expert_bytes()
            shared = self._shared(layer, lw.attention.id, batch)
            st.emit([lw.attention, *shared, *lw.tasks()[1:], *frees])
            st.after = [*lw.waits, *(t.id for t in shared)]
            st.cover.append(tuple(tokens))
        return self._record(st, residency, batch, validate, resolved=False)

    # ------------------------------------------------------------------------ pieces

    def _warm_start(self) -> None:
        """Every policy starts from the prefill's hottest experts of each layer (loaded while
        the prompt ran); ``static`` keeps them for the whole run."""
        for layer in range(self.model.num_moe_layers):
            hot = np.argsort(-self.predictor.plan_counts[layer], kind="stable")
            self.caches.pin(layer, [int(e) for e in hot])

    def _residency(
        self,
        layers: range | list[int] | None = None,
        extra: dict[int, list[tuple[str, int, int]]] | None = None,
    ) -> Residency:
        """The base layout plus the cache lines of ``layers`` (default: all) on the GPU: whole
        experts, and the granules already staged of lines still being staged; plus ``extra``
        (one layer's split loads: expert -> (source, first column, end column))."""
        width = self.model.expert_ffn_size // self.G
        lines: list[WeightSlice] = []
        for e, pieces in (extra or {}).items():
            assert layers is not None and len(layers) == 1
            lines += [_piece(layers[0], e, c0, c1) for _, c0, c1 in pieces]
        for layer in range(self.model.num_moe_layers) if layers is None else layers:
            lines += [_line(layer, e) for e in self.caches.resident(layer)]
            for e, missing in self.caches.partial(layer).items():
                g = 0
                while g < self.G:  # runs of granules already there, one slice each
                    if g in missing:
                        g += 1
                        continue
                    end = g
                    while end < self.G and end not in missing:
                        end += 1
                    lines.append(_piece(layer, e, g * width, end * width))
                    g = end
        by_memory = dict(self.base.by_memory)
        by_memory[self.home_mem] = by_memory.get(self.home_mem, ()) + tuple(lines)
        return Residency(by_memory=by_memory)

    def _instance(
        self,
        layer: int,
        experts: list[int],
        tokens: list[int] | None = None,
        batch: int = 1,
        extra: dict[int, list[tuple[str, int, int]]] | None = None,
    ) -> PlacementInstance:
        """The placement problem of one layer for a one-token batch over ``experts`` (or a
        ``batch`` with ``tokens [E]`` per expert), with the layer's cache lines on the GPU
        (and ``extra``: its split loads, ``_residency``)."""
        others = sum(len(lines) for lines in self.caches.lines) - len(self.caches.lines[layer])

        def problem() -> PlacementProblem:
            counts = tokens
            if counts is None:
                counts = [0] * self.model.num_routed_experts
                for e in experts:
                    counts[e] = 1
            return PlacementProblem(
                self.hardware, self.model, layer, tuple(counts), batch,
                self._residency([layer], extra),
                self.config.num_granules, home_reserved_bytes=others * self.model.expert_bytes(),
            )  # fmt: skip

        if tokens is None:  # one token: from the per-expert tables, no residency built
            return self.tables.instance(
                layer, experts, self.caches.lines[layer], self.caches.partial(layer),
                others * self.model.expert_bytes(), extra, problem,
            )  # fmt: skip
        return PlacementInstance(problem())

    def _assign(self, inst: PlacementInstance) -> Assignment:
        """The layer's placement: looked up by shape, or solved (``PlanMemo``)."""
        return self.memo.assignment(inst)

    def _solve(self, inst: PlacementInstance) -> Assignment:
        """A new shape's placement under the configured ``dispatch``."""
        kind = self.config.dispatch
        if kind == "solver":
            a = solve_greedy(inst)
            if self.config.refine_placement and inst.num_tokens == 1:
                a = self._refine(inst, a)
            return a
        if kind == "monde":
            return monde(inst)[0]
        if kind == "monde_paper":
            return monde_paper(inst)
        cached = set(inst.whole_holders_home())
        if kind == "expert_parallel":
            rr = round_robin(inst)
            return Assignment(
                runs={
                    e: ((self.home, 0, inst.G),) if e in cached else r for e, r in rr.runs.items()
                }
            )
        return Assignment(
            runs={e: ((self.home, 0, inst.G),) for e in inst.experts if e in cached},
            loaded=tuple(e for e in inst.experts if e not in cached),
        )

    def _refine(self, inst: PlacementInstance, a: Assignment) -> Assignment:
        """The placement ``a`` improved expert by expert (``LoopConfig.refine_placement``):
        each expert in turn, the others fixed, takes the option of its ``_options`` (or a
        load, when the GPU memory has room and a unit can send it) that lowers the layer's
        estimate ``_window_s`` most, until a round changes none (at most ``REFINE_ROUNDS``).
        Every option covers each granule once from a holder, so the result is a placement."""
        runs, loaded = dict(a.runs), set(a.loaded)
        best = self._window_s(inst, runs, loaded)
        for _ in range(REFINE_ROUNDS):
            changed = False
            for e in sorted(inst.experts):
                current = runs.pop(e, None)  # None: loaded
                loaded.discard(e)
                choice: tuple[tuple[str, int, int], ...] | None = current
                for option in self._options(inst, e):
                    if option == current:
                        continue
                    runs[e] = option
                    got = self._window_s(inst, runs, loaded)
                    del runs[e]
                    if got < best - 1e-12:
                        choice, best = option, got
                room = (len(loaded) + 1) * inst.expert_bytes <= inst.home_free_bytes
                if current is not None and e in inst.load_parts and room:
                    loaded.add(e)
                    got = self._window_s(inst, runs, loaded)
                    loaded.discard(e)
                    if got < best - 1e-12:
                        choice, best = None, got
                if choice is None:
                    loaded.add(e)
                else:
                    runs[e] = choice
                changed |= choice != current
            if not changed:
                break
        return Assignment(runs=runs, loaded=tuple(sorted(loaded)))

    def _options(self, inst: PlacementInstance, e: int) -> list[tuple[tuple[str, int, int], ...]]:
        """Expert e's options for ``_refine``: whole on each device that holds it all, and
        the layout's split, each granule on its first holder other than the GPU (the
        units' stripes), or on the GPU when it holds it (a line being staged: its granules
        at home, the rest on their stripes); a split with two runs on one device is left
        out (one shard per device and expert)."""
        G, home, holders = inst.G, self.home, inst.holders[e]
        out: list[tuple[tuple[str, int, int], ...]] = [
            ((d, 0, G),) for d in inst.devices if all(d in h for h in holders)
        ]
        for at_home in (False, True):
            owner = []
            for h in holders:
                away = [d for d in inst.devices if d != home and d in h]
                if (at_home or not away) and home in h:
                    owner.append(home)
                elif away:
                    owner.append(away[0])
                else:
                    break
            else:
                split = tuple(_runs(owner, 0, G))
                one_each = len({d for d, _, _ in split}) == len(split)
                if len(split) > 1 and one_each and split not in out:
                    out.append(split)
        return out

    def _window_s(
        self,
        inst: PlacementInstance,
        runs: dict[int, tuple[tuple[str, int, int], ...]],
        loaded: set[int],
    ) -> float:
        """The estimated seconds from a one-token layer's attention to its last result under
        a placement (``_refine``): the larger of the busiest unit (the activations' trip and
        its shards) and the GPU (the shared experts, its resident shards, then the loaded
        experts in id order, each after its load: the loads queue on the links in that
        order). A device's shards run as one grouped GEMM, so every one after its first saves
        a launch (``group_shards``)."""
        clock, home, fixed = self.hardware.clock_hz, self.home, self._fill_fixed
        _, _, trip_s = self._paths
        work: dict[str, float] = {}
        gpu = fixed.shared_s
        seen: set[str] = set()
        for e, option in runs.items():
            for d, g0, g1 in option:
                sec = inst.shard[e][d][g1 - g0] / clock
                if d in seen:
                    sec -= fixed.launch_s[d]
                seen.add(d)
                if d == home:
                    gpu += sec
                else:
                    work[d] = work.get(d, trip_s) + sec
        link, done = 0.0, []
        for e in sorted(loaded):
            link += inst.load_cycles[e] / clock
            done.append((link, inst.shard[e][home][inst.G] / clock))
        after = latest = 0.0
        for end, sec in reversed(done):
            after += sec
            latest = max(latest, end + after)
        return max(max(work.values(), default=0.0), gpu + after, latest)

    def _layer(self, st: _Step, layer: int) -> None:
        cfg, step = self.config, st.step
        stats = self.result.stats
        want, gates = self.ids[step, layer], self.gates[step, layer]
        run_experts, _ = serve(
            layer, want, gates, self.caches, self.predictor, stats,
            cfg.substitute_below, cfg.quality_budget,
        )  # fmt: skip
        started = time.process_time()
        st.bound_s += self._bound_s(st, layer, run_experts)
        st.report_s += time.process_time() - started
        inst = self._instance(layer, run_experts)
        a = self._assign(inst)
        split: dict[int, list[tuple[str, int, int]]] = {}
        trimmed: dict[int, list[tuple[str, int, int]]] = {}
        if cfg.split_loads and cfg.dispatch == "solver" and self.G > 1:
            busy_s, link_s = self._link_busy_s(st, layer), 0.0
            if cfg.trim_loads:
                trimmed, a, link_s = self._trim_loads(inst, a, busy_s)
            split, a = self._split_loads(inst, a, busy_s + link_s)
            split = {**trimmed, **split}
            if split:  # the same layer with the split granules at home, for the lowering
                inst = self._instance(layer, run_experts, extra=split)
        lw = inst.lowered(a, tuple(st.after), attention=True)
        assert lw.attention is not None
        if st.fold > 1:  # the layer before's partial sums, added in this attention's prologue
            lw = replace(lw, attention=lw.attention.model_copy(update={"num_partials": st.fold}))
        assert lw.attention is not None
        attn = lw.attention.id
        shared = self._shared(layer, attn)
        # Whether this layer's reduce folds into the next layer's attention (``fold_reduce``).
        fold = cfg.fold_reduce and lw.reduce is not None and layer + 1 < self.model.num_moe_layers
        # Demand loads: admitted to the cache (evicting a victim first) or freed after use.
        # Eviction ranks residents by their live cumulative gate weight (score-aware).
        assert st.rank is not None
        p = st.rank.probability(layer)
        # Experts this layer runs, and those still arriving from a prefetch, stay.
        protect = set(run_experts) | {e for (lay, e) in st.staged if lay == layer}
        evicts: list[AnyTask] = []  # make room for a demand load: before the loads
        # Trimmed loads admitted as lines still being staged; what their pieces wait on.
        first = self._admit_trimmed(layer, step, trimmed, inst.width, protect, p, attn, evicts)
        kept = set(first)
        split_tasks: list[AnyTask] = []
        for e, pieces in split.items():
            for src, c0, c1 in pieces:
                tid = f"L{layer}.split.e{e}.{c0}"
                st.staged.setdefault((layer, e), []).append(tid)
                split_tasks.append(
                    TransferTask(
                        id=tid, link_id=inst.link(src, self.home).id, src_device_id=src,
                        dst_device_id=self.home, payload="weights", layer=layer,
                        purpose="demand", weights=_piece(layer, e, c0, c1),
                        after=first.get(e, (attn,)),
                    )
                )  # fmt: skip
                st.weight_bytes += self.model.expert_bytes(c1 - c0)
                stats.split_loads += e not in trimmed
        frees: list[AnyTask] = []  # a load not admitted to the cache: freed after its use
        wait: dict[str, list[str]] = {}
        for e in a.loaded:
            stats.loads += 1
            st.weight_bytes += sum(
                self.model.expert_bytes(c1 - c0) for _, c0, c1, _ in inst.load_parts[e]
            )
            staging = e in self.caches.lines[layer]  # a line being staged: the load completes it
            victim = (
                self.caches.victim(layer, step, protect, p)
                if self.caches.admits() and not staging
                else None
            )
            if self.caches.admits() and self.caches.insert(layer, e, victim):
                if victim is not None:
                    evicts.append(self._evict(f"L{layer}.evict.e{victim}", layer, victim, (attn,)))
                    for ld in lw.loads_of(e):
                        wait[ld.id] = [evicts[-1].id]
            else:
                users = tuple(t.id for t in lw.shards_of(e))
                frees.append(self._evict(f"L{layer}.free.e{e}", layer, e, users))
                self.caches.drop(layer, e)
        for sh in lw.shards:
            if sh.device_id == self.home:
                wait.setdefault(sh.id, []).extend(st.staged.get((layer, int(sh.expert or 0)), []))
        tasks = lw.tasks()
        if split:
            tasks = self._gpu_order(lw, tasks, set(split), set(trimmed))
        if fold:
            assert lw.reduce is not None
            tasks = [t for t in tasks if t.id != lw.reduce.id]
        waited: list[AnyTask] = [_wait(t, wait.get(t.id, ())) for t in tasks]
        if cfg.group_shards:
            waited = _grouped(waited, st.alias)
        # Cut before the returns (gathers), or after everything when there are none.
        tail = len(lw.gathers) + (lw.reduce is not None and not fold)
        cut = len(waited) - tail if lw.gathers else len(waited)
        head = waited[:cut]
        # Attention, then the shared experts (they overlap the routed experts' dispatch), then
        # the evictions that make room for demand loads, then the rest up to the returns.
        # Split loads follow the placement's loads and the dispatches (a link both share
        # carries the activations first).
        early = {t.id for t in (*lw.loads, *lw.dispatches)}
        at = 1 + sum(1 for t in head[1:] if t.id in early)
        st.emit([*head[:1], *shared, *evicts, *head[1:at], *split_tasks, *head[at:]])
        if cfg.prefetch and layer + 1 < self.model.num_moe_layers:
            st.emit(self._prefetch(st, layer, waited[cut : cut + len(lw.gathers)], attn))
        st.emit(waited[cut:])
        if cfg.prefetch and lw.gathers and layer + 1 < self.model.num_moe_layers:
            # The link is idle again after the returns, through the reduce and the next
            # layer's attention: a second round stages in that gap.
            st.emit(self._prefetch(st, layer, [], attn))
        frees += self._split_frees(st, layer, split, kept, lw)
        st.emit([_aliased(t, st.alias) for t in frees])  # they wait on the layer's shards
        waits = lw.reduce.after if fold and lw.reduce is not None else lw.waits
        st.after = [*waits, *(t.id for t in shared)]
        st.fold = lw.reduce.num_partials if fold and lw.reduce is not None else 1
        cover = [0] * self.model.num_routed_experts
        for e in run_experts:
            cover[e] = 1
        st.cover.append(tuple(cover))

    def _split_frees(
        self, st: _Step, layer: int, split: dict[int, list[tuple[str, int, int]]],
        kept: set[int], lw: LoweredLayer,
    ) -> list[AnyTask]:  # fmt: skip
        """Split loads leave after their expert's shards; a trimmed load in ``kept`` stays
        (its line is being staged)."""
        frees: list[AnyTask] = []
        for e, pieces in split.items():
            if e in kept:
                continue
            users = (*st.staged[(layer, e)], *(t.id for t in lw.shards_of(e)))
            for _, c0, c1 in pieces:
                frees.append(
                    EvictTask(
                        id=f"L{layer}.splitfree.e{e}.{c0}", memory_id=self.home_mem,
                        weights=_piece(layer, e, c0, c1), after=users,
                    )
                )  # fmt: skip
        return frees

    def _gpu_order(
        self,
        lw: LoweredLayer,
        tasks: list[ComputeTask | TransferTask],
        split: set[int],
        trimmed: set[int],
    ) -> list[ComputeTask | TransferTask]:
        """The GPU's shards in the order their weights are there, as the link brings them:
        resident shards, loaded experts' (in load order), a trimmed load's middle run, then
        the split pieces. The GPU runs its tasks in list order, so a shard whose weights
        are in waits on none whose weights are still coming (earliest ready first is the
        shortest a single device takes)."""
        late = [t for t in lw.shards if t.device_id == self.home and t.expert in split]
        ids = {t.id for t in late}
        rest = [t for t in tasks if t.id not in ids]
        end = len(rest) - len(lw.gathers) - (lw.reduce is not None)
        mid = [t for t in late if t.expert not in trimmed]
        last = [t for t in late if t.expert in trimmed]
        return [*rest[:end], *last, *mid, *rest[end:]]

    def _admit_trimmed(
        self,
        layer: int,
        step: int,
        trimmed: dict[int, list[tuple[str, int, int]]],
        width: int,
        protect: set[int],
        p: np.ndarray,
        attn: str,
        evicts: list[AnyTask],
    ) -> dict[int, tuple[str, ...]]:
        """Admit each trimmed load (``_trim_loads``) as a line still being staged with the
        granules it brings, evicting a victim first (appended to ``evicts``); returns, for
        each admitted expert, the task ids its pieces wait on. One not admitted is freed
        after use, like a split load."""
        first: dict[int, tuple[str, ...]] = {}
        for e, pieces in trimmed.items():
            self.result.stats.loads += 1
            victim = self.caches.victim(layer, step, protect, p) if self.caches.admits() else None
            granules = {g for _, c0, c1 in pieces for g in range(c0 // width, c1 // width)}
            if self.caches.admits() and self.caches.stage(layer, e, granules, self.G, victim):
                first[e] = (attn,)
                if victim is not None:
                    evicts.append(self._evict(f"L{layer}.evict.e{victim}", layer, victim, (attn,)))
                    first[e] = (evicts[-1].id,)
        return first

    def _trim_loads(
        self, inst: PlacementInstance, a: Assignment, link_busy_s: float
    ) -> tuple[dict[int, list[tuple[str, int, int]]], Assignment, float]:
        """The layer's last whole demand load, trimmed: the units that hold the granules at
        its two ends compute them in place while the link brings the middle run (one
        contiguous run, so one GPU shard), when that lowers the estimate ``max(busiest unit,
        the links' work then the trimmed expert's GPU shard, GPU work)`` (the layer's own
        routing, never a prediction). Granules leave one at a time from the end whose
        unit's estimate is lower, while the estimate falls. Returns (expert -> its middle
        run's load pieces (source, first column, end column), the assignment with the end
        granules on their units and the middle at home, the trimmed pieces' link seconds).
        A line being staged is not trimmed (its load is only its missing granules)."""
        model, clock, home = self.model, self.hardware.clock_hz, self.home
        layer = inst.layer
        if not a.loaded:
            return {}, a, 0.0
        e = a.loaded[-1]
        if e in self.caches.lines[layer] or len(inst.load_parts[e]) == 0:
            return {}, a, 0.0
        G = inst.G
        owner = []  # the unit each granule of e is computed on when kept back
        for g in range(G):
            away = sorted(d for d in inst.holders[e][g] if d != home and d in inst.shard[e])
            if not away or self.hardware.device(away[0]).kind != "ndp":
                return {}, a, 0.0
            owner.append(away[0])
        _, _, trip_s = self._paths
        units = sorted({d for x in a.runs for d, _, _ in a.runs[x] if d != home} | set(owner))
        work = dict.fromkeys(units, trip_s)
        gpu = costs.shared_expert_s(self.hardware.device(home), model, 1)
        gpu = gpu if model.num_shared_experts else 0.0
        for x in a.runs:
            for d, g0, g1 in a.runs[x]:
                if d == home:
                    gpu += inst.shard[x][home][g1 - g0] / clock
                else:
                    work[d] += inst.shard[x][d][g1 - g0] / clock
        others = [x for x in a.loaded if x != e]
        gpu += sum(inst.shard[x][home][G] for x in others) / clock
        link0 = link_busy_s + sum(inst.load_cycles[x] for x in others) / clock

        def estimate(lo: int, hi: int) -> tuple[float, float]:
            w = dict(work)
            for d, g0, g1 in _runs(owner, 0, lo) + _runs(owner, hi, G):
                w[d] += inst.shard[e][d][g1 - g0] / clock
            link = sum(c for *_, c in self._chunk(inst, e, lo * inst.width, hi * inst.width))
            link_s = link / clock
            shard = inst.shard[e][home][hi - lo] / clock
            return max(max(w.values()), link0 + link_s + shard, gpu + shard), link_s

        lo, hi = 0, G
        best, link_s = estimate(lo, hi)
        while hi - lo > 1:
            trials = [(estimate(lo + 1, hi), lo + 1, hi), (estimate(lo, hi - 1), lo, hi - 1)]
            (got, got_link), nlo, nhi = min(trials, key=lambda t: (t[0][0], t[1]))
            if got >= best - 1e-12:
                break
            best, link_s, lo, hi = got, got_link, nlo, nhi
        if (lo, hi) == (0, G):
            return {}, a, 0.0
        pieces = [(src, c0, c1) for src, c0, c1, _ in
                  self._chunk(inst, e, lo * inst.width, hi * inst.width)]  # fmt: skip
        runs = dict(a.runs)
        runs[e] = (*_runs(owner, 0, lo), (home, lo, hi), *_runs(owner, hi, G))
        return {e: pieces}, Assignment(runs=runs, loaded=tuple(others)), link_s

    def _split_loads(
        self, inst: PlacementInstance, a: Assignment, link_busy_s: float
    ) -> tuple[dict[int, list[tuple[str, int, int]]], Assignment]:
        """Granules of the layer's absent experts to load over the links into the GPU while
        the units compute the rest, on top of the placement ``a``: (expert -> (source, first
        column, end column) of its one load, and the assignment with those granules at home).

        Each expert the placement runs over NDP units (absent from the GPU) can give the GPU
        one contiguous run of granules around a boundary between two units' stripes (``_Fill``:
        the unit below gives its top granules, the unit above its bottom ones, so one expert
        relieves two units; a host CPU gives none: the CPU-assisted offload loop of ``bench
        cache`` is left as it was measured). Every round each of the busiest units gives one
        granule more (at the unit's effective rate) to the link (one transfer per unit and
        expert, after what the link still carries and the placement's own loads; then one GPU
        shard per expert) while that lowers the estimate ``max(busiest unit, the links' work
        and the last piece's GPU shard, GPU work)``: a water-filling on granules, with the
        layer's own routing known (never a prediction). Capped by the GPU memory left beside
        every expert of the layer loaded whole.
        ``link_busy_s``: how long the links into the GPU stay busy after this layer's
        attention (``_link_busy_s``, plus a trimmed load's pieces).
        Estimates only: the timeline and the executor time the plan."""
        got = self._water_fill(inst, a, link_busy_s)
        return ({}, a) if got is None else got

    def _link_busy_s(self, st: _Step, layer: int) -> float:
        """Seconds the links into the GPU are still busy after ``layer``'s attention (which
        runs after the timeline's end and the GPU's last task): the head start of the
        layer's own demand loads, shared by ``_trim_loads`` and ``_split_loads``."""
        fixed = self._fill_fixed
        key = (layer, st.fold, st.timeline.context_tokens)
        attention = fixed.attention_cycles.get(key)
        if attention is None:
            attention = fixed.attention_cycles[key] = costs.task_cycles(
                self.hardware, self.model,
                ComputeTask(id="probe", device_id=self.home, op="attention", layer=layer,
                            num_tokens=1, num_partials=st.fold),
                st.timeline.context_tokens,
            )[1]  # fmt: skip
        attn_end = max(st.timeline.end, st.timeline.free_at(self.home)) + attention
        busy = max([0, *(st.timeline.free_at(lk) - attn_end for lk in fixed.links_in)])
        return busy / self.hardware.clock_hz

    def _water_fill(
        self, inst: PlacementInstance, a: Assignment, link_busy_s: float
    ) -> tuple[dict[int, list[tuple[str, int, int]]], Assignment] | None:
        """``_split_loads``' rounds (``link_busy_s``: how long the links into the GPU are
        still busy after this layer's attention): (the split, the assignment), or None when
        nothing is split."""
        fill = _Fill.start(self, inst, a, link_busy_s)
        if fill is None:
            return None
        estimate = fill.estimate()
        while True:
            top = max(fill.work.values())
            movers = [d for d in fill.work if fill.work[d] >= top - 1e-12]
            trial = fill.copy()
            if not all(trial.give(d) for d in movers) or trial.moved > fill.most:
                break
            new = trial.estimate()
            if new >= estimate:
                break
            fill, estimate = trial, new
        return fill.result() if fill.anchors else None

    def _shared(self, layer: int, attn: str, batch: int = 1) -> list[AnyTask]:
        """The layer's shared experts on the GPU (one task), if the model has any."""
        if self.model.num_shared_experts == 0:
            return []
        return [
            ComputeTask(
                id=f"L{layer}.mb0.shared", device_id=self.home, op="shared_expert", layer=layer,
                num_tokens=batch, after=(attn,),
            )
        ]  # fmt: skip

    def _evict(self, tid: str, layer: int, expert: int, after: tuple[str, ...]) -> EvictTask:
        return EvictTask(
            id=tid, memory_id=self.home_mem, weights=_line(layer, expert),
            after=after,
        )  # fmt: skip

    def _prefetch(self, st: _Step, layer: int, rest: list[AnyTask], attn: str) -> list[AnyTask]:
        """Stage granules of the coming layers' most valuable absent experts in the link's idle
        gap (chunked prefetch: an expert too large for one gap arrives over several chunks;
        a chunk is ``G / chunks`` granules).

        The gap runs from when this layer's attention has ended and the link to the GPU is
        free to when this layer's partial sums are ready to return, or, with no returns, to the
        end of this layer plus the next layer's attention: simulated cycles of this step's
        timeline, never wall time (with ``prefetch_spill``, the round with no returns left
        may overrun that by up to one chunk's link time and half the gap). Candidates are the
        next ``lookahead`` layers' experts, ranked by the token's experts in this and the two
        layers before (pooled transitions,
        ``Predictor.prefetch_probability``). Items of the knapsack are chunks: the missing ones
        of lines being staged, and those of the most probable absent experts, each paired with
        the least probable resident it would replace (evicted before its first granule
        arrives), so memory use does not grow.
        """
        G = self.G
        assert st.rank is not None
        known = range(max(0, layer - 2), layer + 1)  # layers whose experts the token has chosen
        targets = range(layer + 1, min(self.model.num_moe_layers, layer + 1 + self.lookahead))
        per = G // self.chunks  # granules per chunk
        width = self.model.expert_ffn_size // G * per
        ready = self._gap_end(st, layer, rest)
        if ready <= st.timeline.times[attn][1] and self.tables.least_piece_cycles > 0:
            return []  # no gap (the budget is 0) and every chunk takes link time: none fits
        runs: list[tuple[float, list[int], list[int], list[int], list[int]]] = []
        chunks: list[tuple[int, int, Candidates, list[int] | None]] = []
        victims: dict[tuple[int, int], int | None] = {}
        links: set[str] = set()
        count = longest = 0
        for nxt in targets:
            # Kept for the step while the target layer's cache is as it was (the second
            # round of a layer asks again; ``ExpertCaches.changes``).
            got = st.targets.get((nxt, layer))
            if got is None or got.changes != self.caches.changes[nxt]:
                got = st.targets[(nxt, layer)] = self._target_items(st, nxt, known)
            runs += got.runs
            chunks += got.chunks
            count += got.count
            longest = max(longest, got.longest)
            links |= got.links
            victims.update(got.victims)
        if not count:
            return []
        size = self.model.expert_bytes(width)
        budget = self._link_budget(st, ready, attn, links, longest, not rest)
        # The greedy set (``select(problem, "greedy")`` on the ``PrefetchProblem`` of these
        # chunks laid end to end, without the bound nobody here reads), ranked lazily.
        picked = greedy_runs(runs, size, count * size, budget)
        if picked is None:
            picked = _flat_greedy(runs, size, count * size, budget)
        out: list[AnyTask] = []
        first: dict[tuple[int, int], tuple[str, ...]] = {}  # what a new line's granules wait on
        for r, j in sorted(picked):
            nxt, e, cand, subset = chunks[r]
            c = j if subset is None else subset[j]
            pieces = cand.pieces[c]
            granules = set(range(c * per, (c + 1) * per))
            if e not in self.caches.lines[nxt]:  # a new line: its victim leaves first
                victim = victims.get((nxt, e))
                if not self.caches.stage(nxt, e, granules, G, victim):
                    continue
                first[(nxt, e)] = (attn,)
                if victim is not None:
                    out.append(self._evict(f"L{nxt}.pevict.e{victim}", nxt, victim, (attn,)))
                    first[(nxt, e)] = (out[-1].id,)
            else:
                self.caches.stage(nxt, e, granules, G, None)
            after = first.get((nxt, e), (attn,))
            for src, c0, c1, _ in pieces:
                tid = f"L{nxt}.prefetch.e{e}.{c0}"
                st.staged.setdefault((nxt, e), []).append(tid)
                out.append(
                    TransferTask(
                        id=tid, link_id=self.tables.link_id(src), src_device_id=src,
                        dst_device_id=self.home, payload="weights", layer=nxt, purpose="prefetch",
                        weights=_piece(nxt, e, c0, c1),
                        after=after,
                    )
                )  # fmt: skip
            self.result.stats.prefetches += 1
            st.weight_bytes += self.model.expert_bytes(width)
        return out

    def _target_items(self, st: _Step, nxt: int, known: range) -> _TargetItems:
        """The knapsack items of one target layer ``nxt`` of ``_prefetch`` from the token's
        experts in the ``known`` layers: the missing chunks of its lines being staged and
        every chunk of its most probable absent experts (``top_k`` at most, each paired with
        the resident it would replace), by gain, then in chunk order."""
        G = self.G
        per = G // self.chunks  # granules per chunk
        remote_ok = self.config.dispatch != "demand"
        out = _TargetItems(self.caches.changes[nxt])
        assert st.rank is not None
        p = st.rank.prefetch_probability(nxt, known)
        gain: dict[int, float] = {}
        for e, _missing in self.caches.partial(nxt).items():
            gain[e] = float(p[e])
        for e_in, e_out, g in self.caches.swaps(nxt, p, limit=self.model.top_k):
            gain[e_in], out.victims[(nxt, e_in)] = g, e_out
        if not gain:
            return out
        # Each candidate's chunks from the tables of its record (the probe instance's
        # tables; records made in expert order, as the probe makes them: the plan memo
        # numbers its classes in that order).
        lines, partial = self.caches.lines[nxt], self.caches.partial(nxt)
        table = {e: self.tables.candidates(nxt, e, lines, partial, per, remote_ok)
                 for e in sorted(gain)}  # fmt: skip
        for e in sorted(gain, key=lambda x: -gain[x]):
            cand = table[e]
            if cand is None:
                continue
            missing = partial.get(e)
            if missing is None:  # every chunk
                out.runs.append((gain[e], cand.saved, cand.cycles, cand.by_saved, cand.least))
                out.chunks.append((nxt, e, cand, None))
                out.count += len(cand.pieces)
                out.longest = max(out.longest, *cand.cycles)
                out.links |= cand.all_links
                continue
            subset = sorted({g // per for g in missing})
            saved, cycles = [cand.saved[c] for c in subset], [cand.cycles[c] for c in subset]
            out.runs.append((gain[e], saved, cycles, *ranked(saved, cycles)))
            out.chunks.append((nxt, e, cand, subset))
            out.count += len(subset)
            out.longest = max(out.longest, *cycles)
            for c in subset:
                out.links |= cand.links[c]
        return out

    def _gap_end(self, st: _Step, layer: int, rest: list[AnyTask]) -> int:
        """When ``_prefetch``'s gap ends (cycles): the returns ``rest`` are ready, or, with
        none, this layer has ended and the next layer's attention has run."""
        if rest:
            return min(st.timeline.ready(t) for t in rest)
        fixed = self._fill_fixed
        key = (layer + 1, 1, st.timeline.context_tokens)
        attention = fixed.attention_cycles.get(key)
        if attention is None:
            attention = fixed.attention_cycles[key] = costs.task_cycles(
                self.hardware, self.model,
                ComputeTask(
                    id="probe", device_id=self.home, op="attention", layer=layer + 1,
                    num_tokens=1,
                ),
                st.timeline.context_tokens,
            )[1]  # fmt: skip
        return st.timeline.end + attention

    def _link_budget(
        self, st: _Step, ready: int, attn: str, links: set[str], longest: int, last: bool
    ) -> int:
        """The link cycles ``_prefetch`` may fill: from when this layer's attention has ended
        and ``links`` are free to ``ready`` (``_gap_end``); with ``prefetch_spill`` in the
        round with no returns left (``last``), up to one chunk (``longest`` cycles) and never
        more than half the gap past it, into the next layer's expert window (a gap far
        shorter than a chunk stays idle: spilling most of a chunk delays the next layer's own
        loads as long as it stages)."""
        free = max([st.timeline.times[attn][1], *(st.timeline.free_at(lk) for lk in links)])
        gap = max(0, ready - free)
        if last and self.config.prefetch_spill:
            return gap + min(longest - 1, gap // 2)
        return gap

    def _bound_s(self, st: _Step, layer: int, run_experts: list[int]) -> float:
        """A lower bound on one token's layer with the cache as it stands (seconds), under the
        cost model (``hwmodel.costs``): attention, then the largest of

        (a) the shared experts on the GPU;
        (b) the absent experts' weight bytes ``A``: either all of them come over the links into
            the GPU (``A / P``), or some weight-holding unit computes in place, and then the
            layer waits at least ``f`` (the activations' trip to the unit and back, and one
            launch) beside the unit's own time, while the links carry the rest at the same
            time: ``(A + R f) / (R + P)``; the smaller of the two;
        (c) all the layer's weight bytes over those paths plus the GPU's own memory.

        ``R`` and the GPU's rate are effective rates (``_seconds_per_byte``: memory efficiency,
        tile overheads, compute), what the cost model lets a unit reach, never the nominal
        bandwidth; ``P`` is every link into the GPU at full bandwidth. Adds the layer's ``A``
        and attention to ``st`` for the whole-step bound (``_step_bound_s``), and, when
        ``A > 0``, ``min(f, A / P)``: the least time in this layer's expert window that every
        weight-holding unit streams nothing (one computing in place waits for its activations'
        trip and its launch; when none does, the layer lasts ``A / P`` with every unit idle)."""
        home, model = self.hardware.device(self.home), self.model
        shared_s = costs.shared_expert_s(home, model, 1)
        shared_bytes = (
            costs.expert_bytes_read(
                model, 1, model.num_shared_experts * model.shared_expert_ffn_size
            )
            if model.num_shared_experts
            else 0.0
        )
        absent_bytes = resident_bytes = 0.0
        for e in run_experts:
            missing = self.caches.partial(layer).get(e)
            if e in self.caches.lines[layer] and not missing:
                resident_bytes += model.expert_bytes()
            else:
                share = 1.0 if missing is None else len(missing) / self.G
                absent_bytes += share * model.expert_bytes()
                resident_bytes += (1.0 - share) * model.expert_bytes()
        readers, links, trip_s = self._paths
        absent_s = 0.0
        if absent_bytes > 0:
            in_place = (absent_bytes + readers * trip_s) / max(readers + links, 1.0)
            absent_s = min(absent_bytes / links, in_place) if links > 0 else in_place
        home_rate = 1.0 / _seconds_per_byte(home, model)
        everything = (shared_bytes + resident_bytes + absent_bytes) / (readers + links + home_rate)
        attention = costs.attention_s(home, model, 1, st.timeline.context_tokens)
        st.absent_bytes += absent_bytes
        st.attention_s += attention
        if absent_bytes > 0 and readers > 0:
            st.unit_idle_s += min(trip_s, absent_bytes / links) if links > 0 else trip_s
        return attention + max(shared_s, absent_s, everything)

    def _step_bound_s(self, st: _Step) -> float:
        """A lower bound on the whole step (seconds) that counts the links into the GPU once:
        the step's other transfers into the GPU (prefetch, returned partial sums: ``B`` bytes'
        worth of link time, ``bandwidth x busy seconds``) use the same links as the absent
        bytes' demand loads. With ``T`` the step, ``ATT`` its attention (no expert work runs
        during a layer's attention: it waits on the layer before and the layer after waits on
        it) and ``W`` the units' least idle time in the layers' expert windows (``min(f, A_l /
        P)`` per layer with absent bytes, ``_bound_s``; windows of different layers do not
        overlap), the units compute at most ``R (T - ATT - W)`` bytes and the links carry at
        most ``P T - B``, so ``sum(A) <= R (T - ATT - W) + P T - B``:
        ``T >= (sum(A) + R (ATT + W) + B) / (R + P)``; never below the attention alone."""
        readers, links, _ = self._paths
        if readers + links <= 0:
            return st.attention_s
        into = {lk.id: lk for lk in self.hardware.links if self.home in lk.dst_device_ids}
        clock = self.hardware.clock_hz
        other_bytes = 0.0
        for t in st.tasks:
            if isinstance(t, TransferTask) and t.link_id in into and t.purpose != "demand":
                start, end = st.timeline.times[t.id]
                other_bytes += into[t.link_id].bandwidth_bytes_per_s * (end - start) / clock
        need = st.absent_bytes + readers * (st.attention_s + st.unit_idle_s) + other_bytes
        return max(st.attention_s, need / (readers + links))

    @functools.cached_property
    def _fill_fixed(self) -> _FillFixed:
        """What ``_Fill`` and ``_link_busy_s`` read of the hardware, computed once a run."""
        hw, model, home = self.hardware, self.model, self.home
        shared = costs.shared_expert_s(hw.device(home), model, 1)
        return _FillFixed(
            ndp_linked=frozenset(
                d.id for d in hw.devices if d.kind == "ndp" and hw.link_between(d.id, home)
            ),
            seconds_per_byte={d.id: _seconds_per_byte(d, model) for d in hw.devices},
            shared_s=shared if model.num_shared_experts else 0.0,
            home_capacity_bytes=next(
                m.capacity_bytes for m in hw.memories if m.id == self.home_mem
            ),
            links_in=tuple(sorted({lk.id for lk in hw.links if home in lk.dst_device_ids})),
            launch_s={d.id: d.launch_s for d in hw.devices},
        )

    @functools.cached_property
    def _paths(self) -> tuple[float, float, float]:
        """(``R``: bytes per second every other weight-holding unit computes in place at once,
        at its effective rate; ``P``: bytes per second every link into the GPU delivers at
        once; ``f``: the shortest round trip of one token's activations to such a unit and
        back plus its launch, seconds). See ``_bound_s``."""
        held = {m for m, slices in self.base.by_memory.items() if slices}
        units = [d for d in self.hardware.devices if d.id != self.home and d.memory_id in held]
        readers = sum(1.0 / _seconds_per_byte(d, self.model) for d in units)
        links = sum(
            lk.bandwidth_bytes_per_s * lk.num_lanes
            for lk in self.hardware.links
            if self.home in lk.dst_device_ids
        )
        act = self.model.activation_bytes(1)
        trips = []
        for d in units:
            down = [lk for lk in self.hardware.links
                    if self.home in lk.src_device_ids and d.id in lk.dst_device_ids]  # fmt: skip
            up = [lk for lk in self.hardware.links
                  if d.id in lk.src_device_ids and self.home in lk.dst_device_ids]  # fmt: skip
            trips.append(
                min((costs.transfer_s(lk, act) for lk in down), default=0.0)
                + d.launch_s
                + min((costs.transfer_s(lk, act) for lk in up), default=0.0)
            )
        return readers, links, min(trips, default=0.0)

    def _auto_lookahead(self) -> int:
        """Layers ahead worth prefetching for: one expert's load over the fastest link into
        the GPU against a layer's GPU work for one token (attention + top_k experts), rounded
        up, 1 to 3."""
        home = self.hardware.device(self.home)
        model = self.model
        layer_s = costs.attention_s(home, model, 1, self.prefill_tokens) + model.top_k * (
            costs.expert_shard_s(home, model, 1, model.expert_ffn_size)
        )
        into = [lk for lk in self.hardware.links if self.home in lk.dst_device_ids]
        if not into or layer_s <= 0:
            return 1
        load_s = min(costs.transfer_s(lk, model.expert_bytes()) for lk in into)
        return int(min(3, max(1, -(-load_s // layer_s))))

    def _chunk(
        self, probe: PlacementInstance, e: int, c0: int, c1: int
    ) -> list[tuple[str, int, int, int]]:
        """The load pieces (source, start, end, link cycles) of columns [c0, c1) of expert e."""
        out = []
        for src, p0, p1, _ in probe.load_parts[e]:
            lo, hi = max(p0, c0), min(p1, c1)
            if lo < hi:
                cycles = probe._tables.weight_cycles(probe.link(src, self.home), hi - lo)
                out.append((src, lo, hi, cycles))
        return out


@dataclass(slots=True)
class _TargetItems:
    """One target layer's prefetch knapsack items (``DecodeRun._target_items``), made while
    the layer's cache had changed ``changes`` times, as runs of ``select.greedy_runs`` (one
    per candidate expert: its gain, the saved and link cycles of its chunks, their order by
    saved cycles and the least cycles from each place on) with each run's ``chunks`` (target
    layer, expert, candidate, chunk numbers or None for all of them); ``count`` chunks in all,
    the ``longest`` one's link cycles, the ``links`` they use, and each new line's victim by
    (target layer, expert)."""

    changes: int
    runs: list[tuple[float, list[int], list[int], list[int], list[int]]] = field(
        default_factory=list
    )
    chunks: list[tuple[int, int, Candidates, list[int] | None]] = field(default_factory=list)
    count: int = 0
    longest: int = 0
    links: set[str] = field(default_factory=set)
    victims: dict[tuple[int, int], int | None] = field(default_factory=dict)


@dataclass
class _FillFixed:
    """Hardware figures of a run that ``_Fill`` and ``_link_busy_s`` read every layer: the
    NDP units with a link to the GPU, each device's ``_seconds_per_byte``, the shared experts'
    GPU seconds (0 without), the GPU memory's bytes, the links into the GPU, each device's
    launch seconds; and memos of
    link seconds by (unit, granules, granule bytes) and attention cycles by (layer, partial
    sums folded, context tokens)."""

    ndp_linked: frozenset[str]
    seconds_per_byte: dict[str, float]
    shared_s: float
    home_capacity_bytes: float
    links_in: tuple[str, ...]
    launch_s: dict[str, float]
    transfer_s: dict[tuple[str, int, float], float] = field(default_factory=dict)
    attention_cycles: dict[tuple[int, int, int], int] = field(default_factory=dict)


@dataclass
class _Fill:
    """The state of ``DecodeRun._split_loads``' water-filling for one layer.

    Each absent expert run over NDP units may give the GPU one contiguous run of granules,
    anchored at a boundary between two consecutive units' stripes (or at the top of the last):
    the unit below gives its stripe's top granules (``kl``), the unit above its bottom ones
    (``kr``), so every unit keeps one contiguous run and one expert can relieve two units.
    A unit gives to one anchor at a time (``side``)."""

    run: DecodeRun
    inst: PlacementInstance
    a: Assignment
    stripes: dict[int, list[tuple[str, int, int]]]  # expert -> its unit runs by column
    work: dict[str, float]  # seconds each unit computes (trip included)
    unit_s: dict[str, float]  # seconds per granule on each unit
    gpu0_s: float  # the GPU's own work in the window
    link0_s: float  # the links' work before any split load
    most: int  # granules the GPU memory takes
    anchors: dict[int, list[int]] = field(default_factory=dict)  # expert -> [j, kl, kr]
    side: dict[str, tuple[int, int]] = field(default_factory=dict)  # unit -> (expert, +-1)
    moved: int = 0

    @staticmethod
    def start(
        run: DecodeRun, inst: PlacementInstance, a: Assignment, link_busy_s: float
    ) -> _Fill | None:
        model, clock, home = run.model, run.hardware.clock_hz, run.home
        fixed = run._fill_fixed
        granule_bytes = model.expert_bytes(model.expert_ffn_size // inst.G)
        layer = inst.layer
        stripes: dict[int, list[tuple[str, int, int]]] = {}
        ndp_linked = fixed.ndp_linked
        for e in sorted(a.runs):
            runs = sorted(a.runs[e], key=lambda r: r[1])
            if e in run.caches.lines[layer] or any(d == home for d, _, _ in runs):
                continue
            if all(d in ndp_linked for d, _, _ in runs):
                stripes[e] = runs
        if not stripes:
            return None
        _, _, trip_s = run._paths
        # Sorted: the rounds give granules unit by unit in ``work``'s order, which must not
        # be a set's (hash-seed dependent) order.
        units = sorted({d for e in a.runs for d, _, _ in a.runs[e] if d != home})
        unit_s = {d: fixed.seconds_per_byte[d] * granule_bytes for d in units}
        work = dict.fromkeys(units, trip_s)
        gpu = fixed.shared_s
        for e in a.runs:
            for d, g0, g1 in a.runs[e]:
                if d == home:
                    gpu += inst.shard[e][home][g1 - g0] / clock
                else:
                    work[d] += (g1 - g0) * unit_s[d]
        gpu += sum(inst.shard[e][home][inst.G] for e in a.loaded) / clock
        link = link_busy_s + sum(inst.load_cycles[e] for e in a.loaded) / clock
        lines = sum(len(x) for x in run.caches.lines)
        room = fixed.home_capacity_bytes - (lines + len(inst.experts)) * model.expert_bytes()
        return _Fill(run, inst, a, stripes, work, unit_s, gpu, link,
                     int(max(0.0, room) // granule_bytes))  # fmt: skip

    def copy(self) -> _Fill:
        return replace(
            self, work=dict(self.work), anchors={e: list(v) for e, v in self.anchors.items()},
            side=dict(self.side),
        )  # fmt: skip

    def _room(self, e: int, j: int, sign: int) -> bool:
        """Whether the unit on side ``sign`` of anchor ``j`` of expert e has a granule left."""
        runs, (_, kl, kr) = self.stripes[e], self.anchors[e]
        i = j - 1 if sign < 0 else j
        if not 0 <= i < len(runs):
            return False
        _, g0, g1 = runs[i]
        return (kl if sign < 0 else kr) < g1 - g0

    def give(self, d: str) -> bool:
        """Unit d gives one granule more (to its anchor, to a neighbour's anchor it can join,
        or to a new anchor on an expert not split yet); False when it cannot."""
        if d in self.side:
            e, sign = self.side[d]
            if not self._room(e, self.anchors[e][0], sign):
                return False
        else:
            found = None
            for e, (j, kl, kr) in self.anchors.items():  # join a neighbour's anchor
                for sign, k in ((-1, kl), (1, kr)):
                    i = j - 1 if sign < 0 else j
                    runs = self.stripes[e]
                    if k == 0 and 0 <= i < len(runs) and runs[i][0] == d:
                        found = (e, sign)
            if found is None:
                # A new anchor between d and the unit it pairs with (runs 0|1, 2|3, ...), so
                # that an expert relieves two units: at the top of d's run when it is even.
                for e, runs in self.stripes.items():
                    at = next((i for i, r in enumerate(runs) if r[0] == d), None)
                    if e not in self.anchors and at is not None:
                        j = at + 1 if at % 2 == 0 else at
                        self.anchors[e] = [j, 0, 0]
                        found = (e, -1 if j == at + 1 else 1)
                        break
            if found is None:
                return False
            self.side[d] = found
        e, sign = self.side[d]
        self.anchors[e][1 if sign < 0 else 2] += 1
        self.work[d] -= self.unit_s[d]
        self.moved += 1
        return True

    def _pieces(self, e: int) -> list[tuple[str, int, int]]:
        """Expert e's split: (source unit, first granule, end granule) of each load."""
        runs, (j, kl, kr) = self.stripes[e], self.anchors[e]
        out = []
        if kl:
            d, _, g1 = runs[j - 1]
            out.append((d, g1 - kl, g1))
        if kr:
            d, g0, _ = runs[j]
            out.append((d, g0, g0 + kr))
        return out

    def estimate(self) -> float:
        """max(busiest unit, the links' work then the last piece's GPU shard, GPU work)."""
        clock, home = self.run.hardware.clock_hz, self.run.home
        granule_bytes = self.run.model.expert_bytes(self.run.model.expert_ffn_size // self.inst.G)
        transfer_s = self.run._fill_fixed.transfer_s
        link, gpu, last = self.link0_s, self.gpu0_s, 0.0
        for e in sorted(self.anchors):
            pieces = self._pieces(e)
            for d, g0, g1 in pieces:
                got = transfer_s.get((d, g1 - g0, granule_bytes))
                if got is None:
                    lk = self.run.hardware.link_between(d, home)
                    assert lk is not None
                    got = transfer_s[(d, g1 - g0, granule_bytes)] = costs.transfer_s(
                        lk, (g1 - g0) * granule_bytes
                    )
                link += got
            shard = self.inst.shard[e][home][sum(g1 - g0 for _, g0, g1 in pieces)] / clock
            gpu += shard
            last = max(last, link + shard)
        if self.a.loaded:
            last = max(last, link + self.inst.shard[max(self.a.loaded)][home][self.inst.G] / clock)
        return max(max(self.work.values()), last, gpu)

    def result(self) -> tuple[dict[int, list[tuple[str, int, int]]], Assignment]:
        """(expert -> (source, first column, end column) loads, the assignment with the
        split granules at home)."""
        width = self.run.model.expert_ffn_size // self.inst.G
        split: dict[int, list[tuple[str, int, int]]] = {}
        runs = dict(self.a.runs)
        for e in sorted(self.anchors):
            pieces = self._pieces(e)
            if not pieces:
                continue
            split[e] = [(d, g0 * width, g1 * width) for d, g0, g1 in pieces]
            lo, hi = min(g0 for _, g0, _ in pieces), max(g1 for _, _, g1 in pieces)
            keep: list[tuple[str, int, int]] = []
            for d, g0, g1 in self.stripes[e]:
                if g1 <= lo or g0 >= hi:
                    keep.append((d, g0, g1))
                elif g0 < lo:
                    keep.append((d, g0, lo))
                elif g1 > hi:
                    keep.append((d, hi, g1))
            runs[e] = (*keep, (self.run.home, lo, hi))
        return split, Assignment(runs=runs, loaded=self.a.loaded)


def run_sequences(
    hardware: Hardware,
    model: ModelSpec,
    base: Residency,
    config: LoopConfig,
    trace: RoutingTrace,
    runs: Sequence[tuple[int, int, int]],
    pooled: bool = True,
) -> LoopResult:
    """Decode each (prompt start, decode start, decode end) run of a trace, in order, from a
    fresh cache and per-request counts, and merge the records; ``pooled``: the cross-layer
    transitions are pooled over the earlier runs (one session), else learned per run."""
    merged = LoopResult()
    memory = TransitionMemory(trace.num_layers, trace.num_experts) if pooled else None
    for start, mid, end in runs:
        got = DecodeRun(
            hardware, model, base, config, trace, slice(start, mid), slice(mid, end),
            memory=memory,
        )  # fmt: skip
        result = got.run()
        merged.steps += result.steps
        merged.stats.add(result.stats)
        merged.resolves += result.resolves
        merged.plans_solved += result.plans_solved
        merged.plans_reused += result.plans_reused
    return merged


def _runs(owner: list[str], g0: int, g1: int) -> list[tuple[str, int, int]]:
    """Granules [g0, g1) as runs of consecutive granules on one device (``owner[g]``)."""
    out: list[tuple[str, int, int]] = []
    for g in range(g0, g1):
        if out and out[-1][0] == owner[g] and out[-1][2] == g:
            out[-1] = (owner[g], out[-1][1], g + 1)
        else:
            out.append((owner[g], g, g + 1))
    return out


def _seconds_per_byte(device: Device, model: ModelSpec) -> float:
    """The least time per weight byte a device spends computing one token's expert, under
    the cost model: a byte read at ``bandwidth x memory_efficiency``, plus on an NDP unit with
    SRAM one tile overhead per ``sram_bytes / 2`` (every tile's load is serial), and never
    faster than its compute (``flops x compute_efficiency``) allows. Launches excluded."""
    width = model.expert_ffn_size
    weight_bytes = model.expert_bytes(width)
    flops_per_byte = costs.expert_flops(model, 1, width) / weight_bytes
    memory = 1.0 / (device.mem_bandwidth_bytes_per_s * device.memory_efficiency)
    if device.sram_bytes is not None:
        memory += device.tile_overhead_s / (device.sram_bytes / 2)
    return max(memory, flops_per_byte / (device.peak_flops_per_s * device.compute_efficiency))


@functools.lru_cache(maxsize=1 << 16)
def _line(layer: int, expert: int) -> WeightSlice:
    """One cache line: a whole expert of one layer (shared, immutable)."""
    return WeightSlice(layer=layer, expert=expert)


@functools.lru_cache(maxsize=1 << 16)
def _piece(layer: int, expert: int, start: int, end: int) -> WeightSlice:
    """Columns [start, end) of one layer's expert (shared, immutable)."""
    return WeightSlice(layer=layer, expert=expert, ffn_start=start, ffn_end=end)


def _grouped(tasks: list[AnyTask], alias: dict[str, str]) -> list[AnyTask]:
    """``tasks`` (one layer, in emission order) with each run of a device's consecutive expert
    shards for the same tokens and waiting on the same tasks as one grouped GEMM
    (``ComputeTask.group_rows`` over the experts between the first and the last, 0 rows for
    the others; with ``group_cols`` when their columns differ, as a split leaves the stripe
    of the expert it takes granules from: a grouped GEMM takes a problem size per expert, as
    CUTLASS's and Triton's grouped GEMMs do): one launch instead of one per shard, every
    expert's slice read as before (``costs.grouped_expert_s``). A device's queue is its
    compute tasks in list order, so a run is unbroken by another compute task of that
    device. Records each shard's group in ``alias`` and points every task's ``after`` at the
    groups."""
    out: list[AnyTask] = []
    runs: dict[int, list[ComputeTask]] = {}  # index in out -> the shards it runs
    last: dict[str, int] = {}  # device -> index in out of its last compute task
    for t in tasks:
        if not isinstance(t, ComputeTask):
            out.append(t)
            continue
        i = last.get(t.device_id)
        group = runs[i] if i is not None else None
        head = group[0] if group is not None else None
        if (
            group is not None and head is not None and t.op == head.op == "expert"
            and not t.group_rows and not head.group_rows and t.num_tokens == head.num_tokens
            and _same_columns_or_set(t, group)
            and (t.after == head.after or set(t.after) == set(head.after))
        ):  # fmt: skip
            group.append(t)
            continue
        last[t.device_id] = len(out)
        runs[len(out)] = [t]
        out.append(t)
    for i, members in runs.items():
        if len(members) < 2:
            continue
        first = min(int(m.expert or 0) for m in members)
        rows = [0] * (max(int(m.expert or 0) for m in members) - first + 1)
        for m in members:
            rows[int(m.expert or 0) - first] = m.num_tokens
        update: dict[str, object] = {
            "id": f"{members[0].id}.group{len(members)}", "expert": first,
            "group_rows": tuple(rows), "num_tokens": sum(rows),
        }  # fmt: skip
        slices = {(m.ffn_start, m.ffn_end) for m in members}
        if len(slices) > 1:  # each expert its own columns (``ComputeTask.group_cols``)
            lo, hi = min(c0 for c0, _ in slices), max(int(c1 or 0) for _, c1 in slices)
            cols = [(lo, hi)] * len(rows)
            for m in members:
                cols[int(m.expert or 0) - first] = (m.ffn_start, int(m.ffn_end or 0))
            update |= {"ffn_start": lo, "ffn_end": hi, "group_cols": tuple(cols)}
        grouped = members[0].model_copy(update=update)
        alias.update({m.id: grouped.id for m in members})
        out[i] = grouped
    return [_aliased(t, alias) for t in out]


def _same_columns_or_set(t: ComputeTask, group: list[ComputeTask]) -> bool:
    """Whether shard ``t`` may join ``group`` (a device's consecutive expert shards): on the
    same columns as the group's first, or on columns of its own with every slice explicit
    and no expert twice (a grouped GEMM with a slice per expert: ``group_cols``)."""
    head = group[0]
    if (t.ffn_start, t.ffn_end) == (head.ffn_start, head.ffn_end):
        return True
    return t.ffn_end is not None and all(
        m.ffn_end is not None and m.expert != t.expert for m in group
    )


def _aliased(task: AnyTask, alias: dict[str, str]) -> AnyTask:
    """``task`` waiting on the groups (``_grouped``) instead of the shards they run."""
    if alias.keys().isdisjoint(task.after):
        return task
    after = tuple(dict.fromkeys(alias.get(d, d) for d in task.after))
    return task.model_copy(update={"after": after})


def _wait(task: AnyTask, ids: list[str] | tuple[str, ...]) -> AnyTask:
    """``task`` also waiting on ``ids``."""
    if not ids:
        return task
    extra = tuple(i for i in ids if i not in task.after)
    return task.model_copy(update={"after": task.after + extra}) if extra else task


def _flat_greedy(
    runs: list[tuple[float, list[int], list[int], list[int], list[int]]],
    size: float,
    free_bytes: float,
    budget: int,
) -> list[tuple[int, int]]:
    """``greedy_indices`` on the runs' candidates laid end to end, as (run, position) pairs
    (for the rare runs ``greedy_runs`` cannot rank lazily)."""
    where = [(r, j) for r, run in enumerate(runs) for j in range(len(run[1]))]
    chosen = greedy_indices(
        np.array([run[0] for run in runs for _ in run[1]]),
        np.array([v for run in runs for v in run[1]], dtype=np.int64),
        np.full(len(where), size),
        np.array([v for run in runs for v in run[2]], dtype=np.int64),
        free_bytes, budget,
    )  # fmt: skip
    return [where[i] for i in chosen]
