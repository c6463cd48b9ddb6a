"""Exact cases for EPLB behaviour that surviving mutants of ``solvers/eplb/`` showed no test
pinned (``python -m tests.mutants --groups eplb``; docs/mutants.json)."""

from __future__ import annotations

import numpy as np
import pytest

from solvers.eplb.batch_placement import batch_balancedness, fit_placement
from solvers.eplb.deepseek import rebalance_experts, replicate_experts
from solvers.eplb.routing import Router
from solvers.eplb.runtime import MoeschedEplbPolicy, min_move_placement


def test_batch_balancedness_of_a_one_token_batch() -> None:
    """Experts 0 and 1 alone on GPUs 0 and 1. One token on expert 0: loads (1, 0), mean / max
    = 0.5 (a peak of one token is a real peak); no token: 1.0 by definition; (3, 1): 2 / 3."""
    got = batch_balancedness(np.array([0, 1]), 2, np.array([[1, 0], [0, 0], [3, 1]]))
    assert got.tolist() == pytest.approx([0.5, 1.0, 2 / 3])


def test_route_accepts_float_token_counts() -> None:
    """Whole-number float loads are routed as the same integers: (3, 2) on one replica each."""
    router = Router(np.array([0, 1]), 2)
    got = router.route(np.array([3.0, 2.0]))
    assert got.gpu_loads.tolist() == [3, 2]
    assert got.max_load == 3
    assert got.tokens_per_slot.tolist() == [3, 2]


def test_a_missing_replica_goes_to_the_least_loaded_gpu() -> None:
    """Slots (GPU-major, 2 GPUs x 2): current [0, 5, 1, 6]; the target [0, 2, 1, 3] keeps
    experts 0 (weight 10) and 1 (weight 1) where they are, and needs 2 (weight 3) and 3
    (weight 2), with 5 and 6 dropped (free slots 1 on GPU 0, 3 on GPU 1). Heaviest missing
    first: expert 2 goes to GPU 1 (load 1 < 10), slot 3; expert 3 to the last free slot, 1.
    Loads (12, 4) are within the target's own largest GPU load (10 + 3 = 13): no swap."""
    weight = np.array([10.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0])
    got = min_move_placement(np.array([0, 5, 1, 6]), np.array([0, 2, 1, 3]), weight, 2)
    assert got.tolist() == [0, 3, 1, 2]


def test_hierarchical_eplb_keeps_each_node_its_own_group() -> None:
    """8 experts in 4 groups of 2 (loads 15, 11, 7, 3), 4 nodes of 1 GPU, 8 slots: each node
    takes one group (heaviest first to the lightest empty node: node k gets group k), no
    replica to spare, so slot p holds expert p. Node 1 must hold experts 2, 3 and node 3
    experts 6, 7 (an offset applied the wrong way swaps them)."""
    weight = np.array([[8, 7, 6, 5, 4, 3, 2, 1]], dtype=float)
    phy2log, log2phy, logcnt = rebalance_experts(weight, 8, 4, 4, 4)
    assert phy2log.tolist() == [list(range(8))]
    assert log2phy[0, :, 0].tolist() == list(range(8))
    assert logcnt.tolist() == [[1] * 8]


def test_replica_counts_are_integers() -> None:
    """Loads (3, 1) over 3 slots: the spare slot copies expert 0 (3 > 1): phy2log (0, 1, 0),
    replica ranks (0, 0, 1), counts (2, 1) as int64 (counts index and size arrays)."""
    phy2log, rank, logcnt = replicate_experts(np.array([[3.0, 1.0]]), 3)
    assert phy2log.tolist() == [[0, 1, 0]]
    assert rank.tolist() == [[0, 0, 1]]
    assert logcnt.tolist() == [[2, 1]]
    assert logcnt.dtype == np.int64
    _, _, counts = rebalance_experts(np.array([[3.0, 1.0]]), 4, 1, 1, 2)
    assert counts.dtype == np.int64


WINDOW = np.array([[2, 1], [2, 1], [2, 1], [2, 1], [1, 1], [3, 1]])


def test_fit_placement_without_moves_falls_back_to_eplb_and_weighs_batches() -> None:
    """6 batches of 2 experts on 2 GPUs (one slot each): EPLB puts one expert per GPU, so a
    batch (a, b) has balancedness (a + b) / 2 / max(a, b). Folds of 2 batches, the last held
    out. No move tried: EPLB's placement with the fixed reason. Fit batches (2, 1): 0.75;
    held-out (1, 1) and (3, 1): 1 and 2/3, mean 5/6, or (1 + 3 x 2/3) / 4 = 0.75 when the
    last batch weighs 3."""
    got = fit_placement(WINDOW, 2, 2, max_moves=0)
    assert got.fallback == "no move gained on both the fit and the held-out batches"
    assert got.phy2log.tolist() == got.eplb_phy2log.tolist() == [0, 1]
    assert (got.moves_tried, got.num_fit_batches, got.num_validation_batches) == (0, 4, 2)
    assert got.fit_eplb_balancedness == pytest.approx(0.75)
    assert got.validated_eplb_balancedness == pytest.approx(5 / 6)
    weighted = fit_placement(WINDOW, 2, 2, max_moves=0, weights=np.array([1, 1, 1, 1, 1, 3.0]))
    assert weighted.validated_eplb_balancedness == pytest.approx(0.75)


def test_aligning_a_hierarchical_placement_keeps_node_membership() -> None:
    """8 experts in 4 groups of 2 (group loads 10, 1, 9, 2), 2 nodes of 1 GPU. Groups go
    heaviest first to the lighter node: 0 to node 0, 2 to node 1, 3 to node 1 (9 < 10), 1 to
    node 0 (10 < 11): node 0 holds experts 0-3, node 1 experts 4-7. The old placement had the
    halves the other way round; aligning may only reorder within a node, so the new placement
    stays [0..7] (relabelling the GPUs across nodes would have moved nothing)."""
    weight = np.array([[5.0, 5.0, 0.5, 0.5, 4.5, 4.5, 1.0, 1.0]])
    old = np.array([[4, 5, 6, 7, 0, 1, 2, 3]])
    phy2log, _, logcnt = MoeschedEplbPolicy.rebalance_experts(weight, 8, 4, 2, 2, old)
    assert phy2log.tolist() == [list(range(8))]
    assert logcnt.tolist() == [[1] * 8]
