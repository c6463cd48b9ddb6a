"""The drop-in calls: EPLB's rebalance_experts, slot alignment, the window fit, vLLM's policy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwmodel.routing_traces import load_esft, traces_dir
from solvers.eplb import MoeschedEplbPolicy, align_slots, rebalance_experts, rebalance_window
from solvers.eplb.model import gpu_loads
from solvers.eplb.runtime import min_move_placement, moved_replicas

README_W = [
    [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
    [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
]
README_PHY2LOG = [
    [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
    [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
]


def test_rebalance_experts_reproduces_eplb_readme_with_numpy_and_lists() -> None:
    for weight in (README_W, np.asarray(README_W)):
        phy2log, log2phy, logcnt = rebalance_experts(weight, 16, 4, 2, 8)
        assert phy2log.tolist() == README_PHY2LOG
        assert logcnt.sum(1).tolist() == [16, 16]
        assert log2phy.shape == (2, 12, int(logcnt.max()))
        for layer in range(2):
            for e in range(12):
                slots = [p for p in log2phy[layer, e] if p >= 0]
                assert len(slots) == logcnt[layer, e]
                assert all(phy2log[layer, p] == e for p in slots)


def test_rebalance_experts_with_torch_tensors_returns_tensors() -> None:
    torch = pytest.importorskip("torch")
    phy2log, _log2phy, _logcnt = rebalance_experts(torch.tensor(README_W), 16, 4, 2, 8)
    assert isinstance(phy2log, torch.Tensor) and phy2log.dtype == torch.int64
    assert phy2log.tolist() == README_PHY2LOG


def test_align_slots_undoes_a_gpu_relabelling_and_slot_shuffle() -> None:
    old = np.array([0, 1, 2, 3, 4, 0])  # GPU 0: {0, 1}, GPU 1: {2, 3}, GPU 2: {4, 0}
    new = np.array([0, 4, 1, 0, 3, 2])  # the same GPUs, relabelled and reordered
    aligned = align_slots(old, new, 3)
    assert aligned.tolist() == old.tolist()
    assert moved_replicas(old, new) == 5 and moved_replicas(old, aligned) == 0


def test_align_slots_counts_only_replicas_that_must_move() -> None:
    old = np.array([0, 1, 2, 3])
    new = np.array([3, 0, 1, 1])  # new GPUs {3, 0} and {1, 1}
    aligned = align_slots(old, new, 2)
    # old {0, 1} takes new {1, 1} and old {2, 3} takes new {3, 0}: one kept slot per GPU,
    # the other keeping is worse (old {0, 1} with {3, 0} leaves {2, 3} with {1, 1}: 1 kept).
    assert aligned.tolist() == [1, 1, 0, 3]
    assert moved_replicas(old, aligned) == 2
    assert sorted(aligned.tolist()) == sorted(new.tolist())


@given(
    st.integers(2, 4).flatmap(
        lambda g: st.tuples(
            st.just(g),
            st.lists(st.integers(0, 5), min_size=3 * g, max_size=3 * g),
            st.lists(st.integers(0, 5), min_size=3 * g, max_size=3 * g),
        )
    )
)
def test_alignment_keeps_gpu_contents_and_never_moves_more(args: tuple) -> None:
    g, old_l, new_l = args
    old, new = np.array(old_l), np.array(new_l)
    aligned = align_slots(old, new, g)
    per = len(old) // g
    got = sorted(tuple(sorted(aligned[i * per : (i + 1) * per])) for i in range(g))
    want = sorted(tuple(sorted(new[i * per : (i + 1) * per])) for i in range(g))
    assert got == want  # the same GPU multisets, so the same loads and routing
    assert moved_replicas(old, aligned) <= moved_replicas(old, new)


def test_min_move_placement_keeps_what_it_can_and_balances() -> None:
    weight = np.array([10.0, 8, 6, 4, 2, 2])
    current = np.array([0, 1, 0, 2, 3, 4, 5, 3])  # 4 GPUs x 2 slots
    target = np.array([0, 5, 1, 4, 0, 3, 2, 1])  # counts: e0 x2, e1 x2, others x1
    out = min_move_placement(current, target, weight, 4)
    assert np.bincount(out, minlength=6).tolist() == np.bincount(target, minlength=6).tolist()
    loads = gpu_loads(weight[None], out[None], 4)[0]
    assert loads.max() <= gpu_loads(weight[None], target[None], 4)[0].max() + 1e-9
    assert moved_replicas(current, out) < moved_replicas(current, target)
    # the same placement: nothing moves
    assert moved_replicas(target, min_move_placement(target, target, weight, 4)) == 0


@pytest.fixture(scope="module")
def law_window() -> np.ndarray:
    trace = load_esft(traces_dir() / "esft_vanilla_lite_law_routing.jsonl.gz")
    return np.stack([trace.histogram(slice(i * 64, (i + 1) * 64))[:6] for i in range(48)])


def test_rebalance_window_beats_eplb_and_moves_few_replicas(law_window: np.ndarray) -> None:
    previous, _, _ = rebalance_experts(law_window[:16].sum(0), 72, 1, 1, 8)
    out = rebalance_window(law_window[16:], previous, 8)
    assert out.phy2log.shape == (6, 72)
    assert (out.balancedness >= out.balancedness_eplb - 1e-12).all()
    assert out.balancedness_current is not None
    assert out.moved_replicas == moved_replicas(previous, out.phy2log)
    assert out.moved_replicas * 2 <= out.moved_replicas_unaligned
    for layer in range(6):
        assert set(out.phy2log[layer].tolist()) == set(range(64))
    # a budget is a budget
    capped = rebalance_window(law_window[16:], previous, 8, max_moved_replicas=20)
    assert capped.moved_replicas <= 20
    assert any("max_moved_replicas" in w for w in capped.why)


def test_vllm_policy_signature_and_alignment() -> None:
    w = np.asarray(README_W)
    phy2log, _log2phy, logcnt = MoeschedEplbPolicy.rebalance_experts(w, 16, 4, 2, 8)
    assert phy2log.tolist() == README_PHY2LOG
    # the same answer, with the runtime's current map: nothing needs to move
    shuffled = np.asarray(README_PHY2LOG)[:, [2, 3, 0, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15]]
    again, _, cnt = MoeschedEplbPolicy.rebalance_experts(w, 16, 4, 2, 8, shuffled)
    assert moved_replicas(shuffled, again) == 0
    assert cnt.tolist() == logcnt.tolist()
