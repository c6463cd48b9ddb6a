"""The placement problem for one MoE layer: which devices compute which slices of which experts.

Glossary:
    granule: one of ``num_granules`` equal column slices of an expert's FFN width; the unit of
        tensor-parallel splitting (gate/up by column, down by row, partial sums reduced).
    holder: a device whose memory holds a granule at cycle 0; a granule runs only on a holder,
        except that an expert may be loaded whole to the home device (a GPU) over a link,
        which costs link time and memory.
    assignment: per activated expert, contiguous runs of granules per device, plus the set of
        experts loaded whole to the home device.

The layer's data flow is the lowering of ``hwmodel.plan_builder.layer_tasks``; the makespan of
an assignment is predicted by ``solvers.timing`` on exactly those tasks (``predict``).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property

from hwmodel import cost_tables, costs
from hwmodel.executor import simulate
from hwmodel.plan import ComputeTask, Plan, Residency, TransferTask, covers
from hwmodel.plan_builder import (
    LoweredLayer,
    Shard,
    WeightLoad,
    effective_granules,
    lower_layer,
)
from hwmodel.report import Report
from hwmodel.spec import Hardware, Link, ModelSpec
from hwmodel.workload import Workload
from solvers import timing


@dataclass(frozen=True)
class PlacementProblem:
    """One layer to place.

    Attributes:
        tokens_per_expert: tokens routed to each logical expert, ``[num_routed_experts]``.
        num_tokens: tokens in the batch.
        residency: what every memory holds at cycle 0.
        num_granules: requested tensor-parallel granularity (the largest divisor of the FFN
            width not above it is used).
        allow_loads: whether experts may be loaded whole to the home device.
        home_reserved_bytes: bytes of the home memory held by what this layer cannot use and
            ``residency`` does not list (for example other layers' cached experts).
    """

    hardware: Hardware
    model: ModelSpec
    layer: int
    tokens_per_expert: tuple[int, ...]
    num_tokens: int
    residency: Residency
    num_granules: int = 4
    allow_loads: bool = True
    home_reserved_bytes: float = 0.0


@dataclass(frozen=True)
class Assignment:
    """A placement: granule runs per expert and device, and experts loaded whole to home.

    Attributes:
        runs: expert -> ((device_id, first_granule, end_granule), ...), covering [0, G).
        loaded: experts computed whole on the home device after a load, in load order.
    """

    runs: dict[int, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    loaded: tuple[int, ...] = ()


# What instances of one hardware, model and granule count share (``from_layouts``).
_SHARED = (
    "hardware", "model", "home", "G", "width", "_tables", "devices", "remote", "expert_bytes",
)  # fmt: skip


class PlacementInstance:
    """Precomputed tables of a ``PlacementProblem`` (all durations in integer cycles)."""

    def __init__(self, problem: PlacementProblem) -> None:
        self._problem: PlacementProblem | None = problem
        self._problem_of: Callable[[], PlacementProblem] | None = None
        self._setup(
            problem.hardware, problem.model, problem.layer, problem.tokens_per_expert,
            problem.num_tokens, problem.num_granules,
        )  # fmt: skip
        hw, model = problem.hardware, problem.model
        ffn = model.expert_ffn_size
        mem_of = {d.id: d.memory_id for d in hw.devices}
        # Residency is read once per memory: the column pieces that concern this layer, those
        # of every expert (wildcards) apart from those of one expert.
        every: dict[str, list[tuple[int, int]]] = {}
        one: dict[str, dict[int, list[tuple[int, int]]]] = {}
        for d in self.devices:
            every[d], one[d] = [], {}
            for sl in problem.residency.by_memory.get(mem_of[d], ()):
                if sl.layer not in (None, problem.layer):
                    continue
                piece = (sl.ffn_start, ffn if sl.ffn_end is None else sl.ffn_end)
                if sl.expert is None:
                    every[d].append(piece)
                else:
                    one[d].setdefault(sl.expert, []).append(piece)
        # Per expert, each device's sorted column pieces; experts no slice names alone share
        # the wildcards' tuple.
        layouts: dict[int, tuple[list[list[str]], list[tuple[str, int, int]] | None]] = {}
        shared = tuple(tuple(sorted(every[d])) for d in self.devices)
        named = {e for d in self.devices for e in one[d]}
        shared_layout = None  # looked up once: hashing the key costs more than the rest
        for e in self.experts:
            if e in named:
                key = tuple(
                    tuple(sorted(every[d] + one[d][e])) if e in one[d] else shared[k]
                    for k, d in enumerate(self.devices)
                )
                layouts[e] = self.layout(key)
            else:
                if shared_layout is None:
                    shared_layout = self.layout(shared)
                layouts[e] = shared_layout
        home_mem = hw.device(self.home).memory_id
        capacity = next(m.capacity_bytes for m in hw.memories if m.id == home_mem)
        home_slices = problem.residency.by_memory.get(home_mem, ())
        home_free_bytes = (
            capacity
            - problem.home_reserved_bytes
            - sum(costs.weight_slice_bytes(model, sl) for sl in home_slices)
        )
        self._finish(layouts, problem.allow_loads, home_free_bytes)

    @classmethod
    def from_layouts(
        cls,
        problem_of: Callable[[], PlacementProblem],
        like: PlacementInstance,
        layer: int,
        tokens: dict[int, int],
        num_tokens: int,
        layouts: dict[int, tuple[list[list[str]], list[tuple[str, int, int]] | None]],
        home_free_bytes: float,
        load_parts: dict[int, tuple[list[tuple[str, int, int, int]], int]],
        shard_rows: dict[int, dict[str, list[int]]],
        expert_keys: dict[int, Hashable] | None = None,
    ) -> PlacementInstance:
        """The instance of ``problem_of()`` from tables its caller keeps, without reading the
        residency (``problem`` is built on first use):

        ``like``: an instance of the same hardware, model and granule count (its device
        lists and tables are shared); ``tokens``: tokens per activated expert (ascending);
        ``layouts[e]``: expert e's holders per granule and load pieces, as ``layout`` gives
        them; ``load_parts[e]``: its load parts and their cycles (absent: no load);
        ``home_free_bytes``: as ``__init__`` computes it; ``shard_rows``: shard rows by token
        count, shared with ``like``'s other instances (filled here); ``expert_keys``: each
        expert's key in the plan memo. Loads are allowed.

        The caller answers for the tables being those of the problem
        (``tests/solvers/test_decode_tables.py`` compares both ways on real traces)."""
        inst = cls.__new__(cls)
        inst.__dict__.update({k: like.__dict__[k] for k in _SHARED})
        inst._problem, inst._problem_of = None, problem_of
        inst.layer, inst.num_tokens = layer, num_tokens
        inst.experts = list(tokens)
        inst.tokens = tokens
        inst.holders = {e: layouts[e][0] for e in inst.experts}
        inst.shard = {}
        for e, t in tokens.items():
            rows = shard_rows.get(t)
            if rows is None:
                rows = shard_rows[t] = {
                    d: inst._tables.shard_row(d, t, inst.G) for d in inst.devices
                }
            inst.shard[e] = rows
        inst.load_parts, inst.load_cycles = {}, {}
        for e in inst.experts:
            got = load_parts.get(e)
            if got is not None:
                inst.load_parts[e], inst.load_cycles[e] = got
        inst.home_free_bytes = home_free_bytes
        inst.expert_keys = expert_keys
        return inst

    @property
    def problem(self) -> PlacementProblem:
        """The problem these are the tables of."""
        if self._problem is None:
            assert self._problem_of is not None
            self._problem = self._problem_of()
        return self._problem

    def _setup(
        self,
        hardware: Hardware,
        model: ModelSpec,
        layer: int,
        tokens_per_expert: tuple[int, ...],
        num_tokens: int,
        num_granules: int,
    ) -> None:
        self.hardware, self.model, self.layer, self.num_tokens = hardware, model, layer, num_tokens
        self.home = hardware.home_device_id
        ffn = model.expert_ffn_size
        self.G = effective_granules(ffn, num_granules)
        self.width = ffn // self.G
        self.experts = [e for e, t in enumerate(tokens_per_expert) if t > 0]
        self.tokens = {e: tokens_per_expert[e] for e in self.experts}
        tab = cost_tables.tables(hardware, model)
        self._tables = tab
        self.devices = list(tab.reachable(self.home))
        self.remote = [d for d in self.devices if d != self.home]

    def layout(
        self, cols: tuple[tuple[tuple[int, int], ...], ...]
    ) -> tuple[list[list[str]], list[tuple[str, int, int]] | None]:
        """An expert's holders per granule and load pieces when ``devices[i]`` holds the
        sorted column pieces ``cols[i]`` (shared: callers must not modify them)."""
        return _layout(
            tuple(self.devices), tuple(self.remote), self.home, cols,
            self.model.expert_ffn_size, self.width, self.G,
        )  # fmt: skip

    def _finish(
        self,
        layouts: dict[int, tuple[list[list[str]], list[tuple[str, int, int]] | None]],
        allow_loads: bool,
        home_free_bytes: float,
    ) -> None:
        tab = self._tables
        # holders[e][g]: devices whose memory holds granule g of expert e; experts laid out
        # alike share the list (callers must not modify it), and their load pieces.
        self.holders: dict[int, list[list[str]]] = {e: layouts[e][0] for e in self.experts}
        # shard[e][d][n]: cycles of n contiguous granules of e on d (n = 0..G). Devices with the
        # same figures share a row, and so do experts with the same token count.
        self.shard: dict[int, dict[str, list[int]]] = {}
        by_tokens = _shared_of(tab, self.home, self.G).rows
        for e in self.experts:
            t = self.tokens[e]
            rows = by_tokens.get(t)
            if rows is None:
                rows = by_tokens[t] = {d: tab.shard_row(d, t, self.G) for d in self.devices}
            self.shard[e] = rows
        # load_parts[e]: (source, first column, end column, link cycles) pieces that bring
        # expert e home whole, each from its first remote holder; load_cycles[e]: their sum.
        self.load_parts: dict[int, list[tuple[str, int, int, int]]] = {}
        self.load_cycles: dict[int, int] = {}
        if allow_loads:
            loads = _shared_of(tab, self.home, self.G).loads
            for e in self.experts:
                pieces = layouts[e][1]
                if pieces is None:
                    continue
                got = loads.get(id(pieces))
                if got is None or got[0] is not pieces:
                    parts = [
                        (src, c0, c1, tab.weight_cycles(self.link(src, self.home), c1 - c0))
                        for src, c0, c1 in pieces
                    ]
                    got = loads[id(pieces)] = (pieces, parts, sum(part[3] for part in parts))
                self.load_parts[e] = got[1]
                self.load_cycles[e] = got[2]
        self.home_free_bytes = home_free_bytes
        self.expert_bytes = self.model.expert_bytes()
        # Per expert, its key in the plan memo (``memo.shape``), when the builder knows it.
        self.expert_keys: dict[int, Hashable] | None = None

    @cached_property
    def dispatch(self) -> dict[str, list[int]]:
        """dispatch[d][rows]: cycles to send ``rows`` activation rows home -> d (0 rows: 0)."""
        return self._transfer_table(to_home=False)

    @cached_property
    def gather(self) -> dict[str, list[int]]:
        """gather[d][rows]: cycles to return ``rows`` partial-sum rows d -> home."""
        return self._transfer_table(to_home=True)

    @cached_property
    def reduce(self) -> list[int]:
        """reduce[p]: cycles of the home reduce over p partial sums (p = 0..#devices)."""
        return self._tables.reduce_row(self.home, self.num_tokens, len(self.devices))

    def link(self, src: str, dst: str) -> Link:
        """The link the lowering uses from src to dst."""
        link = self._tables.link_between(src, dst)
        assert link is not None
        return link

    def _transfer_table(self, to_home: bool) -> dict[str, list[int]]:
        n = self.num_tokens
        transfers = _shared_of(self._tables, self.home, self.G).transfers
        got = transfers.get((n, to_home))
        if got is None:
            got = transfers[(n, to_home)] = {
                d: self._tables.activation_row(
                    self.link(d, self.home) if to_home else self.link(self.home, d), n
                )
                for d in self.remote
            }
        return got

    def whole_holders_home(self) -> list[int]:
        """Activated experts the home device holds whole."""
        return [e for e in self.experts if all(self.home in h for h in self.holders[e])]

    def whole_holders(self, e: int) -> list[str]:
        """Devices holding every granule of expert e."""
        return [d for d in self.devices if all(d in h for h in self.holders[e])]

    def feasible(self) -> str | None:
        """None, or why no assignment exists: a granule nobody holds that cannot be loaded, or
        more forced loads than the home device's free memory takes."""
        forced = []
        for e in self.experts:
            missing = [g for g, h in enumerate(self.holders[e]) if not h]
            if not missing:
                continue
            if e not in self.load_parts:
                return f"layer {self.layer} expert {e} granule {missing[0]} is held nowhere"
            forced.append(e)
        if len(forced) * self.expert_bytes > self.home_free_bytes:
            return (
                f"layer {self.layer}: experts {forced} must be loaded to '{self.home}', "
                f"which has {self.home_free_bytes:.0f} bytes free for {len(forced)} x "
                f"{self.expert_bytes:.0f}"
            )
        return None

    # ------------------------------------------------------------------ assignment -> plan

    def assignment_from(
        self, chosen: Callable[[int, int, str], bool], loaded: tuple[int, ...]
    ) -> Assignment:
        """The assignment in which granule g of expert e runs on d when ``chosen(e, g, d)``
        (a solver's 0/1 values), and the experts in ``loaded`` are loaded home."""
        runs: dict[int, tuple[tuple[str, int, int], ...]] = {}
        for e in self.experts:
            if e in loaded:
                continue
            per_dev: dict[str, list[int]] = {}
            for g in range(self.G):
                for d in self.holders[e][g]:
                    if chosen(e, g, d):
                        per_dev.setdefault(d, []).append(g)
            runs[e] = tuple((d, min(gs), max(gs) + 1) for d, gs in per_dev.items())
        return Assignment(runs=runs, loaded=loaded)

    def shards(self, a: Assignment) -> list[Shard]:
        """The expert shards of an assignment, in (expert, first column) order."""
        out = []
        for e in self.experts:
            if e in a.loaded:
                out.append(Shard(self.home, e, 0, self.model.expert_ffn_size, self.tokens[e]))
                continue
            for dev, g0, g1 in sorted(a.runs[e], key=lambda r: r[1]):
                out.append(Shard(dev, e, g0 * self.width, g1 * self.width, self.tokens[e]))
        return out

    def lowered(
        self, a: Assignment, after: tuple[str, ...] = (), attention: bool = False
    ) -> LoweredLayer:
        """The layer's tasks for an assignment, by stage (see ``plan_builder.lower_layer``)."""
        loads = [
            WeightLoad(src, e, c0, c1) for e in a.loaded for src, c0, c1, _ in self.load_parts[e]
        ]
        return lower_layer(
            self.hardware,
            self.model,
            self.layer,
            self.shards(a),
            self.num_tokens,
            after=after,
            attention=attention,
            loads=loads,
        )

    def tasks(
        self, a: Assignment, after: tuple[str, ...] = (), attention: bool = False
    ) -> tuple[list[ComputeTask | TransferTask], list[str]]:
        """The layer's tasks in emission order, and the ids the next layer waits on."""
        lowered = self.lowered(a, after, attention)
        return lowered.tasks(), list(lowered.waits)

    def simulate(self, a: Assignment) -> Report:
        """The executor's report on this layer's tasks under the assignment (coverage,
        residency and memory checked against the problem's histogram and residency)."""
        p = self.problem
        tasks, _ = self.tasks(a)
        workload = Workload(
            layer_ids=(p.layer,), tokens_per_expert=(p.tokens_per_expert,), num_tokens=p.num_tokens
        )
        return simulate(p.hardware, p.model, Plan(tasks=tuple(tasks)), workload, p.residency)

    def predict(self, a: Assignment) -> int:
        """Makespan in cycles of the layer under this assignment (solver-side timing model)."""
        tasks, _ = self.tasks(a)
        return timing.makespan(self.hardware, self.model, tasks)

    def check(self, a: Assignment) -> list[str]:
        """Solver-free validation: every reason the assignment is not a placement (empty: ok)."""
        problems = []
        for e in self.experts:
            if e in a.loaded:
                if e not in self.load_parts:
                    problems.append(f"expert {e}: loaded but no device can send it home")
                continue
            covered = [0] * self.G
            for dev, g0, g1 in a.runs.get(e, ()):
                for g in range(g0, g1):
                    covered[g] += 1
                    if dev not in self.holders[e][g]:
                        problems.append(f"expert {e} granule {g}: {dev} does not hold it")
            if covered != [1] * self.G:
                problems.append(f"expert {e}: granules covered {covered}, want each once")
            devs = [r[0] for r in a.runs.get(e, ())]
            if len(devs) != len(set(devs)):
                problems.append(f"expert {e}: two runs on one device")
        if len(a.loaded) * self.expert_bytes > self.home_free_bytes:
            problems.append("loads exceed the home device's free memory")
        return problems

    def lower_bound(self) -> int:
        """A valid lower bound on the makespan, in cycles (``_lower_bound``, once per
        instance)."""
        got = self.__dict__.get("_bound")
        if got is None:
            got = self.__dict__["_bound"] = self._lower_bound()
        return got

    def _lower_bound(self) -> int:
        """A valid lower bound on the makespan, in cycles.

        Each granule is computed by one of its holders, or at home after a load that keeps a
        link busy too. Taking for every granule its cheapest option, counting both the device
        and the link time, gives a lower bound on the total busy time of all resources that
        could take part; no resource works past the makespan, so spreading that total over
        those resources bounds the makespan from below. The smallest reduce comes after.
        """
        if not self.experts:
            return 0
        work = 0.0
        resources: set[str] = set()
        # Experts with the same token count share shard rows (as do devices with the same
        # figures), and experts laid out alike share holder lists: per-granule minima are
        # computed once per (holders, tokens, load), for every instance of these tables
        # (``_Shared``), and added in order.
        G, home = self.G, self.home
        shared = _shared_of(self._tables, home, G)
        rates, per_granule = shared.rates, shared.granules
        for e in self.experts:
            t, holders = self.tokens[e], self.holders[e]
            load = self.load_cycles[e] if e in self.load_parts else None
            key = (id(holders), t, load)
            got = per_granule.get(key)
            if got is None or got[0] is not holders:
                rate = rates.get(t)
                if rate is None:
                    rate = {}
                    row_rate: dict[int, float] = {}  # by id of a shard row
                    for d in self.devices:
                        row = self.shard[e][d]
                        if id(row) not in row_rate:
                            row_rate[id(row)] = min(row[n] / n for n in range(1, G + 1))
                        rate[d] = row_rate[id(row)]
                    rates[t] = rate
                load_rate = None if load is None else rate[home] + load / G
                minima, used = [], set()
                for held in holders:
                    best = min([rate[d] for d in held]) if held else math.inf
                    if load_rate is not None and home not in held:
                        best = min(best, load_rate)
                        used |= {home, "load-link"}
                    used.update(held)
                    minima.append(best)
                got = per_granule[key] = (holders, minima, used)
            _, minima, used = got
            resources |= used
            for m in minima:
                work += m
        return int(work // max(len(resources), 1)) + self.reduce[1]


def instance_of(problem: PlacementProblem) -> PlacementInstance:
    """``PlacementInstance(problem)``, remembered: a runtime asks again and again for the same
    layer with the same hardware, model and residency objects, and the instance tables (and
    the bound) are then looked up rather than rebuilt; the solve itself still runs.

    Hardware, model and residency are matched by identity (as ``cost_tables`` matches
    specs: hashing them by value costs more than most look-ups save), the rest by value.
    Instances are shared: callers must not modify them."""
    key = (
        cost_tables.Same(problem.hardware), cost_tables.Same(problem.model),
        cost_tables.Same(problem.residency), problem.layer, problem.tokens_per_expert,
        problem.num_tokens, problem.num_granules, problem.allow_loads,
        problem.home_reserved_bytes,
    )  # fmt: skip
    got = _INSTANCES.get(key)
    if got is None:
        got = PlacementInstance(problem)
        with _INSTANCES_LOCK:  # the service solves from several threads
            if len(_INSTANCES) >= _MAX_INSTANCES:
                _INSTANCES.pop(next(iter(_INSTANCES)))  # the oldest
            _INSTANCES[key] = got
    return got


_MAX_INSTANCES = 256


@dataclass
class _Shared:
    """What the instances of one cost-table set, home device and granule count share, filled
    as they are built (callers must not modify it):

    ``rows[t][d]``: device d's shard row (``CostTables.shard_row``) for t tokens;
    ``rates[t][d]``: the least cycles per granule in it (``_lower_bound``); ``granules[(id
    of a holder list, t, load cycles or None)]``: that holder list (kept, so the id stays
    its) with the bound's per-granule minima and the resources they use; ``loads[id of a
    layout's load pieces]``: those pieces (kept), their load parts and the parts' cycles;
    ``transfers[(rows, to home)]``: the dispatch or gather table of that many tokens."""

    tables: cost_tables.CostTables
    rows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    rates: dict[int, dict[str, float]] = field(default_factory=dict)
    granules: dict[tuple[int, int, int | None], tuple[list[list[str]], list[float], set[str]]] = (
        field(default_factory=dict)
    )
    loads: dict[
        int,
        tuple[list[tuple[str, int, int]], list[tuple[str, int, int, int]], int],
    ] = field(default_factory=dict)
    transfers: dict[tuple[int, bool], dict[str, list[int]]] = field(default_factory=dict)


def _shared_of(tab: cost_tables.CostTables, home: str, num_granules: int) -> _Shared:
    """The ``_Shared`` tables of instances on ``tab`` with this home and granule count."""
    key = (id(tab), home, num_granules)
    got = _SHARED_TABLES.get(key)
    if got is None or got.tables is not tab:
        if len(_SHARED_TABLES) >= 64:
            _SHARED_TABLES.clear()
        got = _SHARED_TABLES[key] = _Shared(tab)
    if len(got.granules) > 4096 or len(got.loads) > 4096:
        got.granules.clear()
        got.loads.clear()
    return got


# ``_shared_of``'s, by (id of the cost tables, home, granules); each keeps its tables alive.
_SHARED_TABLES: dict[tuple[int, str, int], _Shared] = {}
_INSTANCES: dict[Hashable, PlacementInstance] = {}  # ``instance_of``'s, oldest first
_INSTANCES_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _layout(
    devices: tuple[str, ...],
    remote: tuple[str, ...],
    home: str,
    cols: tuple[tuple[tuple[int, int], ...], ...],
    ffn: int,
    width: int,
    G: int,
) -> tuple[list[list[str]], list[tuple[str, int, int]] | None]:
    """One expert's holders per granule and its load pieces, from the sorted column pieces
    ``cols[i]`` that ``devices[i]`` holds (shared by every instance: callers must not modify
    them)."""
    held: list[list[str]] = [[] for _ in range(G)]
    for d, pieces in zip(devices, cols, strict=True):
        for lo, hi in _merged(list(pieces)):
            for g in range(-(-lo // width), hi // width):
                held[g].append(d)
    by_device = {d: list(pieces) for d, pieces in zip(devices, cols, strict=True)}
    return held, _load_pieces(by_device, remote, home, ffn)


def _load_pieces(
    cols: dict[str, list[tuple[int, int]]], remote: tuple[str, ...], home: str, ffn: int
) -> list[tuple[str, int, int]] | None:
    """Column pieces (source, start, end) that complete an expert at home from remote holders
    (only the columns home lacks), or None when the home already holds it all or some missing
    column is held by no remote device. ``cols[d]``: the sorted column pieces d holds."""
    if covers(cols[home], 0, ffn):
        return None
    points = sorted({0, ffn, *(c for d in cols for piece in cols[d] for c in piece)})
    pieces: list[tuple[str, int, int]] = []
    for c0, c1 in itertools.pairwise(points):
        if covers(cols[home], c0, c1):
            continue
        src = next((d for d in remote if covers(cols[d], c0, c1)), None)
        if src is None:
            return None
        if pieces and pieces[-1][0] == src and pieces[-1][2] == c0:
            pieces[-1] = (src, pieces[-1][1], c1)
        else:
            pieces.append((src, c0, c1))
    return pieces


def _merged(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted column pieces with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in pieces:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
