"""Per-batch routing over a fixed replica placement: split each logical expert's tokens among
its replicas so that the busiest GPU is as light as possible.

Glossary: a *single* expert has all its replicas on one GPU (no choice); a *flexible* expert has
replicas on two or more GPUs. A GPU's share of an expert is split evenly over its replicas of
that expert there (the first replicas in slot order take the remainder).

Two routers, the same optimum:

* ``Router`` (fast, the one to use): built once per placement (a placement changes rarely, a
  batch arrives every forward pass), then ``route`` per batch, for one layer or many layers in
  one call. Singles are summed per GPU in numpy (all layers at once); each flexible expert is
  water-filled into its GPUs, heaviest first; then a specialised augmenting-path search on the
  GPU graph (GPU g -> GPU h when a flexible expert holding both sends at least one token to g)
  moves tokens from GPUs above a target T to GPUs below it. T starts at a lower bound
  (the largest singles' load, the mean) and is raised only to a proven lower bound: when no
  GPU below T is reachable, every expert sending tokens into the reachable set Q has all its
  replicas in Q, so Q's load is forced and no integer split does better than
  ceil(load(Q) / |Q|). When no GPU is above T the split is optimal over integer splits.
* ``route_batch_maxflow`` (exact reference for tests): experts -> GPUs holding a replica ->
  sink with capacity T is a flow network; the least integer T whose maximum flow carries every
  token is the optimum over integer splits (at most one token above the LP optimum by max-flow
  integrality). T starts at a lower bound and grows by ceil(shortfall / P) per step, so it
  stays a lower bound and the first feasible T is optimal.

Shapes: ``phy2log [num_replicas]`` or ``[num_layers, num_replicas]`` (GPU-major slots: slot p
lives on GPU ``p // (num_replicas // num_gpus)``), ``loads [num_logical]`` or
``[num_layers, num_logical]`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow


@dataclass(frozen=True)
class Routing:
    """One layer: tokens per replica slot ``[num_replicas]``, GPU loads ``[num_gpus]`` (tokens),
    their maximum, and the work done (max-flow solves for the reference, augmenting pushes for
    the fast router)."""

    tokens_per_slot: np.ndarray
    gpu_loads: np.ndarray
    max_load: int
    num_steps: int


@dataclass(frozen=True)
class LayerRoutings:
    """Many layers: ``tokens_per_slot [L, R]``, ``gpu_loads [L, P]``, ``max_load [L]`` tokens,
    ``num_steps [L]`` augmenting pushes."""

    tokens_per_slot: np.ndarray
    gpu_loads: np.ndarray
    max_load: np.ndarray
    num_steps: np.ndarray

    def layer(self, i: int) -> Routing:
        """Layer ``i`` as a ``Routing``."""
        return Routing(
            self.tokens_per_slot[i],
            self.gpu_loads[i],
            int(self.max_load[i]),
            int(self.num_steps[i]),
        )

    def balancedness(self) -> np.ndarray:
        """Mean / max GPU load per layer, ``[L]`` (1.0 for an empty layer)."""
        peak = self.max_load.astype(np.float64)
        mean = self.gpu_loads.mean(axis=1)
        return np.where(peak > 0, mean / np.maximum(peak, 1.0), 1.0)


def even_split_loads(phy2log: np.ndarray, num_gpus: int, loads: np.ndarray) -> np.ndarray:
    """GPU loads ``[num_gpus]`` when replicas split their expert's tokens evenly (EPLB's
    assumption); fractional tokens."""
    counts = np.bincount(phy2log, minlength=len(loads))
    per_slot = loads[phy2log] / counts[phy2log]
    return per_slot.reshape(num_gpus, -1).sum(axis=1)


def _water_fill(level: list[int], gpus: tuple[int, ...], amount: int) -> list[int]:
    """Pour ``amount`` integer tokens into ``gpus`` lowest first (levels rise together);
    updates ``level`` and returns the tokens given to each of ``gpus`` (same order)."""
    if len(gpus) == 2:
        a, b = gpus
        la, lb = level[a], level[b]
        to_a = min(amount, max(0, (amount + lb - la + 1) // 2))
        level[a] = la + to_a
        level[b] = lb + amount - to_a
        return [to_a, amount - to_a]
    order = sorted(range(len(gpus)), key=lambda j: level[gpus[j]])
    filled = amount
    count = 0
    for count in range(1, len(order) + 1):
        filled += level[gpus[order[count - 1]]]
        if count == len(order) or filled <= count * level[gpus[order[count]]]:
            break
    top, extra = divmod(filled, count)
    give = [0] * len(gpus)
    for rank in range(count):
        j = order[rank]
        g = gpus[j]
        add = top - level[g] + (1 if rank < extra else 0)
        give[j] = add
        level[g] += add
    return give


@dataclass(frozen=True)
class _Flexible:
    """One layer's flexible experts: ``experts [k]`` logical ids, ``gpus_of [k]`` their GPUs
    (ascending), ``held [P]`` the (expert index, position in its ``gpus_of``) each GPU holds,
    ``components`` the GPU sets they connect, ``fixed`` the GPUs no flexible expert reaches."""

    experts: list[int]
    gpus_of: list[tuple[int, ...]]
    held: list[list[tuple[int, int]]]
    components: list[list[int]]
    fixed: list[int]

    @classmethod
    def build(cls, experts: list[int], gpus_of: list[tuple[int, ...]], num_gpus: int) -> _Flexible:
        held: list[list[tuple[int, int]]] = [[] for _ in range(num_gpus)]
        for i, gpus in enumerate(gpus_of):
            for pos, g in enumerate(gpus):
                held[g].append((i, pos))
        root = list(range(num_gpus))

        def find(g: int) -> int:
            while root[g] != g:
                root[g] = root[root[g]]
                g = root[g]
            return g

        for gpus in gpus_of:
            for g in gpus[1:]:
                root[find(g)] = find(gpus[0])
        groups: dict[int, list[int]] = {}
        for g in range(num_gpus):
            if held[g]:
                groups.setdefault(find(g), []).append(g)
        fixed = [g for g in range(num_gpus) if not held[g]]
        return cls(experts, gpus_of, held, list(groups.values()), fixed)


def _balance_layer(
    level: list[int], flex: _Flexible, amounts: list[int]
) -> tuple[list[list[int]], int]:
    """Min-max split of the flexible experts' tokens over their GPUs, on top of ``level``
    (the singles' load per GPU; updated in place).

    Water-fill each expert heaviest first, then push along augmenting paths from GPUs above a
    target T to GPUs below it. T is always a lower bound on the optimum: it starts at the
    largest forced load per GPU of a connected component (or of a GPU no flexible expert
    reaches); when no GPU below T is reachable from those above it, the reachable set Q
    carries a forced load (every expert sending into Q has all its replicas in Q), so T rises
    to ceil(load(Q) / |Q|) > T. It ends when no GPU is above T: optimal over integer splits.

    Args:
        level: tokens per GPU ``[P]``.
        flex: the layer's flexible experts.
        amounts: tokens of each flexible expert ``[k]``.
    Returns:
        per flexible expert, tokens per GPU of its ``gpus_of``; and the augmenting pushes.
    """
    gpus_of, held = flex.gpus_of, flex.held
    share: list[list[int]] = [[] for _ in gpus_of]
    for i in sorted(range(len(gpus_of)), key=amounts.__getitem__, reverse=True):
        share[i] = _water_fill(level, gpus_of[i], amounts[i])
    target = max(-(-sum(level[g] for g in c) // len(c)) for c in flex.components)
    if flex.fixed:
        target = max(target, max(level[g] for g in flex.fixed))
    num_gpus = len(level)
    pushes = 0
    while True:
        queue = [g for g in range(num_gpus) if level[g] > target]
        if not queue:
            return share, pushes
        # via[h]: (expert, position it leaves, position it enters, GPU it leaves); roots None.
        via: list[tuple[int, int, int, int] | None] = [None] * num_gpus
        seen = [False] * num_gpus
        for g in queue:
            seen[g] = True
        found = -1
        head = 0
        while head < len(queue) and found < 0:
            g = queue[head]
            head += 1
            for i, pos in held[g]:
                if share[i][pos] <= 0:
                    continue
                for to, h in enumerate(gpus_of[i]):
                    if not seen[h]:
                        seen[h] = True
                        via[h] = (i, pos, to, g)
                        if level[h] < target:
                            found = h
                            break
                        queue.append(h)
                if found >= 0:
                    break
        if found < 0:
            target = max(target + 1, -(-sum(level[g] for g in queue) // len(queue)))
            continue
        # Walk back to the root; push what the path, the root's excess and the gap carry.
        path = []
        node = found
        step = target - level[found]
        while (edge := via[node]) is not None:
            path.append(edge)
            step = min(step, share[edge[0]][edge[1]])
            node = edge[3]
        step = min(step, level[node] - target)
        for i, pos, to, _ in path:
            share[i][pos] -= step
            share[i][to] += step
        level[node] -= step
        level[found] += step
        pushes += 1


class Router:
    """A placement prepared for routing: build once, route every batch.

    Three entry points, the same optimum: ``route`` (one layer, one batch, the fewest numpy
    calls), ``route_layers`` (one batch on every layer in one call) and ``route_batches``
    (many batches of one layer, GPU loads only: what a placement search scores).

    Args:
        phy2log: ``[num_replicas]`` or ``[num_layers, num_replicas]`` logical expert per slot.
        num_gpus: GPUs; slots are GPU-major, ``num_replicas`` a multiple of it.
        num_logical: logical experts (default: the largest id + 1).
    """

    def __init__(self, phy2log: np.ndarray, num_gpus: int, num_logical: int | None = None):
        p2l = np.atleast_2d(np.asarray(phy2log, dtype=np.int64))
        num_layers, num_slots = p2l.shape
        if num_gpus < 1 or num_slots % num_gpus:
            raise ValueError(f"num_replicas {num_slots} is not a multiple of num_gpus {num_gpus}")
        if p2l.size and p2l.min() < 0:
            raise ValueError("phy2log: expert ids must be >= 0")
        num_log = int(p2l.max()) + 1 if num_logical is None else num_logical
        if p2l.size and p2l.max() >= num_log:
            raise ValueError(f"phy2log: expert ids must lie in [0, {num_log})")
        self.phy2log, self.num_gpus, self.num_logical = p2l, num_gpus, num_log
        gpu_of = np.arange(num_slots) // (num_slots // num_gpus)
        # holds[l, e, g]: slots of expert e on GPU g in layer l.
        holds = np.zeros((num_layers, num_log, num_gpus), dtype=np.int64)
        np.add.at(holds, (np.arange(num_layers)[:, None], p2l, gpu_of[None, :]), 1)
        spread = (holds > 0).sum(axis=2)
        self._placed = spread > 0  # [L, E]
        single = spread == 1
        # Singles: a [E, P] 0/1 matrix per layer (loads @ it = the singles' GPU loads).
        self._single_matrix_int = ((holds > 0) & single[:, :, None]).astype(np.int64)
        # Each slot's share of its (expert, GPU) pair: count and rank (slot order).
        count = holds[np.arange(num_layers)[:, None], p2l, gpu_of[None, :]]
        key = p2l * num_gpus + gpu_of
        order = np.argsort(key, axis=1, kind="stable")
        sorted_key = np.take_along_axis(key, order, axis=1)
        first = np.stack([np.searchsorted(k, k) for k in sorted_key])
        rank = np.empty_like(p2l)
        np.put_along_axis(rank, order, np.arange(num_slots)[None, :] - first, axis=1)
        self._count, self._rank = count, rank
        self._shared = (count > 1).any(axis=1).tolist()  # [L]: some pair has several slots
        self._flex: list[_Flexible] = []
        self._flex_slots: list[np.ndarray] = []  # slots of flexible experts, per layer
        self._flex_slot_src: list[list[tuple[int, int]]] = []  # (expert index, position)
        for layer in range(num_layers):
            experts = np.flatnonzero(spread[layer] > 1).tolist()
            gpus_of = [tuple(np.flatnonzero(holds[layer, e]).tolist()) for e in experts]
            self._flex.append(_Flexible.build(experts, gpus_of, num_gpus))
            index = {e: i for i, e in enumerate(experts)}
            slots = [s for s in range(num_slots) if int(p2l[layer, s]) in index]
            self._flex_slots.append(np.array(slots, dtype=np.int64))
            self._flex_slot_src.append(
                [
                    (
                        index[int(p2l[layer, s])],
                        gpus_of[index[int(p2l[layer, s])]].index(int(gpu_of[s])),
                    )
                    for s in slots
                ]
            )
        self._unplaced = [np.flatnonzero(~self._placed[layer]) for layer in range(num_layers)]

    @property
    def num_layers(self) -> int:
        """Layers this router holds."""
        return int(self.phy2log.shape[0])

    def _check(self, loads: np.ndarray, layer: int | None) -> None:
        if loads.shape[-1] != self.num_logical:
            raise ValueError(f"loads: {loads.shape[-1]} experts, want {self.num_logical}")
        if loads.size and loads.min() < 0:
            raise ValueError("loads: tokens must be >= 0")
        if layer is None:
            missing = np.flatnonzero((loads > 0) & ~self._placed) % self.num_logical
        elif len(self._unplaced[layer]):
            unplaced = self._unplaced[layer]
            missing = unplaced[loads[..., unplaced].reshape(-1, len(unplaced)).any(axis=0)]
        else:
            return
        if len(missing):
            raise ValueError(f"loads: experts {missing[:5].tolist()} have tokens but no replica")

    def _split(self, layer: int, loads: np.ndarray, share: list[list[int]]) -> np.ndarray:
        """Tokens per slot ``[R]`` from the expert loads ``[E]`` and the flexible shares."""
        pair = loads[self.phy2log[layer]]
        slots = self._flex_slots[layer]
        if len(slots):
            pair[slots] = [share[i][pos] for i, pos in self._flex_slot_src[layer]]
        if self._shared[layer]:
            each, extra = np.divmod(pair, self._count[layer])
            return each + (self._rank[layer] < extra)
        return pair

    def route(self, loads: np.ndarray, layer: int = 0) -> Routing:
        """Route one batch on one layer: ``loads [num_logical]`` tokens."""
        loads = np.asarray(loads)
        if loads.dtype.kind not in "iu":
            loads = loads.astype(np.int64)
        self._check(loads, layer)
        level = (loads @ self._single_matrix_int[layer]).tolist()
        flex = self._flex[layer]
        share: list[list[int]] = []
        steps = 0
        if flex.experts:
            share, steps = _balance_layer(level, flex, loads[flex.experts].tolist())
        return Routing(self._split(layer, loads, share), np.array(level), max(level), steps)

    def route_layers(self, loads: np.ndarray) -> LayerRoutings:
        """Route one batch on every layer: ``loads [num_layers, num_logical]`` tokens."""
        loads = np.asarray(loads)
        if loads.dtype.kind not in "iu":
            loads = loads.astype(np.int64)
        want = (self.num_layers, self.num_logical)
        if loads.shape != want:
            raise ValueError(f"loads: shape {list(loads.shape)}, want {list(want)}")
        self._check(loads, None)
        levels = np.einsum("le,lep->lp", loads, self._single_matrix_int).tolist()
        rows = loads.tolist()
        steps = [0] * self.num_layers
        tokens = []
        for layer, flex in enumerate(self._flex):
            share: list[list[int]] = []
            if flex.experts:
                row = rows[layer]
                amounts = [row[e] for e in flex.experts]
                share, steps[layer] = _balance_layer(levels[layer], flex, amounts)
            tokens.append(self._split(layer, loads[layer], share))
        gpu_loads = np.array(levels, dtype=np.int64)
        return LayerRoutings(
            np.stack(tokens), gpu_loads, gpu_loads.max(axis=1), np.array(steps, dtype=np.int64)
        )

    def route_batches(self, loads: np.ndarray, layer: int = 0) -> np.ndarray:
        """GPU loads ``[num_batches, P]`` (tokens) of many batches ``loads [num_batches,
        num_logical]`` routed on one layer (no per-slot split: what a placement search needs)."""
        loads = np.asarray(loads, dtype=np.int64)
        if loads.ndim != 2:
            raise ValueError(f"loads: shape {list(loads.shape)}, want [n, {self.num_logical}]")
        self._check(loads, layer)
        gpu_loads = loads @ self._single_matrix_int[layer]
        flex = self._flex[layer]
        if flex.experts:
            amounts = loads[:, flex.experts].tolist()
            out = gpu_loads.tolist()
            for level, row in zip(out, amounts, strict=True):
                _balance_layer(level, flex, row)
            gpu_loads = np.array(out, dtype=np.int64).reshape(len(loads), self.num_gpus)
        return gpu_loads


def route_batch(phy2log: np.ndarray, num_gpus: int, loads: np.ndarray) -> Routing:
    """Split every expert's tokens among its replicas to minimize the largest GPU load (one
    layer; builds a ``Router`` each call: keep a ``Router`` when the placement is reused)."""
    loads = np.asarray(loads, dtype=np.int64)
    return Router(phy2log, num_gpus, len(loads)).route(loads)


def route_batch_maxflow(phy2log: np.ndarray, num_gpus: int, loads: np.ndarray) -> Routing:
    """The exact reference: the same optimum by parametric max-flow (slow; for tests)."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    loads = np.asarray(loads, dtype=np.int64)
    num_slots = len(phy2log)
    per_gpu = num_slots // num_gpus
    gpu_of = np.arange(num_slots) // per_gpu
    num_log = len(loads)
    # Which GPUs hold each expert (distinct), and how many slots each.
    holds = np.zeros((num_log, num_gpus), dtype=np.int64)
    np.add.at(holds, (phy2log, gpu_of), 1)
    spread = (holds > 0).sum(axis=1)
    if (loads[spread == 0] > 0).any():
        raise ValueError("loads: an expert has tokens but no replica")
    base = np.zeros(num_gpus, dtype=np.int64)
    single = spread == 1
    np.add.at(base, holds[single].argmax(axis=1), loads[single])
    flexible = np.flatnonzero((spread > 1) & (loads > 0))
    per_pair = np.zeros((num_log, num_gpus), dtype=np.int64)
    per_pair[single, holds[single].argmax(axis=1)] = loads[single]
    flows = 0
    if len(flexible):
        total = int(loads.sum())
        t = max(int(base.max()), -(-total // num_gpus))
        k = len(flexible)
        # nodes: 0 source, 1..k flexible experts, k+1..k+P GPUs, k+P+1 sink
        src, sink = 0, k + num_gpus + 1
        pairs = [(i, g) for i, e in enumerate(flexible) for g in np.flatnonzero(holds[e])]
        rows = [src] * k + [1 + i for i, _ in pairs] + [k + 1 + g for g in range(num_gpus)]
        cols = [1 + i for i in range(k)] + [k + 1 + g for _, g in pairs] + [sink] * num_gpus
        need = int(loads[flexible].sum())
        caps = [int(loads[e]) for e in flexible] + [need + 1] * len(pairs) + [0] * num_gpus
        graph = csr_matrix((caps, (rows, cols)), shape=(sink + 1, sink + 1), dtype=np.int32)
        graph.sort_indices()
        # The sink edges are the last entry of each GPU row; only their capacities change.
        gpu_rows = np.arange(k + 1, k + 1 + num_gpus)
        sink_edges = graph.indptr[gpu_rows + 1] - 1
        while True:
            graph.data[sink_edges] = np.maximum(0, t - base)
            result = maximum_flow(graph, src, sink, method="dinic")
            flows += 1
            short = need - int(result.flow_value)
            if short == 0:
                break
            t += -(-short // num_gpus)
        flow = result.flow
        for i, g in pairs:
            per_pair[flexible[i], g] = max(0, int(flow[1 + i, k + 1 + g]))
    count = holds[phy2log, gpu_of]
    share, extra = np.divmod(per_pair[phy2log, gpu_of], count)
    key = phy2log * num_gpus + gpu_of
    order = np.argsort(key, kind="stable")
    first = np.searchsorted(key[order], key[order])
    rank = np.empty(num_slots, dtype=np.int64)
    rank[order] = np.arange(num_slots) - first
    tokens = share + (rank < extra)
    gpu_loads = tokens.reshape(num_gpus, -1).sum(axis=1)
    return Routing(tokens, gpu_loads, int(gpu_loads.max()), flows)
