"""Greedy placement: heaviest expert first; each takes the option (whole on one holder, split
over holders, or loaded to the home device) that least raises the estimated layer finish.

The estimate per remote device d is ``max(dispatch_d + compute_d, loads) + gather_d`` (its
dispatch, its shards, then its return after the home loads on the shared link); for the home
device, resident shards then loaded shards, each after its load. Link queueing between
devices is left out of the estimate; the exact makespan is predicted afterwards.
"""

from __future__ import annotations

from solvers.placement.problem import Assignment, PlacementInstance


class _State:
    def __init__(self, inst: PlacementInstance) -> None:
        self.inst = inst
        self.compute = dict.fromkeys(inst.devices, 0)  # queued shard cycles per device
        self.routed = dict.fromkeys(inst.remote, 0)  # tokens routed to each remote device
        self.loaded: list[int] = []
        self.free_bytes = inst.home_free_bytes

    def home_finish(self, compute: int, loaded: list[int]) -> int:
        inst = self.inst
        f, load_end = compute, 0
        for e in loaded:
            load_end += inst.load_cycles[e]
            f = max(f, load_end) + inst.shard[e][inst.home][inst.G]
        return f

    def loads_end(self, loaded: list[int]) -> int:
        return sum(self.inst.load_cycles[e] for e in loaded)

    def finish(self, d: str, compute: int, routed: int, loads_end: int) -> int:
        inst = self.inst
        rows = min(inst.problem.num_tokens, routed)
        if rows == 0:
            return 0
        return max(inst.dispatch[d][rows] + compute, loads_end) + inst.gather[d][rows]

    def score(
        self, adds: dict[str, int], routed_adds: dict[str, int], load: int | None
    ) -> tuple[int, int]:
        """(estimated layer finish, added work) if an option's additions were applied."""
        inst = self.inst
        loaded = [*self.loaded, load] if load is not None else self.loaded
        loads_end = self.loads_end(loaded)
        worst = self.home_finish(self.compute[inst.home] + adds.get(inst.home, 0), loaded)
        for d in inst.remote:
            c = self.compute[d] + adds.get(d, 0)
            r = self.routed[d] + routed_adds.get(d, 0)
            worst = max(worst, self.finish(d, c, r, loads_end))
        added = sum(adds.values()) + (
            inst.shard[load][inst.home][inst.G] if load is not None else 0
        )
        return worst, added


def _split_options(
    inst: PlacementInstance, state: _State, e: int
) -> list[tuple[tuple[str, int, int], ...]]:
    """Whole-expert runs on each full holder, and splits into p equal blocks (p | G, p >= 2),
    each block on the least-loaded holder not already used by this expert."""
    options: list[tuple[tuple[str, int, int], ...]] = [
        ((d, 0, inst.G),) for d in inst.whole_holders(e)
    ]
    for p in range(2, min(inst.G, len(inst.devices)) + 1):
        if inst.G % p:
            continue
        size = inst.G // p
        chosen: list[tuple[str, int, int]] = []
        used: set[str] = set()
        for k in range(p):
            g0, g1 = k * size, (k + 1) * size
            cands = [
                d
                for d in inst.devices
                if d not in used and all(d in inst.holders[e][g] for g in range(g0, g1))
            ]
            if not cands:
                break
            best = min(cands, key=lambda d: state.compute[d] + inst.shard[e][d][size])
            used.add(best)
            chosen.append((best, g0, g1))
        if len(chosen) == p:
            options.append(tuple(chosen))
    return options


def solve_greedy(inst: PlacementInstance) -> Assignment:
    """A complete assignment (assumes ``inst.feasible()`` is None)."""
    state = _State(inst)

    def weight(e: int) -> int:
        return min(inst.shard[e][d][inst.G] for d in inst.devices)

    runs: dict[int, tuple[tuple[str, int, int], ...]] = {}
    for e in sorted(inst.experts, key=lambda e: (-weight(e), e)):
        best_key: tuple[int, int] | None = None
        best_runs: tuple[tuple[str, int, int], ...] | None = None
        best_load = False
        for option in _split_options(inst, state, e):
            adds: dict[str, int] = {}
            routed: dict[str, int] = {}
            for d, g0, g1 in option:
                adds[d] = adds.get(d, 0) + inst.shard[e][d][g1 - g0]
                if d != inst.home:
                    routed[d] = inst.tokens[e]
            key = state.score(adds, routed, None)
            if best_key is None or key < best_key:
                best_key, best_runs, best_load = key, option, False
        if e in inst.load_parts and state.free_bytes >= inst.expert_bytes:
            key = state.score({}, {}, e)
            if best_key is None or key < best_key:
                best_key, best_runs, best_load = key, None, True
        if best_load:
            state.loaded.append(e)
            state.free_bytes -= inst.expert_bytes
            continue
        assert best_runs is not None, f"expert {e} has no option"
        runs[e] = best_runs
        for d, g0, g1 in best_runs:
            state.compute[d] += inst.shard[e][d][g1 - g0]
            if d != inst.home:
                state.routed[d] += inst.tokens[e]
    return Assignment(runs=runs, loaded=tuple(sorted(state.loaded)))
