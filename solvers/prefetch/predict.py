"""Dataset-free prediction of which experts a layer will ask for, learned online.

Everything comes from requests already served: the prompt's prefill seeds the counts, every
decoded token updates them, and the cross-layer transitions are pooled over the earlier
requests of a session or replay (``TransitionMemory``). Nothing is fitted offline, and nothing
is learned from a token before it has been served.

* ``counts [L, E]``: requests per (layer, expert) of this request, decayed by ``decay`` per
  token;
* ``mass [L, E]``: gate weight per (layer, expert), decayed the same way (score-aware eviction
  keeps the experts with high cumulative gate weight);
* ``memory.counts[d] [L-d, E, E]``: cross-layer co-routing at lag ``d`` (1..``max_lag``): the
  expert chosen in layer l and the one chosen by the same token in layer l + d, pooled;
* ``coact [L, E, E]``: experts chosen together in a layer (similarity for substitution).

Two rankings, for two uses:

* ``prefetch_probability``: what to stage before a layer. On ESFT-class routing the token's
  own experts in the previous layers predict the next layer far better than frequency does
  (``prefetch_precision`` measures it), so the transitions carry the weight and frequency only
  breaks ties between experts they score alike;
* ``probability``: what to keep (eviction): frequency or cumulative gate weight, mixed with the
  previous layer's transitions by ``transition_weight``.

The plan-level counts (``plan_counts``) are a snapshot refreshed only when the live counts
drift from it by more than a threshold (total variation per layer, averaged), so a plan built
on them is re-solved on drift rather than on every token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hwmodel.workload import RoutingTrace

# Weight of each lag's transitions in the prefetch ranking, nearest known layer first
# (chosen on the fit part of the ESFT traces: the first quarter of the sequences).
LAG_WEIGHTS: tuple[float, ...] = (1.0, 0.5, 0.25)
# Frequency's weight against the transitions' 1 in the prefetch ranking: a tie-breaker.
FREQUENCY_TIE_WEIGHT = 0.05


class TransitionMemory:
    """Cross-layer co-routing counts pooled over the requests of a session (causal).

    ``counts[d - 1] [L - d, E, E]``: entry ``[l, a, b]`` counts (token, a, b) with ``a`` among
    the token's experts in layer ``l`` and ``b`` among them in layer ``l + d``.
    """

    def __init__(self, num_layers: int, num_experts: int, max_lag: int = 3) -> None:
        self.L, self.E = num_layers, num_experts
        self.max_lag = max(0, min(max_lag, num_layers - 1))
        self.counts = [
            np.zeros((num_layers - d, num_experts, num_experts)) for d in range(1, self.max_lag + 1)
        ]

    def learn(self, ids: np.ndarray) -> None:
        """Count the transitions of tokens ``ids [T, L, k]`` (expert ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 2:
            ids = ids[None]
        if ids.shape[0] == 0:
            return
        for d, mat in enumerate(self.counts, start=1):
            layers = np.arange(self.L - d)[None, :, None, None]
            src = ids[:, : self.L - d, :, None]
            dst = ids[:, d:, None, :]
            np.add.at(mat, (layers, src, dst), 1)

    def distribution(
        self, layer: int, known: Mapping[int, np.ndarray], lag_weights: Sequence[float]
    ) -> np.ndarray | None:
        """Chance of each expert of ``layer`` per request, ``[E]`` summing to 1, from the
        experts ``known[l] [k]`` the token chose in earlier layers ``l``: for each lag, the
        mean over the known experts of the conditional distribution P(b in layer | a in l),
        weighted by ``lag_weights[d - 1]`` (the nearest known layer's weight first). None when
        the memory has nothing on them."""
        nearest = min((layer - lay for lay in known if layer - lay > 0), default=None)
        if nearest is None:
            return None
        total = np.zeros(self.E)
        weight_sum = 0.0
        for lay, experts in known.items():
            d = layer - lay
            if d < 1 or d > self.max_lag or d - nearest >= len(lag_weights):
                continue
            rows = self.counts[d - 1][lay][np.asarray(experts, dtype=np.int64)]
            sums = rows.sum(axis=1, keepdims=True)
            if not (sums > 0).any():
                continue
            cond = (rows / np.maximum(sums, 1e-12)).sum(axis=0)
            w = lag_weights[d - nearest]
            total += w * cond / cond.sum()
            weight_sum += w
        return total / weight_sum if weight_sum > 0 else None

    def distributions(
        self, ids: np.ndarray, lag_weights: Sequence[float], num_known: int
    ) -> np.ndarray:
        """``distribution`` for every layer of one token at once: row ``l`` is
        ``distribution(l, {j: ids[j] for j in l - num_known .. l - 1}, lag_weights)``, the
        same floating-point operations in the same order (identical figures, one numpy pass
        per lag instead of one call per layer), NaN where that is None.

        Args:
            ids: the token's experts, ``[L, k]`` expert ids.
            num_known: how many layers before each layer are known (1 to ``max_lag``).

        Returns:
            ``[L, E]``: each row sums to 1, or is NaN (row 0 always).
        """
        ids = np.asarray(ids, dtype=np.int64)
        L, E = self.L, self.E
        total = np.zeros((L, E))
        weight_sum = np.zeros(L)
        # The nearest known layer is always l - 1, so lag d takes lag_weights[d - 1]; the
        # farthest lag first, as ``distribution`` walks ``known`` from its earliest layer.
        for d in range(min(num_known, self.max_lag, len(lag_weights)), 0, -1):
            rows = self.counts[d - 1][np.arange(L - d)[:, None], ids[: L - d]]  # [L-d, k, E]
            sums = rows.sum(axis=2, keepdims=True)
            ok = (sums > 0).any(axis=(1, 2))
            if not ok.any():
                continue
            cond = (rows[ok] / np.maximum(sums[ok], 1e-12)).sum(axis=1)  # [n, E]
            w = lag_weights[d - 1]
            target = np.flatnonzero(ok) + d
            total[target] += w * cond / cond.sum(axis=1, keepdims=True)
            weight_sum[target] += w
        out = np.full((L, E), np.nan)
        has = weight_sum > 0
        out[has] = total[has] / weight_sum[has, None]
        return out


class TokenPredictions:
    """Both rankings for one token's layers, as the decode loop asks for them while the token
    runs layer by layer: the same figures as ``Predictor.prefetch_probability`` and
    ``Predictor.probability(live=True)`` (the same floating-point operations in the same order),
    with each known layer's conditional distributions at every lag computed once, when the
    layer is first asked about (causal: a layer's experts are read only once a ranking needs
    them), and each ranking kept for the token (the prefetch asks twice per layer).

    Valid while the predictor does not change (``observe``/``seed``): one token's planning.

    Args:
        predictor: the request's running statistics.
        ids: the token's experts, ``[L, k]`` expert ids; row ``l`` is read only when a ranking
            from layer ``l`` is asked for.
    """

    def __init__(self, predictor: Predictor, ids: np.ndarray) -> None:
        self.predictor = predictor
        self.ids = ids
        # (known layer, lag) -> (its conditional distribution summed over the layer's experts
        # [E], its sum), or None when the memory has nothing on them.
        self._cond: dict[tuple[int, int], tuple[np.ndarray, np.float64] | None] = {}
        self._known: set[int] = set()
        self._prefetch: dict[tuple[int, int, int], np.ndarray] = {}
        self._share: dict[int, np.ndarray] = {}

    def _learn(self, layer: int) -> None:
        """The conditional distributions from ``layer``'s experts to every layer within the
        memory's lags (one numpy pass over the lags)."""
        self._known.add(layer)
        memory = self.predictor.memory
        lags = [d for d in range(1, memory.max_lag + 1) if layer + d < memory.L]
        if not lags:
            return
        experts = np.asarray(self.ids[layer], dtype=np.int64)
        rows = np.stack([memory.counts[d - 1][layer][experts] for d in lags])  # [lags, k, E]
        sums = rows.sum(axis=2, keepdims=True)
        cond = (rows / np.maximum(sums, 1e-12)).sum(axis=1)  # [lags, E]
        totals = cond.sum(axis=1)
        ok = (sums > 0).any(axis=(1, 2))
        for i, d in enumerate(lags):
            self._cond[(layer, d)] = (cond[i], totals[i]) if ok[i] else None

    def _distribution(
        self, layer: int, known: range, lag_weights: tuple[float, ...]
    ) -> np.ndarray | None:
        """``TransitionMemory.distribution(layer, {l: ids[l] for l in known}, lag_weights)``."""
        memory = self.predictor.memory
        nearest = min((layer - lay for lay in known if layer - lay > 0), default=None)
        if nearest is None:
            return None
        total = np.zeros(memory.E)
        weight_sum = 0.0
        for lay in known:
            d = layer - lay
            if d < 1 or d > memory.max_lag or d - nearest >= len(lag_weights):
                continue
            if lay not in self._known:
                self._learn(lay)
            got = self._cond.get((lay, d))
            if got is None:
                continue
            cond, cond_sum = got
            w = lag_weights[d - nearest]
            total += w * cond / cond_sum
            weight_sum += w
        return total / weight_sum if weight_sum > 0 else None

    def prefetch_probability(self, layer: int, known: range) -> np.ndarray:
        """``Predictor.prefetch_probability(layer, {l: ids[l] for l in known})`` (kept: the
        caller must not change it)."""
        key = (layer, known.start, known.stop)
        got = self._prefetch.get(key)
        if got is None:
            pred = self.predictor
            f = self._share.get(layer)
            if f is None:
                f = self._share[layer] = pred._share(pred.counts[layer])
            got = pred.prefetch_mix(f, self._distribution(layer, known, pred.lag_weights))
            got.setflags(write=False)
            self._prefetch[key] = got
        return got

    def probability(self, layer: int) -> np.ndarray:
        """``Predictor.probability(layer, ids[layer - 1] (None for layer 0), live=True)``."""
        pred = self.predictor
        t = None
        if layer > 0 and pred.transition_weight > 0:
            t = self._distribution(layer, range(layer - 1, layer), (1.0,))
        return pred.eviction_mix(pred._share(pred.mass[layer]), t)


class Predictor:
    """Running statistics of one request's routing, ``L`` layers of ``E`` experts, top-``k``.

    Args:
        memory: the session's pooled transitions (shared by its requests); a fresh one (this
            request only) when None.
    """

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        top_k: int,
        decay: float = 0.98,
        transition_weight: float = 1.0,
        memory: TransitionMemory | None = None,
        lag_weights: Sequence[float] = LAG_WEIGHTS,
        frequency_tie_weight: float = FREQUENCY_TIE_WEIGHT,
    ) -> None:
        self.L, self.E, self.k = num_layers, num_experts, top_k
        self.decay = decay
        self.transition_weight = transition_weight
        self.memory = memory if memory is not None else TransitionMemory(num_layers, num_experts)
        self.lag_weights = tuple(lag_weights)
        self.frequency_tie_weight = frequency_tie_weight
        self.counts = np.zeros((num_layers, num_experts))
        self.mass = np.zeros((num_layers, num_experts))
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
            pairs = (ids[:, layer, :, None], ids[:, layer, None, :])
            np.add.at(self.coact[layer], pairs, 1)
        self.memory.learn(ids)
        self.refresh(threshold=0.0)

    def observe(self, ids: np.ndarray, gates: np.ndarray) -> None:
        """One decoded token: ``ids``/``gates [L, k]``; decay, then count."""
        self.counts *= self.decay
        self.mass *= self.decay
        ids = np.asarray(ids, dtype=np.int64)
        layers = np.arange(self.L)[:, None]
        if (np.diff(np.sort(ids, axis=1), axis=1) > 0).all():  # distinct per layer: one pass
            self.counts[layers, ids] += 1
            self.mass[layers, ids] += gates
            self.coact[layers[:, :, None], ids[:, :, None], ids[:, None, :]] += 1
        else:
            for layer in range(self.L):
                row = ids[layer]
                self.counts[layer, row] += 1
                np.add.at(self.mass[layer], row, gates[layer])
                self.coact[layer][np.ix_(row, row)] += 1
        self.memory.learn(ids)

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

    def _share(self, base: np.ndarray) -> np.ndarray:
        """``base [E]`` as a distribution (uniform when empty)."""
        total = base.sum()
        return base / total if total > 0 else np.full(self.E, 1.0 / self.E)

    def probability(
        self, layer: int, prev_ids: np.ndarray | None = None, live: bool = False
    ) -> np.ndarray:
        """The eviction ranking: estimated chance that each expert of ``layer`` is among the
        next token's top-k, ``[E]`` in [0, 1]: the plan counts' share times k (``live``: the
        current cumulative gate weight's share, the score-aware ranking), mixed with the
        previous layer's transitions from the token's experts there (``prev_ids``) by
        ``transition_weight``."""
        t = None
        if prev_ids is not None and layer > 0 and self.transition_weight > 0:
            t = self.memory.distribution(layer, {layer - 1: prev_ids}, (1.0,))
        return self.eviction_mix(self._share((self.mass if live else self.plan_counts)[layer]), t)

    def eviction_mix(self, share: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """The eviction ranking from a layer's share ``[E]`` and its transitions ``t [E]``
        (None: none known), mixed by ``transition_weight``, times k, capped at 1."""
        if t is not None:
            w = self.transition_weight
            share = (share + w * t) / (1 + w)
        return np.minimum(share * self.k, 1.0)

    def prefetch_probability(self, layer: int, known: Mapping[int, np.ndarray]) -> np.ndarray:
        """The prefetch ranking: chance that each expert of ``layer`` is among this token's
        top-k, ``[E]`` in [0, 1], from the token's experts ``known[l] [k]`` in earlier layers
        (pooled transitions at lags 1..3, nearest first), frequency breaking ties; frequency
        alone when nothing is known."""
        f = self._share(self.counts[layer])
        return self.prefetch_mix(f, self.memory.distribution(layer, known, self.lag_weights))

    def prefetch_mix(self, f: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        """The prefetch ranking from a layer's frequency share ``f [E]`` and its transitions
        ``t [E]`` (None: nothing known, frequency alone), frequency breaking ties by
        ``frequency_tie_weight``, times k, capped at 1."""
        if t is None:
            return np.minimum(f * self.k, 1.0)
        w = self.frequency_tie_weight
        return np.minimum((t + w * f) / (1 + w) * self.k, 1.0)

    def step_probabilities(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both rankings for every layer of one token whose experts ``ids [L, k]`` are known
        layer by layer (the counting replay): row ``l`` of the first is
        ``prefetch_probability(l, {l-3..l-1})``, of the second ``probability(l, ids[l - 1],
        live=True)``, with identical figures (``TransitionMemory.distributions``).

        Returns:
            (prefetch ``[L, E]``, eviction ``[L, E]``), each in [0, 1].
        """
        k = self.k
        t_pf = self.memory.distributions(ids, self.lag_weights, 3)
        counts_total = self.counts.sum(axis=1)
        f = np.full((self.L, self.E), 1.0 / self.E)
        pos = counts_total > 0
        f[pos] = self.counts[pos] / counts_total[pos, None]
        w = self.frequency_tie_weight
        known = ~np.isnan(t_pf[:, 0])
        pf = f * k
        pf[known] = (t_pf[known] + w * f[known]) / (1 + w) * k
        mass_total = self.mass.sum(axis=1)
        p = np.full((self.L, self.E), 1.0 / self.E)
        pos = mass_total > 0
        p[pos] = self.mass[pos] / mass_total[pos, None]
        if self.transition_weight > 0:
            t_ev = self.memory.distributions(ids, (1.0,), 1)
            has = ~np.isnan(t_ev[:, 0])
            tw = self.transition_weight
            p[has] = (p[has] + tw * t_ev[has]) / (1 + tw)
        return np.minimum(pf, 1.0), np.minimum(p * k, 1.0)

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


def prefetch_precision(
    trace: RoutingTrace,
    runs: Sequence[tuple[int, int, int]],
    lookahead: int = 1,
    ranking: str = "prefetch",
    decay: float = 0.98,
    **kwargs: float | Sequence[float],
) -> list[float]:
    """Precision@top_k of the prediction of layer ``l + lookahead``'s experts from the token's
    experts in layers ``<= l``, per decode run ``(prompt start, decode start, decode end)``,
    replayed in order with one pooled memory (causal: a run's tokens are learned only after
    they are scored). ``ranking``: ``prefetch`` (transitions, frequency ties) or ``frequency``
    (the request's decayed counts). Returns one precision per run, in run order."""
    L, E, k = trace.num_layers, trace.num_experts, trace.top_k
    memory = TransitionMemory(L, E)
    out = []
    for start, mid, end in runs:
        pred = Predictor(L, E, k, decay, memory=memory, **kwargs)  # type: ignore[arg-type]
        pred.seed(trace, slice(start, mid))
        ids = trace.expert_ids[mid:end].astype(np.int64)
        gates = (
            trace.gate_weights[mid:end]
            if trace.gate_weights is not None
            else np.full(ids.shape, 1.0 / k)
        )
        hits = total = 0
        for t in range(ids.shape[0]):
            for layer in range(lookahead, L):
                if ranking == "frequency":
                    p = pred._share(pred.counts[layer])
                else:
                    known = {
                        lay: ids[t, lay] for lay in range(max(0, layer - 3), layer - lookahead + 1)
                    }
                    p = pred.prefetch_probability(layer, known)
                top = np.argsort(-p, kind="stable")[:k]
                hits += len(set(top.tolist()) & set(ids[t, layer].tolist()))
                total += k
            pred.observe(ids[t], gates[t])
        out.append(hits / total if total else 0.0)
    return out
