"""Expert caches replayed on real routing: which requested experts are already resident.

One cache per MoE layer, ``capacity`` experts each. At every decode step (token), layer by
layer, the token's top-k experts are requested; a request is a hit when the expert is resident
at that moment. Policies:

* ``none``: nothing is cached.
* ``lru`` / ``lfu``: demand caches; a miss loads the expert and evicts the least recently /
  least frequently used one.
* ``belady``: the offline optimum for a demand cache (evict the expert whose next request in
  this layer is farthest away); the upper limit on the hit rate of any demand cache.
* ``moesched``: dataset-free prediction. Running counts per (layer, expert), decayed every
  step and seeded from the sequence's own prefill, plus a cross-layer boost from the experts
  the token chose in the layer before (transitions learned online). Before each layer the
  cache is refilled with the highest-scored experts (prefetch), so it is not a demand cache
  and can beat Belady's bound.

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

Policy = Literal["none", "lru", "lfu", "belady", "moesched"]
POLICIES: tuple[Policy, ...] = ("none", "lru", "lfu", "belady", "moesched")


@dataclass
class ReplayStats:
    """Counts over a replay: requests, hits, demand loads, prefetches, substitutions."""

    requests: int = 0
    hits: int = 0
    loads: int = 0  # demand loads (misses that moved weights)
    prefetches: int = 0  # experts staged ahead by the prediction
    substitutions: int = 0
    gate_mass: float = 0.0
    substituted_gate_mass: float = 0.0
    loads_per_step: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return (self.hits + self.substitutions) / self.requests if self.requests else 0.0

    @property
    def substituted_share(self) -> float:
        return self.substituted_gate_mass / self.gate_mass if self.gate_mass else 0.0


def _belady_next_use(ids: np.ndarray) -> list[dict[int, list[int]]]:
    """Per layer: expert -> ascending request positions (step indices) in this layer."""
    out: list[dict[int, list[int]]] = []
    for layer in range(ids.shape[1]):
        uses: dict[int, list[int]] = {}
        for step in range(ids.shape[0]):
            for e in ids[step, layer]:
                uses.setdefault(int(e), []).append(step)
        out.append(uses)
    return out


def _next_use(uses: dict[int, list[int]], expert: int, step: int, never: int) -> int:
    """The first step after ``step`` at which the layer requests ``expert`` (or ``never``)."""
    steps = uses.get(expert, [])
    i = bisect.bisect_right(steps, step)
    return steps[i] if i < len(steps) else never + 1


def _most_similar(coact: np.ndarray, expert: int, resident: list[int]) -> int | None:
    """The resident expert whose co-activation profile is closest (cosine) to ``expert``'s,
    if any has a positive similarity; ``coact [E, E]`` counts experts chosen together."""
    row = coact[expert]
    norm = np.linalg.norm(row)
    if norm == 0:
        return None
    cand = coact[resident]
    sims = cand @ row / (np.linalg.norm(cand, axis=1) * norm + 1e-12)
    best = int(np.argmax(sims))
    return resident[best] if sims[best] > 0 else None


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
) -> ReplayStats:
    """Replay decode steps ``token_range`` of a trace through one cache per layer.

    Args:
        capacity: experts each layer's cache holds (0 <= capacity <= num_experts).
        prefill: tokens whose routing seeds the counts (the prompt); the prediction never
            sees the decode steps before they happen.
        substitute_below: gate weight under which a miss may be substituted (0: never).
        quality_budget: largest share of gate mass that may be substituted.
    """
    ids = trace.expert_ids[token_range].astype(np.int64)  # [steps, layers, k]
    gates = (
        trace.gate_weights[token_range] if trace.gate_weights is not None else np.ones(ids.shape)
    )
    steps, layers, _ = ids.shape
    num_experts = trace.num_experts
    stats = ReplayStats()
    counts = np.zeros((layers, num_experts))
    if prefill is not None:
        counts += trace.histogram(prefill)
    trans = np.zeros((max(layers - 1, 1), num_experts, num_experts))
    coact = np.zeros((layers, num_experts, num_experts))  # learned online (and from prefill)
    if prefill is not None:
        if policy == "moesched" and layers > 1:
            trans += trace.transitions(prefill)
        pre = trace.expert_ids[prefill].astype(np.int64)
        for layer in range(layers):
            for row in pre[:, layer, :]:
                coact[layer][np.ix_(row, row)] += 1
    cached: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(layers)]
    freq = np.zeros((layers, num_experts))
    uses = _belady_next_use(ids) if policy == "belady" else []
    for step in range(steps):
        loads_now = 0
        for layer in range(layers):
            want = [int(e) for e in ids[step, layer]]
            cache = cached[layer]
            if policy == "moesched" and capacity > 0:
                score = counts[layer].copy()
                if layer > 0:
                    score += transition_weight * trans[layer - 1][ids[step, layer - 1]].sum(axis=0)
                top = np.argsort(-score, kind="stable")[:capacity]
                staged = sum(1 for e in top if int(e) not in cache)
                stats.prefetches += staged
                loads_now += staged
                cached[layer] = cache = OrderedDict((int(e), None) for e in top)
            for e, g in zip(want, gates[step, layer], strict=True):
                stats.requests += 1
                stats.gate_mass += float(g)
                freq[layer, e] += 1
                if e in cache:
                    stats.hits += 1
                    cache.move_to_end(e)
                    continue
                if (
                    substitute_below > 0
                    and g < substitute_below
                    and cache
                    and stats.substituted_gate_mass + g <= quality_budget * stats.gate_mass
                ):
                    stand_in = _most_similar(coact[layer], e, list(cache))
                    if stand_in is not None:
                        stats.substitutions += 1
                        stats.substituted_gate_mass += float(g)
                        cache.move_to_end(stand_in)
                        continue
                stats.loads += 1
                loads_now += 1
                if policy in ("none", "moesched") or capacity == 0:
                    continue
                if len(cache) >= capacity:
                    if policy == "lru":
                        cache.popitem(last=False)
                    elif policy == "lfu":
                        victim = min(cache, key=lambda x: (freq[layer, x], x))
                        del cache[victim]
                    else:  # belady: evict the one whose next request is farthest away
                        victim = max(
                            cache, key=lambda x: (_next_use(uses[layer], x, step, steps), x)
                        )
                        del cache[victim]
                cache[e] = None
            coact[layer][np.ix_(want, want)] += 1
        counts *= decay
        for layer in range(layers):
            counts[layer, ids[step, layer]] += 1
            if layer > 0:
                trans[layer - 1][np.ix_(ids[step, layer - 1], ids[step, layer])] += 1
        stats.loads_per_step.append(loads_now)
    return stats
