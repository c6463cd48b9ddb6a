"""The prefetch predictor: pooled cross-layer transitions, hand-computed and on real traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hwmodel.workload import RoutingTrace
from solvers.prefetch.cache import replay, replay_runs
from solvers.prefetch.predict import (
    Predictor,
    TokenPredictions,
    TransitionMemory,
    prefetch_precision,
)


def two_layer(tokens: list[tuple[int, int]], seqs: list[int], num_experts: int = 4) -> RoutingTrace:
    """Top-1 routing over 2 layers: ``tokens[t] = (layer-0 expert, layer-1 expert)``."""
    ids = np.array(tokens, dtype=np.int16)[:, :, None]  # [T, 2, 1]
    return RoutingTrace(
        "tiny2", np.array([0, 1]), ids, None, np.array(seqs, dtype=np.int32), num_experts
    )


def test_transition_memory_counts_every_lag_by_hand() -> None:
    """One token routed (0, 1) / (2, 3) / (1, 0) over 3 layers, top-2: lag 1 counts the 4 pairs
    of each adjacent layer pair, lag 2 the 4 pairs of layers 0 and 2."""
    mem = TransitionMemory(3, 4)
    mem.learn(np.array([[[0, 1], [2, 3], [1, 0]]]))
    lag1, lag2 = mem.counts
    assert lag1.shape == (2, 4, 4) and lag2.shape == (1, 4, 4)
    assert lag1[0][np.ix_([0, 1], [2, 3])].sum() == 4 and lag1[0].sum() == 4
    assert lag1[1][np.ix_([2, 3], [0, 1])].sum() == 4 and lag1[1].sum() == 4
    assert lag2[0][np.ix_([0, 1], [0, 1])].sum() == 4 and lag2[0].sum() == 4
    # P(layer 1 | expert 0 in layer 0): 2 and 3 alike.
    assert np.allclose(mem.distribution(1, {0: np.array([0])}, (1.0,)), [0, 0, 0.5, 0.5])
    assert mem.distribution(1, {}, (1.0,)) is None


def test_transitions_outrank_frequency_and_frequency_breaks_ties() -> None:
    """Expert 3 is the hottest in layer 1, but after expert 0 in layer 0 the token always went
    to expert 1: the prefetch ranking puts 1 first; with nothing known, frequency (3) leads."""
    t = two_layer([(0, 1), (2, 3), (2, 3), (2, 3)], [0, 0, 0, 0])
    pred = Predictor(2, 4, 1)
    pred.seed(t, slice(0, 4))
    known = pred.prefetch_probability(1, {0: np.array([0])})
    assert int(np.argmax(known)) == 1
    assert int(np.argmax(pred.prefetch_probability(1, {}))) == 3
    # Experts 2 and 3 both never followed 0: the tie is broken by frequency (3 hotter than 2).
    assert known[3] > known[2]


def test_pooled_transitions_prefetch_across_requests() -> None:
    """Request A teaches 0 -> 1; request B's prompt only shows 2 -> 3 and its decode asks for
    0 then 1. With one line per layer, the pooled memory prefetches 1 before layer 1 (a hit);
    learned per request, the prediction has never seen 0 -> 1, and 1 misses."""
    tokens = [(0, 1), (0, 1), (0, 1), (2, 3), (0, 1)]
    t = two_layer(tokens, [0, 0, 0, 1, 1])
    runs = [(0, 1, 3), (3, 4, 5)]
    pooled = replay_runs(t, runs, 1, "moesched", prefetch_limit=1)
    alone = replay_runs(t, runs, 1, "moesched", prefetch_limit=1, pooled=False)
    # Run A (warm with 0 / 1): 4 hits either way. Run B (warm with 2 / 3): layer 0 misses;
    # layer 1 hits only when 0 -> 1 is remembered from A.
    assert (pooled.hits, alone.hits) == (5, 4)
    b = replay(t, slice(4, 5), 1, "moesched", prefill=slice(3, 4), prefetch_limit=1)
    assert b.hits == 0  # fresh memory, no warm start: nothing to go on


def test_real_trace_transitions_beat_frequency(traces: Path) -> None:
    """On real ESFT law routing (the first 6 sequences, first quarter of each as the prompt),
    the pooled transitions' precision@6 for the next layer is more than twice frequency's; the
    lag-2 term adds to the previous layer alone."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft

    t = load_esft(traces / ESFT_FILES["law"])
    runs = t.decode_runs(0.25, 60, 6)
    freq = float(np.mean(prefetch_precision(t, runs, ranking="frequency")))
    lag1 = float(np.mean(prefetch_precision(t, runs, lag_weights=(1.0,))))
    both = float(np.mean(prefetch_precision(t, runs)))
    assert lag1 > 2 * freq
    assert both > lag1
    ahead = float(np.mean(prefetch_precision(t, runs, lookahead=2)))
    assert freq < ahead < both


def _per_layer(pred: Predictor, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: both rankings one layer at a time, as the replay computed them before
    ``step_probabilities`` (prefetch from layers l-3..l-1, eviction from layer l-1)."""
    pf = [
        pred.prefetch_probability(layer, {j: ids[j] for j in range(max(0, layer - 3), layer)})
        for layer in range(pred.L)
    ]
    ev = [
        pred.probability(layer, ids[layer - 1] if layer else None, live=True)
        for layer in range(pred.L)
    ]
    return np.array(pf), np.array(ev)


def _law_predictors(traces: Path) -> tuple[Predictor, Predictor, np.ndarray, np.ndarray]:
    """A fresh predictor and one whose memory learned 3 real ESFT law sequences (seeded with
    the 4th's prompt), the 4th's decode expert ids [T, L, k] and gate weights [T, L, k]."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft

    t = load_esft(traces / ESFT_FILES["law"])
    runs = t.decode_runs(0.25, 40, 4)
    memory = TransitionMemory(t.num_layers, t.num_experts)
    for start, _mid, end in runs[:3]:
        memory.learn(t.expert_ids[start:end])
    start, mid, end = runs[3]
    fresh = Predictor(t.num_layers, t.num_experts, t.top_k)
    pred = Predictor(t.num_layers, t.num_experts, t.top_k, memory=memory)
    pred.seed(t, slice(start, mid))
    ids = t.expert_ids[mid:end].astype(np.int64)
    gates = t.gate_weights[mid:end] if t.gate_weights is not None else np.ones(ids.shape)
    return fresh, pred, ids, gates


def test_step_probabilities_equal_the_per_layer_rankings_bit_for_bit(traces: Path) -> None:
    """On real ESFT law routing, after the memory has learned 3 sequences, every decode token
    of the 4th gets, from the one-pass ``step_probabilities``, exactly (bit for bit) the
    per-layer rankings; including a memory with nothing on some layers (fresh, token 0)."""
    fresh, pred, ids, gates = _law_predictors(traces)
    for p in (fresh, pred):
        for step in range(ids.shape[0]):
            got, want = p.step_probabilities(ids[step]), _per_layer(p, ids[step])
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            p.observe(ids[step], gates[step])


def test_replay_figures_unchanged_by_the_one_pass_rankings(
    traces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counting replay of 3 real law sequences (with substitution) gives the same counts
    with ``step_probabilities`` as with the per-layer rankings patched in its place."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft

    t = load_esft(traces / ESFT_FILES["law"])
    runs = t.decode_runs(0.25, 30, 3)
    kw: dict[str, Any] = {"prefetch_limit": 2, "substitute_below": 0.1, "quality_budget": 0.05}
    fast = replay_runs(t, runs, 16, "moesched", **kw)
    monkeypatch.setattr(Predictor, "step_probabilities", _per_layer)
    slow = replay_runs(t, runs, 16, "moesched", **kw)
    assert fast == slow and fast.prefetches > 0 and fast.substitutions > 0


def test_token_predictions_equal_the_predictor_bit_for_bit(traces: Path) -> None:
    """On real ESFT law routing (a memory that has learned 3 sequences, and a fresh one with
    nothing on the first token), ``TokenPredictions`` gives every ranking the decode loop asks
    for exactly (bit for bit) as the predictor computes it layer by layer: the eviction
    ranking of each layer (transitions from the layer before) and the prefetch ranking of the
    next 3 layers from the token's experts in the layer and the two before; asked twice, the
    kept figures."""
    fresh, pred, ids, gates = _law_predictors(traces)
    ids, gates = ids[:12], gates[:12]
    asked = 0
    for p in (fresh, pred):
        for step in range(ids.shape[0]):
            tok = TokenPredictions(p, ids[step])
            for layer in range(p.L):
                want = p.probability(layer, ids[step, layer - 1] if layer else None, live=True)
                assert tok.probability(layer).tobytes() == want.tobytes(), (step, layer)
                known = range(max(0, layer - 2), layer + 1)
                for nxt in range(layer + 1, min(p.L, layer + 4)):
                    want = p.prefetch_probability(nxt, {j: ids[step, j] for j in known})
                    for _ in range(2):
                        got = tok.prefetch_probability(nxt, known)
                        assert got.tobytes() == want.tobytes(), (step, layer, nxt)
                    asked += 1
            p.observe(ids[step], gates[step])
    assert asked > 1000
