"""Greedy placement: heaviest expert first; each takes the option (whole on one holder, split
over holders, or loaded to the home device) that least raises the estimated layer finish.

The estimate per remote device d is ``max(dispatch_d + compute_d, loads) + gather_d`` (its
dispatch, its shards, then its return after the home loads on the shared link); for the home
device, resident shards then loaded shards, each after its load. Link queueing between
devices is left out of the estimate; the exact makespan is predicted afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from solvers.placement.problem import Assignment, PlacementInstance


class _State:
    """Work queued so far, as lists indexed like ``inst.devices`` (fast to score)."""

    def __init__(self, inst: PlacementInstance) -> None:
        self.inst = inst
        self.index = {d: i for i, d in enumerate(inst.devices)}
        self.home_i = self.index[inst.home]
        self.remote_i = [self.index[d] for d in inst.remote]
        self.compute = [0] * len(inst.devices)  # queued shard cycles per device
        self.routed = [0] * len(inst.devices)  # tokens routed to each device
        self.disp = [inst.dispatch[d] for d in inst.remote]
        self.gath = [inst.gather[d] for d in inst.remote]
        self.num_tokens = inst.problem.num_tokens
        self.loaded: list[int] = []
        self.loads_end = 0
        self.free_bytes: float = inst.home_free_bytes

    def home_finish(self, compute: int, loaded: list[int]) -> int:
        inst = self.inst
        f, load_end = compute, 0
        for e in loaded:
            load_end += inst.load_cycles[e]
            f = max(f, load_end) + inst.shard[e][inst.home][inst.G]
        return f

    def score(self, adds: dict[int, int], routed: int, load: int | None) -> tuple[int, int]:
        """(estimated layer finish, added work) if an option were applied.

        ``adds`` maps device index -> added shard cycles; every remote device in it also gets
        ``routed`` more tokens.
        """
        inst = self.inst
        loaded = [*self.loaded, load] if load is not None else self.loaded
        loads_end = self.loads_end + (inst.load_cycles[load] if load is not None else 0)
        worst = self.home_finish(self.compute[self.home_i] + adds.get(self.home_i, 0), loaded)
        n = self.num_tokens
        compute, routed_now = self.compute, self.routed
        for k, i in enumerate(self.remote_i):
            extra = adds.get(i)
            r = routed_now[i] + (routed if extra is not None else 0)
            if r == 0:
                continue
            rows = n if r > n else r
            c = compute[i] + (extra or 0)
            f = self.disp[k][rows] + c
            if loads_end > f:
                f = loads_end
            f += self.gath[k][rows]
            if f > worst:
                worst = f
        added = sum(adds.values()) + (
            inst.shard[load][inst.home][inst.G] if load is not None else 0
        )
        return worst, added

    def add_load(self, e: int) -> None:
        self.loaded.append(e)
        self.loads_end += self.inst.load_cycles[e]
        self.free_bytes -= self.inst.expert_bytes

    def add_runs(self, e: int, option: tuple[tuple[str, int, int], ...]) -> None:
        for d, g0, g1 in option:
            i = self.index[d]
            self.compute[i] += self.inst.shard[e][d][g1 - g0]
            if i != self.home_i:
                self.routed[i] += self.inst.tokens[e]


def _split_options(
    inst: PlacementInstance, state: _State, e: int, blocks: _Blocks
) -> list[tuple[tuple[str, int, int], ...]]:
    """Whole-expert runs on each full holder, and splits into p equal blocks (p | G, p >= 2),
    each block on the least-loaded holder not already used by this expert. Splits whose
    blocks each have a single holder do not depend on the state and come precomputed."""
    options = list(blocks.fixed)
    for p in blocks.open_degrees:
        size = inst.G // p
        chosen: list[tuple[str, int, int]] = []
        used: set[str] = set()
        for k in range(p):
            cands = blocks.holders[(k * size, (k + 1) * size)] - used
            if not cands:
                break
            best = min(
                sorted(cands), key=lambda d: state.compute[state.index[d]] + inst.shard[e][d][size]
            )
            used.add(best)
            chosen.append((best, k * size, (k + 1) * size))
        if len(chosen) == p:
            options.append(tuple(chosen))
    return options


@dataclass
class _Blocks:
    """Per expert: holders of every equal block, the state-free options, the other degrees."""

    holders: dict[tuple[int, int], set[str]]
    fixed: list[tuple[tuple[str, int, int], ...]]
    open_degrees: list[int]


def _block_holders(inst: PlacementInstance, e: int) -> _Blocks:
    """Devices holding every granule of each block [g0, g1) an equal split can use."""
    G = inst.G
    sets = [set(h) for h in inst.holders[e]]
    holders: dict[tuple[int, int], set[str]] = {}
    fixed: list[tuple[tuple[str, int, int], ...]] = [
        ((d, 0, G),) for d in inst.devices if all(d in h for h in sets)
    ]
    open_degrees = []
    for p in range(2, min(G, len(inst.devices)) + 1):
        if G % p:
            continue
        size = G // p
        blocks = [(k * size, (k + 1) * size) for k in range(p)]
        for g0, g1 in blocks:
            holders[(g0, g1)] = set.intersection(*sets[g0:g1])
        sizes = [len(holders[b]) for b in blocks]
        if min(sizes) == 0:
            continue
        owners = [next(iter(holders[b])) for b in blocks]
        if max(sizes) == 1 and len(set(owners)) == p:
            fixed.append(tuple((d, g0, g1) for d, (g0, g1) in zip(owners, blocks, strict=True)))
        elif max(sizes) > 1:
            open_degrees.append(p)
    return _Blocks(holders, fixed, open_degrees)


Option = tuple[tuple[str, int, int], ...] | None  # granule runs, or None: loaded whole home


def _best_option(
    inst: PlacementInstance,
    state: _State,
    e: int,
    allow_load: bool,
    blocks: _Blocks,
) -> Option:
    best_key: tuple[int, int] | None = None
    best: Option = None
    for option in _split_options(inst, state, e, blocks):
        adds: dict[int, int] = {}
        for d, g0, g1 in option:
            i = state.index[d]
            adds[i] = adds.get(i, 0) + inst.shard[e][d][g1 - g0]
        key = state.score(adds, inst.tokens[e], None)
        if best_key is None or key < best_key:
            best_key, best = key, option
    if allow_load and e in inst.load_parts and state.free_bytes >= inst.expert_bytes:
        key = state.score({}, 0, e)
        if best_key is None or key < best_key:
            best_key, best = key, None
    assert best_key is not None, f"expert {e} has no option"
    return best


def _place(
    inst: PlacementInstance,
    forced_loads: list[int],
    order: list[int],
    blocks: dict[int, _Blocks],
) -> tuple[Assignment, int]:
    """Load ``forced_loads``, then give every other expert (in ``order``) its best option;
    returns the assignment and its estimated finish."""
    state = _State(inst)
    for e in forced_loads:
        state.add_load(e)
    runs: dict[int, tuple[tuple[str, int, int], ...]] = {}
    loaded = list(forced_loads)
    for e in order:
        if e in forced_loads:
            continue
        option = _best_option(inst, state, e, not forced_loads, blocks[e])
        if option is None:
            loaded.append(e)
            state.add_load(e)
            continue
        runs[e] = option
        state.add_runs(e, option)
    estimate = state.score({}, 0, None)[0]
    return Assignment(runs=runs, loaded=tuple(sorted(loaded))), estimate


def solve_greedy(inst: PlacementInstance) -> Assignment:
    """Decide how many experts to load home first, then place the rest heaviest first.

    Loading pays most for the experts that are slowest away from home, so the candidates are
    ranked by their best time on any other device and the first h are loaded; h is found by a
    ternary search over the estimated finish (which first falls as loads relieve the NDP units,
    then rises as the link fills). A plain heaviest-first pass (which may still choose loads
    itself) competes too; the best estimate wins.

    Assumes ``inst.feasible()`` is None.
    """

    def away(e: int) -> int:
        return (
            min(inst.shard[e][d][inst.G] for d in inst.devices if d != inst.home)
            if len(inst.devices) > 1
            else 0
        )

    def weight(e: int) -> int:
        return min(inst.shard[e][d][inst.G] for d in inst.devices)

    order = sorted(inst.experts, key=lambda e: (-weight(e), e))
    blocks = {e: _block_holders(inst, e) for e in inst.experts}
    home_whole = set(inst.whole_holders_home())
    candidates = sorted(
        (e for e in inst.load_parts if e not in home_whole), key=lambda e: (-away(e), e)
    )
    # Experts that cannot run anywhere but home must be loaded whatever h is.
    forced = [e for e in inst.experts if any(not h for h in inst.holders[e])]
    room = int(inst.home_free_bytes // inst.expert_bytes) if inst.expert_bytes else 0
    optional = [e for e in candidates if e not in forced]
    top = max(0, min(len(optional), room - len(forced)))
    cache: dict[int, tuple[Assignment, int]] = {}

    def at(h: int) -> tuple[Assignment, int]:
        if h not in cache:
            cache[h] = _place(inst, forced + optional[:h], order, blocks)
        return cache[h]

    lo, hi = 0, top
    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if at(m1)[1] <= at(m2)[1]:
            hi = m2
        else:
            lo = m1
    for h in range(lo, hi + 1):
        at(h)
    candidates_found = list(cache.values())
    if not forced:
        candidates_found.append(_place(inst, [], order, blocks))
    return min(candidates_found, key=lambda ae: ae[1])[0]
