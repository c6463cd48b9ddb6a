"""Dataset-free prediction of which experts a layer will ask for, learned online.

Everything comes from the sequence being served: the prompt's prefill seeds the counts, and
every decoded token updates them. Nothing is fitted offline.

* ``counts [L, E]``: requests per (layer, expert), decayed by ``decay`` per token;
* ``mass [L, E]``: gate weight per (layer, expert), decayed the same way (score-aware eviction
  keeps the experts with high cumulative gate weight);
* ``trans [L-1, E, E]``: cross-layer co-routing, the expert chosen in layer l predicting l+1;
* ``coact [L, E, E]``: experts chosen together in a layer (similarity for substitution).

The plan-level counts (``plan_counts``) are a snapshot refreshed only when the live counts
drift from it by more than a threshold (total variation per layer, averaged), so a plan built
on them is re-solved on drift rather than on every token.
"""

from __future__ import annotations

import numpy as np

from hwmodel.workload import RoutingTrace


class Predictor:
    """Running statistics of one sequence's routing, ``L`` layers of ``E`` experts, top-``k``."""

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int,
        decay: float = 0.98,
        transition_weight: float = 1.0,
    ) -> None:
        self.L, self.E, self.k = num_layers, num_experts, top_k
        self.decay = decay
        self.transition_weight = transition_weight
        self.counts = np.zeros((num_layers, num_experts))
        self.mass = np.zeros((num_layers, num_experts))
        self.trans = np.zeros((max(num_layers - 1, 1), num_experts, num_experts))
        self.coact = np.zeros((num_layers, num_experts, num_experts))
        self.plan_counts = self.counts.copy()
        self.resolves = 0

    def seed(self, trace: RoutingTrace, prefill: slice) -> None:
        """Learn from the prompt's routing (all prefill tokens at full weight)."""
        ids = trace.expert_ids[prefill].astype(np.int64)
        if ids.shape[0] == 0:
            return
        gates = (
            trace.gate_weights[prefill].astype(np.float64)
            if trace.gate_weights is not None
            else np.full(ids.shape, 1.0 / self.k)
        )
        self.counts += trace.histogram(prefill)
        for layer in range(self.L):
            np.add.at(self.mass[layer], ids[:, layer, :].ravel(), gates[:, layer, :].ravel())
            for row in ids[:, layer, :]:
                self.coact[layer][np.ix_(row, row)] += 1
        if self.L > 1:
            self.trans += trace.transitions(prefill)
        self.refresh(threshold=0.0)

    def observe(self, ids: np.ndarray, gates: np.ndarray) -> None:
        """One decoded token: ``ids``/``gates [L, k]``; decay, then count."""
        self.counts *= self.decay
        self.mass *= self.decay
        for layer in range(self.L):
            row = ids[layer]
            self.counts[layer, row] += 1
            np.add.at(self.mass[layer], row, gates[layer])
            self.coact[layer][np.ix_(row, row)] += 1
            if layer > 0:
                self.trans[layer - 1][np.ix_(ids[layer - 1], row)] += 1

    def drift(self) -> float:
        """Mean over layers of the total-variation distance between the live counts and the
        plan's snapshot, each normalized to a distribution (0: same, 1: disjoint)."""
        live = self.counts / np.maximum(self.counts.sum(axis=1, keepdims=True), 1e-12)
        plan = self.plan_counts / np.maximum(self.plan_counts.sum(axis=1, keepdims=True), 1e-12)
        return float(0.5 * np.abs(live - plan).sum(axis=1).mean())

    def refresh(self, threshold: float) -> bool:
        """Re-snapshot the plan counts when the drift exceeds ``threshold``; True if it did."""
        if threshold > 0 and self.drift() <= threshold:
            return False
        self.plan_counts = self.counts.copy()
        self.resolves += 1
        return True

    def probability(
        self, layer: int, prev_ids: np.ndarray | None = None, live: bool = False
    ) -> np.ndarray:
        """Estimated chance that each expert of ``layer`` is among the next token's top-k,
        ``[E]`` in [0, 1]: the plan counts' share times k (``live``: the current cumulative
        gate weight's share, the score-aware ranking eviction uses), mixed with the
        cross-layer transitions from the experts the token chose in the previous layer
        (``prev_ids``)."""
        base = (self.mass if live else self.plan_counts)[layer]
        total = base.sum()
        p = base / total * self.k if total > 0 else np.full(self.E, self.k / self.E)
        if prev_ids is not None and layer > 0 and self.transition_weight > 0:
            t = self.trans[layer - 1][prev_ids].sum(axis=0)
            if t.sum() > 0:
                w = self.transition_weight
                p = (p + w * t / t.sum() * self.k) / (1 + w)
        return np.minimum(p, 1.0)

    def most_similar(self, layer: int, expert: int, resident: list[int]) -> int | None:
        """The resident expert whose co-activation profile is closest (cosine) to ``expert``'s,
        if any has a positive similarity."""
        if not resident:
            return None
        row = self.coact[layer][expert]
        norm = np.linalg.norm(row)
        if norm == 0:
            return None
        cand = self.coact[layer][resident]
        sims = cand @ row / (np.linalg.norm(cand, axis=1) * norm + 1e-12)
        best = int(np.argmax(sims))
        return resident[best] if sims[best] > 0 else None
