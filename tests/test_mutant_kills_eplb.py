"""Exact cases for EPLB behaviour that surviving mutants of ``solvers/eplb/`` showed no test
pinned (``python -m tests.mutants --groups eplb``; docs/mutants.json)."""

from __future__ import annotations

import numpy as np
import pytest

from solvers.eplb.batch_placement import batch_balancedness
from solvers.eplb.deepseek import rebalance_experts, replicate_experts
from solvers.eplb.routing import Router
from solvers.eplb.runtime import min_move_placement


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
