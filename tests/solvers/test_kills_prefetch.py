"""Exact small cases that kill surviving mutants of ``solvers/prefetch`` (``make mutants``).

Each case is computed by hand in its docstring; the figures are pinned exactly, so that a
changed constant, operator or argument in the replay or the prediction fails here.
"""

from __future__ import annotations

import numpy as np

from hwmodel.workload import RoutingTrace
from solvers.common import Budget
from solvers.prefetch.cache import ExpertCaches, replay
from solvers.prefetch.predict import Predictor, prefetch_precision
from solvers.prefetch.select import PrefetchProblem, select, value_upper_bound
from tests.solvers.test_cache import tiny


def alternating_trace(tokens: int = 6) -> RoutingTrace:
    """Two layers, three experts, top-1: tokens alternate (layer 0, layer 1) = (0, 1), (2, 0)."""
    ids = np.array([[[0], [1]], [[2], [0]]] * (tokens // 2), dtype=np.int16)
    return RoutingTrace("alt", np.array([0, 1]), ids, None, np.zeros(tokens, np.int32), 3)


def test_substitution_counts_exactly() -> None:
    """LRU with one line, the prompt [0, 1] x 3 (0 and 1 co-activated), then
    [0 g.6, 3 g.05], [1 g.05, 3 g.6], [2 g.05, 3 g.6]:
    step 3: 0 misses and loads; 3 (low gate) has no similar resident (never seen with 0
    before this token) and misses; 0 and 3 are both protected, so 3 is not admitted.
    step 4: 1 (low gate, budget .1 <= .5 * .7) is served by resident 0 (substitution 1);
    3 misses and evicts 0. step 5: 2 has no similar resident (never co-activated): miss; 3
    hits. So 6 requests, 1 hit, 1 substitution of gate .05, 4 loads (2, 1, 1 per step)."""
    seq = [[0, 1]] * 3 + [[0, 3]] + [[1, 3]] + [[2, 3]]
    gates = [[0.5, 0.5]] * 3 + [[0.6, 0.05]] + [[0.05, 0.6]] + [[0.05, 0.6]]
    got = replay(
        tiny(seq, gates, num_experts=4), slice(3, 6), 1, "lru", prefill=slice(0, 3),
        substitute_below=0.1, quality_budget=0.5,
    )  # fmt: skip
    assert (got.requests, got.hits, got.substitutions, got.loads) == (6, 1, 1, 4)
    assert got.loads_per_step == [2, 1, 1]
    assert got.substituted_gate_mass == np.float32(0.05)
    assert got.hit_rate == 2 / 6


def test_prefetch_precision_of_transitions_and_of_frequency() -> None:
    """Tokens alternate (0 -> 1), (2 -> 0) across the two layers. Run 1: prompt tokens 0-1,
    decode 2-3; run 2: no prompt, decode 4-5, with the transitions pooled from run 1.
    Transitions: layer 0's expert names layer 1's exactly: every prediction hits, 1.0 and
    1.0. Frequency: run 1 starts with counts (1, 1, 0) in layer 1: the tie goes to expert 0
    (wanted 1: miss), then (0.98, 1.98, 0) picks 1 (wanted 0: miss); run 2 starts from zero
    (uniform: 0, wanted 1) then picks 1 (wanted 0): 0.0 and 0.0. With layer 1 two layers
    ahead of nothing (lookahead 2 of 2 layers) there is nothing to score: 0.0."""
    t = alternating_trace()
    runs = [(0, 2, 4), (4, 4, 6)]
    assert prefetch_precision(t, runs) == [1.0, 1.0]
    assert prefetch_precision(t, runs, ranking="frequency") == [0.0, 0.0]
    assert prefetch_precision(t, runs, lookahead=2) == [0.0, 0.0]


def test_belady_admits_by_evicting_the_farthest_next_use() -> None:
    """0 1 2 2 0 with room for 2. Belady: at 2, resident 0 is next asked for at step 4 and 1
    never again: 1 leaves; 2 and 0 then hit (2 hits, 3 loads). LRU evicts 0 instead: 2 hits,
    0 misses (1 hit)."""
    t = tiny([[0], [1], [2], [2], [0]])
    belady = replay(t, slice(0, 5), 2, "belady")
    assert (belady.hits, belady.loads) == (2, 3)
    assert replay(t, slice(0, 5), 2, "lru").hits == 1


def test_drop_forgets_a_line_and_its_missing_granules() -> None:
    caches = ExpertCaches("lru", 2, 1, 4)
    assert caches.stage(0, 3, {0}, 2, None)  # granule 0 of 2 arrived: a line being staged
    assert caches.insert(0, 1, None)
    assert caches.partial(0) == {3: {1}} and caches.resident(0) == [1]
    caches.drop(0, 3)
    assert list(caches.lines[0]) == [1] and caches.partial(0) == {}
    caches.drop(0, 1)
    assert list(caches.lines[0]) == [] and caches.resident(0) == []


def test_most_similar_is_by_cosine_not_by_overlap() -> None:
    """Expert 0's co-activation row is (0, 0, 1, 0). Resident 1's is the same (cosine 1, dot
    1); resident 3's is (0, 0, 90, 40) (cosine 90 / 98.49 = 0.914, dot 90): 1 is the most
    similar, although 3 shares more co-activations."""
    pred = Predictor(1, 4, 1)
    pred.coact[0, 0] = [0, 0, 1, 0]
    pred.coact[0, 1] = [0, 0, 1, 0]
    pred.coact[0, 3] = [0, 0, 90, 40]
    assert pred.most_similar(0, 0, [3, 1]) == 1
    assert pred.most_similar(0, 0, [3]) == 3
    assert pred.most_similar(0, 2, [1, 3]) is None  # expert 2's row is empty
    assert pred.most_similar(0, 0, []) is None


def link_bound_problem() -> PrefetchProblem:
    """Savings 0.5 x 100, 0.8 x 100, 0.4 x 100 = 50, 80, 40; link cycles 6, 8, 4 of 10; room
    for all three bytes. The best set is {0, 2} (90)."""
    return PrefetchProblem(
        (0, 1, 2), (0.5, 0.8, 0.4), (1.0, 1.0, 1.0), (6, 8, 4), (100, 100, 100), 3.0, 10
    )


def test_value_upper_bound_is_the_tighter_fractional_knapsack() -> None:
    """Bytes: all three fit, 170. Link: by saving per cycle 1 (80 / 8 = 10, ties by index)
    then 2 (10): 1 takes 8 cycles (80), 2 gets 2 of its 4 (20): 100. The bound is 100."""
    assert value_upper_bound(link_bound_problem()) == 100.0


def test_an_exact_backend_reports_its_proven_bound() -> None:
    """Greedy alone knows only the fractional bound (100); CP-SAT proves 90 (to its integer
    scaling of the values), and the choice reports that, not the fractional one."""
    budget = Budget.work(1.0, workers=1)
    greedy = select(link_bound_problem(), "greedy", budget=budget)
    assert (greedy.chosen, greedy.value, greedy.value_bound) == ([1], 80.0, 100.0)
    exact = select(link_bound_problem(), "cpsat", budget=budget)
    assert exact.chosen == [0, 2] and exact.value == 90.0
    assert 90.0 <= exact.value_bound < 90.001
