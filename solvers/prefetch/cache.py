"""Expert caches replayed on real routing: which requested experts are already resident.

One cache per MoE layer, ``capacity`` experts each. At every decode step (token), layer by
layer, the token's top-k experts are requested; a request is a hit when the expert is resident
at that moment. Policies:

* ``none``: nothing is cached.
* ``lru`` / ``lfu``: demand caches; a miss loads the expert and evicts the least recently /
  least frequently used one.
* ``belady``: the offline optimum for a demand cache (evict the expert whose next request in
  this layer is farthest away); the upper limit on the hit rate of any demand cache.
* ``moesched``: dataset-free prediction (``solvers.prefetch.predict``): score-aware eviction
  (evict the resident expert least likely to be requested, ties by cumulative gate weight),
  plus prefetch: before each layer, predicted experts are swapped in for residents that are
  less likely to be asked for. ``prefetch_limit`` bounds the swaps per layer (the executor
  replay in ``solvers.decode_loop`` bounds them by link time instead), so prefetch traffic is
  counted separately from demand loads.
* ``static``: holds what the caller puts in it and admits nothing on a miss (a pinned hot set).

Opt-in substitution (arXiv 2508.18983): a missed expert whose gate weight is below
``substitute_below`` is served by the resident expert most similar to it (co-activation
cosine, learned online) while the substituted share of gate mass stays within
``quality_budget``; each substitution is counted.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hwmodel.workload import RoutingTrace
from solvers.prefetch.predict import Predictor, TransitionMemory

Policy = Literal["none", "lru", "lfu", "belady", "moesched", "static"]
POLICIES: tuple[Policy, ...] = ("none", "lru", "lfu", "belady", "moesched")


@dataclass
class ReplayStats:
    """Counts over a replay: requests, hits, demand loads, prefetches, substitutions."""

    requests: int = 0
    hits: int = 0
    loads: int = 0  # demand loads (misses that moved weights)
    prefetches: int = 0  # staging transfers ahead of use (an expert, or a granule of one)
    substitutions: int = 0
    split_loads: int = 0  # pieces of absent experts loaded while their units compute the rest
    gate_mass: float = 0.0
    substituted_gate_mass: float = 0.0
    loads_per_step: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return (self.hits + self.substitutions) / self.requests if self.requests else 0.0

    @property
    def substituted_share(self) -> float:
        return self.substituted_gate_mass / self.gate_mass if self.gate_mass else 0.0

    def add(self, other: ReplayStats) -> None:
        """Accumulate another replay's counts into this one."""
        for name in ("requests", "hits", "loads", "prefetches", "substitutions", "split_loads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.gate_mass += other.gate_mass
        self.substituted_gate_mass += other.substituted_gate_mass
        self.loads_per_step += other.loads_per_step


class ExpertCaches:
    """One cache per layer under an eviction ``policy``.

    Args:
        capacity: experts each layer holds: one figure for every layer, or one per layer (a
            global allocation across layers, ``global_allocation``).
        future: for ``belady`` only, the requests to come, ``[steps, L, k]`` expert ids.
    """

    def __init__(
        self,
        policy: Policy,
        capacity: int | list[int] | tuple[int, ...],
        num_layers: int,
        num_experts: int,
        future: np.ndarray | None = None,
    ) -> None:
        self.policy = policy
        caps = [capacity] * num_layers if isinstance(capacity, int) else list(capacity)
        if len(caps) != num_layers:
            raise ValueError(f"capacity: {len(caps)} per-layer values for {num_layers} layers")
        self.caps = [0 if policy == "none" else int(c) for c in caps]
        self.capacity = max(self.caps, default=0)
        self.lines: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(num_layers)]
        # Lines still being staged a granule at a time: expert -> granules not yet there.
        self.missing: list[dict[int, set[int]]] = [{} for _ in range(num_layers)]
        # Per layer, how many times its lines or their missing granules have changed (a
        # caller keeping figures derived from them compares counts, not contents).
        self.changes = [0] * num_layers
        self.freq = np.zeros((num_layers, num_experts))
        self.uses: list[dict[int, list[int]]] = []
        if policy == "belady":
            if future is None:
                raise ValueError("belady needs the future requests")
            self.uses = [_positions(future[:, layer, :]) for layer in range(future.shape[1])]
        self.horizon = 0 if future is None else int(future.shape[0])

    def resident(self, layer: int) -> list[int]:
        """Experts held whole (lines being staged excluded)."""
        return [e for e in self.lines[layer] if e not in self.missing[layer]]

    def partial(self, layer: int) -> dict[int, set[int]]:
        """Lines being staged: expert -> granules still missing."""
        return self.missing[layer]

    def holds(self, layer: int, expert: int) -> bool:
        return expert in self.lines[layer] and expert not in self.missing[layer]

    def touch(self, layer: int, expert: int) -> None:
        """A request served from the cache (recency and frequency)."""
        self.lines[layer].move_to_end(expert)

    def count(self, layer: int, expert: int) -> None:
        """A request of this expert, resident or not (LFU's frequency)."""
        self.freq[layer, expert] += 1

    def victim(
        self, layer: int, step: int, protect: set[int], score: np.ndarray | None = None
    ) -> int | None:
        """Who leaves to make room (None while there is a free line or nobody may leave).

        ``score [E]`` ranks residents for ``moesched`` (lowest leaves; ties: least recent).
        """
        line = self.lines[layer]
        if len(line) < self.caps[layer]:
            return None
        cands = [e for e in line if e not in protect]
        if not cands:
            return None
        if self.policy == "lru" or (self.policy == "moesched" and score is None):
            return cands[0]
        if self.policy == "lfu":
            return min(cands, key=lambda x: (self.freq[layer, x], x))
        if self.policy == "belady":
            return max(cands, key=lambda x: (self._next_use(layer, x, step), x))
        if self.policy == "moesched":
            assert score is not None
            rank = {e: i for i, e in enumerate(line)}
            return min(cands, key=lambda x: (score[x], rank[x]))
        return None

    def _next_use(self, layer: int, expert: int, step: int) -> int:
        steps = self.uses[layer].get(expert, [])
        i = bisect.bisect_right(steps, step)
        return steps[i] if i < len(steps) else self.horizon + 1

    def admits(self) -> bool:
        """Whether a demand load enters the cache."""
        return self.capacity > 0 and self.policy in ("lru", "lfu", "belady", "moesched")

    def insert(self, layer: int, expert: int, victim: int | None) -> bool:
        """Put ``expert`` in, evicting ``victim``; False (nothing changes) when the layer is
        full and no victim is given."""
        line = self.lines[layer]
        if expert in line:  # completes a line being staged
            if self.missing[layer].pop(expert, None) is not None:
                self.changes[layer] += 1
            line.move_to_end(expert)
            return True
        if victim is not None:
            del line[victim]
            self.missing[layer].pop(victim, None)
        elif len(line) >= self.caps[layer]:
            return False
        line[expert] = None
        self.changes[layer] += 1
        return True

    def drop(self, layer: int, expert: int) -> None:
        """Forget a line (its weights were freed)."""
        self.lines[layer].pop(expert, None)
        self.missing[layer].pop(expert, None)
        self.changes[layer] += 1

    def stage(
        self, layer: int, expert: int, granules: set[int], num_granules: int, victim: int | None
    ) -> bool:
        """Some granules of ``expert`` arrive; a new line (evicting ``victim``) starts with
        all ``num_granules`` missing. False when there is no room."""
        if expert not in self.lines[layer]:
            if not self.insert(layer, expert, victim):
                return False
            self.missing[layer][expert] = set(range(num_granules))
        left = self.missing[layer].get(expert)
        if left is not None:
            self.changes[layer] += 1
            left -= granules
            if not left:
                del self.missing[layer][expert]
        return True

    def pin(self, layer: int, experts: list[int]) -> None:
        """Set a layer's content (the ``static`` hot set), at most its capacity."""
        self.lines[layer] = OrderedDict((int(e), None) for e in experts[: self.caps[layer]])
        self.missing[layer] = {}
        self.changes[layer] += 1

    def swaps(
        self,
        layer: int,
        p: np.ndarray,
        protect: set[int] = frozenset(),  # type: ignore[assignment]
        limit: int | None = None,
    ) -> list[tuple[int, int | None, float]]:
        """Prefetch candidates for ``layer``: (expert in, expert out or None, gain in expected
        requests) pairing the most probable absent experts with free lines first, then with the
        least probable residents, while the gain is positive (at most ``limit`` pairs).
        ``p [E]``: request chances."""
        if self.caps[layer] == 0:
            return []
        line = self.lines[layer]
        chance = p.tolist()  # Python floats: the same values, cheaper to read one by one
        out_order: list[int | None] = [None] * max(0, self.caps[layer] - len(line))
        # Least probable first, ties by expert id (each pair is unique: no ties left).
        out_order += [e for _, e in sorted((chance[e], e) for e in line if e not in protect)]
        if limit is not None:
            del out_order[limit:]
        # The most probable absent experts, as many as there are lines to pair them with.
        absent: list[int] = []
        for e in np.argsort(-p, kind="stable").tolist():
            if len(absent) >= len(out_order):
                break
            if e not in line:
                absent.append(e)
        pairs = []
        for e_in, e_out in zip(absent, out_order, strict=False):
            gain = chance[e_in] - (chance[e_out] if e_out is not None else 0.0)
            if gain <= 0:
                break
            pairs.append((e_in, e_out, gain))
        return pairs


def global_allocation(counts: np.ndarray, total_lines: int) -> list[int]:
    """Cache lines per layer from one global budget: the ``total_lines`` hottest (layer,
    expert) cells of ``counts [L, E]`` (kTransformers' global top-k; ties by layer, then
    expert), so a layer gets lines in proportion to how concentrated its traffic is.
    Returns ``[L]`` lines per layer summing to ``min(total_lines, L * E)``."""
    flat = np.argsort(-np.asarray(counts, dtype=np.float64).ravel(), kind="stable")
    chosen = flat[: max(0, total_lines)]
    num_layers, num_experts = counts.shape
    return [int(v) for v in np.bincount(chosen // num_experts, minlength=num_layers)]


def _positions(ids: np.ndarray) -> dict[int, list[int]]:
    """expert -> ascending steps at which it is requested, from ``ids [steps, k]``."""
    uses: dict[int, list[int]] = {}
    for step, row in enumerate(ids):
        for e in row:
            uses.setdefault(int(e), []).append(step)
    return uses


def serve(
    layer: int,
    want: np.ndarray,
    gates: np.ndarray,
    caches: ExpertCaches,
    predictor: Predictor,
    stats: ReplayStats,
    substitute_below: float = 0.0,
    quality_budget: float = 0.0,
) -> tuple[list[int], list[int]]:
    """Serve one token's requests ``want``/``gates [k]`` in one layer from the cache.

    Returns (experts that run, in request order without repeats; the misses among them).
    A substituted request runs its stand-in instead and is not a miss.
    """
    run: list[int] = []
    misses: list[int] = []
    for e_raw, g_raw in zip(want, gates, strict=True):
        e, g = int(e_raw), float(g_raw)
        stats.requests += 1
        stats.gate_mass += g
        caches.count(layer, e)
        if caches.holds(layer, e):
            stats.hits += 1
            caches.touch(layer, e)
            chosen = e
        else:
            stand_in = None
            if (
                substitute_below > 0
                and g < substitute_below
                and stats.substituted_gate_mass + g <= quality_budget * stats.gate_mass
            ):
                stand_in = predictor.most_similar(layer, e, caches.resident(layer))
            if stand_in is not None:
                stats.substitutions += 1
                stats.substituted_gate_mass += g
                caches.touch(layer, stand_in)
                chosen = stand_in
            else:
                chosen = e
                misses.append(e)
        if chosen not in run:
            run.append(chosen)
    return run, misses


def replay(
    trace: RoutingTrace,
    token_range: slice,
    capacity: int,
    policy: Policy,
    prefill: slice | None = None,
    decay: float = 0.98,
    transition_weight: float = 1.0,
    substitute_below: float = 0.0,
    quality_budget: float = 0.0,
    prefetch_limit: int | None = None,
    memory: TransitionMemory | None = None,
    warm_start: bool = False,
) -> ReplayStats:
    """Replay decode steps ``token_range`` of a trace through one cache per layer (counts
    only; ``solvers.decode_loop`` runs the same caches through the executor).

    Args:
        capacity: experts each layer's cache holds (0 <= capacity <= num_experts).
        prefill: tokens whose routing seeds the counts (the prompt); the prediction never
            sees the decode steps before they happen.
        substitute_below: gate weight under which a miss may be substituted (0: never).
        quality_budget: largest share of gate mass that may be substituted.
        prefetch_limit: most experts ``moesched`` stages per layer and step (None: no limit).
            Before layer l of a token, the prediction knows the token's experts in layers
            l-3..l-1 (``Predictor.prefetch_probability``).
        memory: the pooled transitions of earlier requests (updated here); None: this
            request's own.
        warm_start: start every cache with the prompt's hottest experts (what its prefill
            left on the GPU, as ``solvers.decode_loop`` does); else empty.
    """
    ids = trace.expert_ids[token_range].astype(np.int64)  # [steps, layers, k]
    gates = (
        trace.gate_weights[token_range]
        if trace.gate_weights is not None
        else np.full(ids.shape, 1.0 / max(trace.top_k, 1))
    )
    steps, layers, _ = ids.shape
    stats = ReplayStats()
    predictor = Predictor(
        layers, trace.num_experts, trace.top_k, decay, transition_weight, memory=memory
    )
    if prefill is not None:
        predictor.seed(trace, prefill)
    caches = ExpertCaches(policy, capacity, layers, trace.num_experts, ids)
    if warm_start and prefill is not None:
        warm(caches, predictor)
    for step in range(steps):
        loads_now = 0
        if policy == "moesched":
            # Every layer's rankings at once: the memory and the counts change only when the
            # token has been served (``observe``), so nothing here sees the token's future.
            # Row l is prefetch_probability(l, {l-3..l-1}) and probability(l, ids[l-1]).
            pf_all, p_all = predictor.step_probabilities(ids[step])
        for layer in range(layers):
            if policy == "moesched":
                for e_in, e_out, _ in caches.swaps(layer, pf_all[layer])[:prefetch_limit]:
                    caches.insert(layer, e_in, e_out)
                    stats.prefetches += 1
                    loads_now += 1
                p = p_all[layer]  # eviction ranks
            else:
                p = None
            _, misses = serve(
                layer, ids[step, layer], gates[step, layer], caches, predictor, stats,
                substitute_below, quality_budget,
            )  # fmt: skip
            for e in misses:
                stats.loads += 1
                loads_now += 1
                if caches.admits():
                    protect = {int(x) for x in ids[step, layer]}
                    caches.insert(layer, e, caches.victim(layer, step, protect, p))
        predictor.observe(ids[step], gates[step])
        predictor.refresh(threshold=0.0)
        stats.loads_per_step.append(loads_now)
    return stats


def warm(caches: ExpertCaches, predictor: Predictor) -> None:
    """Fill every layer's cache with the prompt's hottest experts (what its prefill left)."""
    for layer in range(len(caches.lines)):
        hot = np.argsort(-predictor.plan_counts[layer], kind="stable")
        caches.pin(layer, [int(e) for e in hot])


def replay_runs(
    trace: RoutingTrace,
    runs: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...],
    capacity: int,
    policy: Policy,
    pooled: bool = True,
    per_run: list[ReplayStats] | None = None,
    **kwargs: float | int | None,
) -> ReplayStats:
    """Replay every decode run ``(prompt start, decode start, decode end)`` in order, each
    from a cache warmed by its own prompt; ``pooled``: one transition memory for all runs (a
    session's earlier requests inform the later ones), else one per run. ``kwargs`` go to
    ``replay`` (``warm_start`` defaults to True here, as in the executor loop); ``per_run``
    collects each run's own counts."""
    kwargs.setdefault("warm_start", True)
    total = ReplayStats()
    memory = TransitionMemory(trace.num_layers, trace.num_experts) if pooled else None
    for start, mid, end in runs:
        got = replay(
            trace, slice(mid, end), capacity, policy, prefill=slice(start, mid),
            memory=memory, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        total.add(got)
        if per_run is not None:
            per_run.append(got)
    return total
