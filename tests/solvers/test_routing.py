"""Per-batch routing over replicas: hand-computed optima, the exact max-flow reference against
an LP solved in the test, the fast router against the max-flow on 600 cases, and per-batch
placement on the real traces."""

from __future__ import annotations

from pathlib import Path

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


def _intent_layer(layer: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ESFT intent: the first half's token histogram and batches, the second half's batches."""
    from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir

    t = load_esft(traces_dir() / ESFT_FILES["intent"])
    half = t.num_tokens // 2
    first = t.histogram(slice(0, half))[layer]
    fit = np.stack([t.histogram(slice(s, s + size))[layer] for s in range(0, half - size, size)])
    test = np.stack(
        [t.histogram(slice(s, s + size))[layer] for s in range(half, t.num_tokens - size, size)]
    )
    return first, fit, test


def test_batch_placement_beats_eplb_routing_on_held_out_batches() -> None:
    """ESFT intent, layer 9, +8 slots: fitted on the first half's batches of 64 tokens (60
    moves), scored on the second half's: above EPLB's placement with the same router, and the
    account is consistent (validated figures recomputed on the last fold)."""
    from solvers.eplb.batch_placement import fit_placement, routed_balancedness

    first, fit, test = _intent_layer(9, 64)
    res = fit_placement(fit, 72, 8, max_moves=60, mean_load=first)
    assert res.fallback is None and res.moves_adopted > 0
    assert sorted(set(res.phy2log.tolist())) == list(range(64))  # every expert keeps a replica
    assert routed_balancedness(res.phy2log, 8, test) > routed_balancedness(
        res.eplb_phy2log, 8, test
    )
    assert res.validated_balancedness > res.validated_eplb_balancedness
    held = fit[-res.num_validation_batches :]
    assert res.validated_balancedness == pytest.approx(routed_balancedness(res.phy2log, 8, held))
    assert res.size_mix == {"512 tokens": 1.0}  # 64 tokens x top-6 = 384 routed: class 512


def test_batch_placement_falls_back_to_eplb_and_says_why() -> None:
    """A window too short to hold out a fold, and a window where every batch is the same flat
    load (no move can gain on the held-out fold): EPLB's placement, with the reason."""
    from solvers.eplb.batch_placement import eplb_placement, fit_placement

    short = fit_placement(np.full((4, 8), 3), 12, 4)
    assert short.fallback is not None and "too short" in short.fallback
    flat = np.tile(np.array([5, 5, 5, 5, 5, 5, 5, 5]), (12, 1))
    res = fit_placement(flat, 12, 4, max_moves=40)
    assert res.fallback is not None and res.moves_adopted == 0
    assert res.phy2log.tolist() == eplb_placement(flat, 12, 4).tolist()


def test_batch_placement_falls_back_when_its_gain_does_not_hold_over_time() -> None:
    """FLAME-MoE layer 3, +8 slots, batches of 64 tokens, fitted on the first quarter of the
    trace (window batches every 9 tokens, as ``bench balance`` builds them) and scored on the
    second quarter. The search's placement gains on every fold (about +0.015, +0.027, +0.058:
    the held-out fold passes), but the gain grows from fold to fold by more than its smallest
    value: the stability check (``drift_k=1``, the default) returns EPLB. Without it
    (``drift_k=0``) the placement is adopted and loses to EPLB on the next quarter by more
    than 0.002 (measured -0.022)."""
    from hwmodel.routing_traces import FLAME_FILE, load_flame, traces_dir
    from solvers.eplb.batch_placement import fit_placement, routed_balancedness

    t = load_flame(traces_dir() / FLAME_FILE)
    q = t.num_tokens // 4
    window = np.stack([t.histogram(slice(s, s + 64))[3] for s in range(0, q - 64 + 1, 9)])
    later = np.stack([t.histogram(slice(s, s + 64))[3] for s in range(q, 2 * q - 64 + 1, 64)])
    mean = t.histogram(slice(0, q))[3]
    kept = fit_placement(window, 72, 8, max_moves=200, mean_load=mean)
    assert kept.fallback is not None and "does not hold over time" in kept.fallback
    assert kept.phy2log.tolist() == kept.eplb_phy2log.tolist()
    assert min(kept.fold_gains) > 0 and kept.validated_balancedness == pytest.approx(
        kept.validated_eplb_balancedness
    )
    loose = fit_placement(window, 72, 8, max_moves=200, mean_load=mean, drift_k=0.0)
    assert loose.fallback is None and loose.fold_gains == kept.fold_gains
    gain = routed_balancedness(loose.phy2log, 8, later) - routed_balancedness(
        loose.eplb_phy2log, 8, later
    )
    assert gain < -0.002


def test_batch_placement_falls_back_when_few_window_batches_support_its_gain() -> None:
    """FLAME-MoE layer 5, +32 slots, batches of 16 tokens, fitted on the first half of the
    trace as ``bench balance`` does. The search moves one redundant replica between two experts
    of about the same mean load; every fold gains (so the held-out and stability checks pass),
    but only 8 of the window's 64 batches change, and the paired gain over EPLB on the whole
    window is below two standard errors: ``window_z=2`` (the default) returns EPLB. Without it
    (``window_z=0``) the placement loses to EPLB on the second half by more than 0.002
    (measured -0.010 on consecutive batches)."""
    from hwmodel.routing_traces import FLAME_FILE, load_flame, traces_dir
    from solvers.eplb.batch_placement import fit_placement, routed_balancedness

    t = load_flame(traces_dir() / FLAME_FILE)
    half = t.num_tokens // 2
    window = np.stack([t.histogram(slice(s, s + 16))[5] for s in range(0, half - 16 + 1, 16)])
    later = np.stack(
        [t.histogram(slice(s, s + 16))[5] for s in range(half, t.num_tokens - 16 + 1, 16)]
    )
    mean = t.histogram(slice(0, half))[5]
    kept = fit_placement(window, 96, 8, max_moves=200, mean_load=mean)
    assert kept.fallback is not None and "too few batches" in kept.fallback
    assert kept.phy2log.tolist() == kept.eplb_phy2log.tolist()
    assert min(kept.fold_gains) > 0
    loose = fit_placement(window, 96, 8, max_moves=200, mean_load=mean, window_z=0.0)
    assert loose.fallback is None and loose.replicas_moved == 1
    gain = routed_balancedness(loose.phy2log, 8, later) - routed_balancedness(
        loose.eplb_phy2log, 8, later
    )
    assert gain < -0.002


def test_batch_placement_is_deterministic_across_processes() -> None:
    """The search runs on a move budget, never a clock: two interpreters with different hash
    seeds (one of them beside a busy thread) return the same placement and account."""
    import os
    import subprocess
    import sys

    code = (
        "import threading, numpy as np\n"
        "from tests.solvers.test_routing import _intent_layer\n"
        "from solvers.eplb.batch_placement import fit_placement\n"
        "import sys\n"
        "if sys.argv[1] == 'busy':\n"
        "    burn = lambda: sum(i * i for i in range(10**9))\n"
        "    threading.Thread(target=burn, daemon=True).start()\n"
        "first, fit, _ = _intent_layer(16, 64)\n"
        "r = fit_placement(fit, 72, 8, max_moves=30, mean_load=first)\n"
        "print(r.phy2log.tolist(), r.moves_adopted, r.validated_balancedness, r.fallback)\n"
    )
    outs = []
    for seed, mode in (("0", "idle"), ("4242", "busy")):
        env = os.environ | {"PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        outs.append(run.stdout)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("bad", [{"num_gpus": 3}, {"loads": [1] * 12 + [5]}])
def test_route_endpoint_errors(bad: dict[str, object]) -> None:
    from fastapi.testclient import TestClient

    from service.examples import route_example
    from service.main import create_app

    r = TestClient(create_app()).post("/v1/route", json=route_example() | bad)
    assert r.status_code == 422


def test_bench_trace_option_names_bad_input(tmp_path: Path) -> None:
    """`bench NAME --trace PATH`: a missing file, or a benchmark that runs on its own traces
    only, exit 2 with the reason (the balance run itself is a benchmark, not a test)."""
    from typer.testing import CliRunner

    from service.cli import app

    out = str(tmp_path / "r.json")
    missing = CliRunner().invoke(
        app, ["bench", "balance", "--json", out, "--trace", str(tmp_path / "none.json")]
    )
    assert missing.exit_code == 2 and "not a file" in missing.output
    trace = tmp_path / "t.json"
    trace.write_text("{}")
    own = CliRunner().invoke(app, ["bench", "eplb", "--json", out, "--trace", str(trace)])
    assert own.exit_code == 2 and "own traces" in own.output
    bad = CliRunner().invoke(app, ["bench", "balance", "--json", out, "--trace", str(trace)])
    assert bad.exit_code == 2 and "error" in bad.output
