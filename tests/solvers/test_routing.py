"""Per-batch routing over replicas: hand-computed optima, the exact max-flow reference against
an LP solved in the test, the fast router against the max-flow on 600 cases, and per-batch
placement on the real traces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from solvers.eplb.routing import Router, even_split_loads, route_batch, route_batch_maxflow


def test_hand_computed_two_gpus() -> None:
    """Expert 0 (10 tokens) on both GPUs, expert 1 (6) only on GPU 1: the optimum puts 8 of
    expert 0 on GPU 0 and 2 on GPU 1 -> loads 8 and 8 (even split would give 5 and 11)."""
    p2l = np.array([0, 0, 0, 1])  # GPU 0: slots 0, 1; GPU 1: slots 2, 3
    r = route_batch(p2l, 2, np.array([10, 6]))
    assert r.max_load == 8 and r.gpu_loads.tolist() == [8, 8]
    assert r.tokens_per_slot.tolist() == [4, 4, 2, 6]
    assert even_split_loads(p2l, 2, np.array([10.0, 6.0])).tolist() == [20 / 3, 10 / 3 + 6]


def test_no_replicas_means_no_choice() -> None:
    r = route_batch(np.array([0, 1, 2, 3]), 2, np.array([5, 1, 2, 2]))
    assert r.gpu_loads.tolist() == [6, 4] and r.num_steps == 0


def test_hand_computed_chain_needs_an_augmenting_path() -> None:
    """GPU 0 holds expert 0 (6 tokens, single) and a replica of expert 1 (6); expert 1's other
    replica shares GPU 1 with a replica of expert 2 (7), whose other one is on GPU 2.
    Water-filling (heaviest first) gives expert 2 4 + 3 on GPUs 1, 2, then expert 1 2 + 4 on
    GPUs 0, 1: loads 8, 8, 3. The optimum is ceil(19 / 3) = 7, reached only by moving tokens
    along GPU 1 -> 2 (1 token of expert 2), then GPU 0 -> 1 -> 2 (1 of expert 1, 1 of
    expert 2): loads 7, 7, 5."""
    p2l = np.array([0, 1, 1, 2, 2, 3])  # GPU 0: 0, 1; GPU 1: 1, 2; GPU 2: 2, 3 (3 idle)
    r = Router(p2l, 3, 4).route(np.array([6, 6, 7, 0]))
    assert r.gpu_loads.tolist() == [7, 7, 5] and r.max_load == 7
    assert r.tokens_per_slot.tolist() == [6, 1, 5, 2, 5, 0]
    assert r.num_steps == 2


def lp_optimum(p2l: np.ndarray, num_gpus: int, loads: np.ndarray) -> float:
    """min T s.t. each expert's tokens go to GPUs holding it, every GPU load <= T (LP)."""
    per = len(p2l) // num_gpus
    pairs = sorted({(int(e), s // per) for s, e in enumerate(p2l)})
    n = len(pairs)
    c = np.zeros(n + 1)
    c[-1] = 1
    a_eq = np.zeros((len(loads), n + 1))
    for j, (e, _) in enumerate(pairs):
        a_eq[e, j] = 1
    a_ub = np.zeros((num_gpus, n + 1))
    for j, (_, g) in enumerate(pairs):
        a_ub[g, j] = 1
    a_ub[:, -1] = -1
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=np.zeros(num_gpus),
        A_eq=a_eq,
        b_eq=loads,
        bounds=[(0, None)] * (n + 1),
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, int, np.ndarray]:
    num_gpus = draw(st.integers(1, 6))
    per = draw(st.integers(1, 4))
    num_log = draw(st.integers(1, num_gpus * per))
    slots = list(range(num_log)) + draw(
        st.lists(
            st.integers(0, num_log - 1),
            min_size=num_gpus * per - num_log,
            max_size=num_gpus * per - num_log,
        )
    )
    p2l = np.array(draw(st.permutations(slots)))
    loads = np.array(draw(st.lists(st.integers(0, 300), min_size=num_log, max_size=num_log)))
    return p2l, num_gpus, loads


@settings(max_examples=100, deadline=None)
@given(instances())
def test_maxflow_reference_properties(case: tuple[np.ndarray, int, np.ndarray]) -> None:
    """The exact reference: conserves tokens, within one token of the LP optimum."""
    p2l, num_gpus, loads = case
    r = route_batch_maxflow(p2l, num_gpus, loads)
    # Token conservation, and replicas only receive their own expert's tokens.
    got = np.bincount(p2l, weights=r.tokens_per_slot, minlength=len(loads))
    assert got.tolist() == loads.tolist()
    assert (r.tokens_per_slot >= 0).all()
    assert r.gpu_loads.sum() == loads.sum() and r.gpu_loads.max() == r.max_load
    # Within one token of the LP optimum, and never above the even split.
    lp = lp_optimum(p2l, num_gpus, loads)
    assert lp - 1e-6 <= r.max_load < lp + 1 + 1e-6
    assert (
        r.max_load
        <= np.ceil(even_split_loads(p2l, num_gpus, loads.astype(float)).max() - 1e-9) + 1e-9
    )


@st.composite
def large_instances(draw: st.DrawFn) -> tuple[np.ndarray, int, np.ndarray]:
    """Up to 12 GPUs and 8 slots each; hypothesis draws the shape, the load style and a seed
    from which numpy draws the slots (every expert at least once) and the loads (drawing
    hundreds of values one by one through hypothesis would dominate the test's time)."""
    num_gpus = draw(st.integers(2, 12))
    per = draw(st.integers(1, 8))
    num_log = draw(st.integers(1, num_gpus * per))
    style = draw(st.sampled_from(["flat", "spiky", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    extra = rng.integers(0, num_log, num_gpus * per - num_log)
    p2l = rng.permutation(np.concatenate([np.arange(num_log), extra]))
    if style == "flat":
        loads = rng.integers(0, 300, num_log)
    elif style == "spiky":
        loads = rng.integers(0, 40, num_log) * rng.choice([1, 60], num_log, p=[0.8, 0.2])
    else:
        loads = rng.integers(0, 3, num_log) * rng.integers(0, 2, num_log)
    return p2l, num_gpus, loads


@settings(max_examples=600, deadline=None)
@given(st.one_of(instances(), large_instances()))
def test_fast_router_matches_maxflow(case: tuple[np.ndarray, int, np.ndarray]) -> None:
    """The fast router reaches the max-flow optimum (the issue asks for within one token; the
    router proves optimality, so equality is required), conserves every expert's tokens, and
    its three entry points agree."""
    p2l, num_gpus, loads = case
    fast = route_batch(p2l, num_gpus, loads)
    exact = route_batch_maxflow(p2l, num_gpus, loads)
    assert fast.max_load == exact.max_load
    assert np.bincount(p2l, weights=fast.tokens_per_slot, minlength=len(loads)).tolist() == (
        loads.tolist()
    )
    assert (fast.tokens_per_slot >= 0).all()
    assert fast.tokens_per_slot.reshape(num_gpus, -1).sum(axis=1).tolist() == (
        fast.gpu_loads.tolist()
    )
    router = Router(np.stack([p2l, p2l]), num_gpus, len(loads))
    both = router.route_layers(np.stack([loads, loads]))
    assert both.max_load.tolist() == [exact.max_load] * 2
    assert both.tokens_per_slot[1].tolist() == fast.tokens_per_slot.tolist()
    many = Router(p2l, num_gpus, len(loads)).route_batches(np.stack([loads, loads]))
    assert many.tolist() == [fast.gpu_loads.tolist()] * 2


def test_router_rejects_bad_loads() -> None:
    router = Router(np.array([0, 1, 0, 2]), 2, 4)  # expert 3 has no replica
    with pytest.raises(ValueError, match="no replica"):
        router.route(np.array([1, 1, 1, 5]))
    with pytest.raises(ValueError, match=">= 0"):
        router.route(np.array([1, -1, 1, 0]))
    with pytest.raises(ValueError, match="experts"):
        router.route(np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="multiple"):
        Router(np.array([0, 1, 2]), 2)
    assert router.route(np.array([4, 1, 1, 0])).gpu_loads.tolist() == [3, 3]


def test_batch_placement_beats_eplb_routing_on_held_out_batches() -> None:
    """ESFT intent, one layer: fitted on the first half's batches of 64 tokens, scored on the
    second half's. Routed balancedness over EPLB's placement vs over the fitted placement."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir
    from solvers.eplb.batch_placement import place_for_batches, routed_balancedness
    from solvers.eplb.deepseek import rebalance_experts

    t = load_esft(traces_dir() / ESFT_FILES["intent"])
    half, layer, b = t.num_tokens // 2, 9, 64
    fit = np.stack([t.histogram(slice(s, s + b))[layer] for s in range(0, half - b, b)])
    test = np.stack([t.histogram(slice(s, s + b))[layer] for s in range(half, t.num_tokens - b, b)])
    eplb, _, _ = rebalance_experts(fit.sum(0)[None], 72, 1, 1, 8)
    ours = place_for_batches(fit, 72, 8, deadline_s=3.0)
    assert sorted(set(ours.tolist())) == list(range(64))  # every expert keeps a replica
    assert routed_balancedness(ours, 8, test) > routed_balancedness(eplb[0], 8, test)


@pytest.mark.parametrize("bad", [{"num_gpus": 3}, {"loads": [1] * 12 + [5]}])
def test_route_endpoint_errors(bad: dict[str, object]) -> None:
    from fastapi.testclient import TestClient

    from service.examples import route_example
    from service.main import create_app

    r = TestClient(create_app()).post("/v1/route", json=route_example() | bad)
    assert r.status_code == 422
