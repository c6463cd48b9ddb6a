"""Expert-cache replay: hand-computed outcomes on tiny traces, and the real trace's ordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwmodel.workload import RoutingTrace
from solvers.prefetch.cache import POLICIES, replay


def tiny(
    sequence: list[list[int]], gates: list[list[float]] | None = None, num_experts: int = 3
) -> RoutingTrace:
    ids = np.array(sequence, dtype=np.int16)[:, None, :]  # [steps, 1 layer, k]
    g = np.array(gates, dtype=np.float32)[:, None, :] if gates is not None else None
    return RoutingTrace(
        "tiny", np.array([0]), ids, g, np.zeros(len(sequence), dtype=np.int32), num_experts
    )


def test_belady_beats_lru_by_two_on_a_cyclic_sequence() -> None:
    """A B C A B C with room for 2. LRU always evicts the one needed next: 0 hits. LFU (ties
    to the lowest id) also 0. Belady: A, B load; C evicts B (next use 4 > A's 3); A hits;
    B evicts A (never used again); C hits: 2 hits."""
    t = tiny([[0], [1], [2], [0], [1], [2]])
    hits = {p: replay(t, slice(0, 6), 2, p).hits for p in ("none", "lru", "lfu", "belady")}
    assert hits == {"none": 0, "lru": 0, "lfu": 0, "belady": 2}
    assert replay(t, slice(0, 6), 2, "belady").loads == 4


def test_lru_and_lfu_differ_where_frequency_matters() -> None:
    """A A A B C A with room for 2: LRU evicts A at C (B is more recent), so the last A misses;
    LFU keeps A (used 3 times) and evicts B: the last A hits."""
    t = tiny([[0], [0], [0], [1], [2], [0]])
    assert replay(t, slice(0, 6), 2, "lru").hits == 2
    assert replay(t, slice(0, 6), 2, "lfu").hits == 3


def test_dataset_free_prediction_prefetches_what_the_prefill_used() -> None:
    """The prompt (prefill) used expert 2 only; decode asks for 2 every step: with room for one
    expert the prediction has it resident from the first decode step on (a demand cache
    misses once)."""
    t = tiny([[2]] * 4 + [[2]] * 4)
    pred = replay(t, slice(4, 8), 1, "moesched", prefill=slice(0, 4))
    lru = replay(t, slice(4, 8), 1, "lru", prefill=slice(0, 4))
    assert pred.hits == 4 and lru.hits == 3


def test_substitution_respects_the_quality_budget_and_similarity() -> None:
    """Experts 0 and 1 always appear together (similar); 2 never with them. With room for one
    expert, a low-gate request for 1 is served by resident 0; a low-gate request for 2 has no
    similar resident and loads. The budget caps the substituted gate mass."""
    seq = [[0, 1]] * 3 + [[0, 3]] + [[1, 3]] + [[2, 3]]
    gates = [[0.5, 0.5]] * 3 + [[0.6, 0.05]] + [[0.05, 0.6]] + [[0.05, 0.6]]
    t = tiny(seq, gates, num_experts=4)
    generous = replay(
        t, slice(3, 6), 1, "lru", prefill=slice(0, 3), substitute_below=0.1, quality_budget=0.5
    )
    assert generous.substitutions >= 1
    assert generous.substituted_share <= 0.5
    strict = replay(
        t, slice(3, 6), 1, "lru", prefill=slice(0, 3), substitute_below=0.1, quality_budget=0.0
    )
    assert strict.substitutions == 0


def test_real_trace_policy_order(traces: Path) -> None:
    """One real ESFT law sequence, 25% of its tokens as prefill, 16 of 64 experts cached:
    LRU and LFU below Belady (the demand-cache optimum); the prediction above LRU and LFU."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft

    t = load_esft(traces / ESFT_FILES["law"])
    start = int(np.flatnonzero(t.seq_ids == 16)[0])
    end = int(np.flatnonzero(t.seq_ids == 16)[-1]) + 1
    mid = start + (end - start) // 4
    rate = {
        p: replay(t, slice(mid, end), 16, p, prefill=slice(start, mid)).hit_rate for p in POLICIES
    }
    assert rate["none"] == 0
    assert rate["lru"] < rate["belady"] and rate["lfu"] < rate["belady"]
    assert rate["moesched"] > max(rate["lru"], rate["lfu"])
    sub = replay(
        t,
        slice(mid, end),
        16,
        "moesched",
        prefill=slice(start, mid),
        substitute_below=0.05,
        quality_budget=0.05,
    )
    assert sub.hit_rate > 0.6 and sub.substituted_share <= 0.05
