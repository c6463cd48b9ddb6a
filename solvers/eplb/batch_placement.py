"""Replica placement for per-batch balance: choose which experts to replicate, and where, so
that the *routed* balance (``routing.route_batch`` per batch) is best over a window of
recent batch histograms, rather than the balance of their sum.

Start: the better of EPLB on the window's mean histogram and EPLB on each expert's 90th
percentile batch load (experts that spike get replicas). Then a local search of ``moves``
candidate moves (a deterministic budget; the wall-clock ``deadline_s`` only caps it, or alone
bounds it when no move count is given): move a redundant replica to another expert, or swap
two slots between GPUs, and keep a move when the mean routed max load over a sample of the
window's batches falls. No expert ever gets two replicas on one GPU through a move (they
cannot help routing).

Shapes: ``window [num_batches, num_logical]`` tokens; result ``phy2log [num_replicas]``.
"""

from __future__ import annotations

import time

import numpy as np

from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.routing import route_batch


def routed_max_load(phy2log: np.ndarray, num_gpus: int, batches: np.ndarray) -> float:
    """Mean over batches of the routed largest GPU load."""
    return float(np.mean([route_batch(phy2log, num_gpus, b).max_load for b in batches]))


def routed_balancedness(phy2log: np.ndarray, num_gpus: int, batches: np.ndarray) -> float:
    """Mean over batches of mean / max GPU load after routing."""
    out = []
    for b in batches:
        r = route_batch(phy2log, num_gpus, b)
        out.append(r.gpu_loads.mean() / r.max_load if r.max_load else 1.0)
    return float(np.mean(out))


def place_for_batches(
    window: np.ndarray,
    num_replicas: int,
    num_gpus: int,
    deadline_s: float = 2.0,
    sample: int = 60,
    seed: int = 0,
    moves: int | None = None,
) -> np.ndarray:
    """A placement ``phy2log [num_replicas]`` fitted to the window's per-batch routing, after
    ``moves`` candidate moves (None: as many as ``deadline_s`` seconds allow)."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    window = np.asarray(window, dtype=np.int64)
    num_log = window.shape[1]
    idx = rng.choice(len(window), size=min(sample, len(window)), replace=False)
    batches = window[idx]
    starts = []
    for weight in (window.mean(axis=0), np.percentile(window, 90, axis=0)):
        p2l, _, _ = rebalance_experts(weight[None, :] + 1e-9, num_replicas, 1, 1, num_gpus)
        starts.append(p2l[0])
    scores = [routed_max_load(p, num_gpus, batches) for p in starts]
    best = starts[int(np.argmin(scores))].copy()
    best_score = min(scores)
    per = num_replicas // num_gpus
    gpu_of = np.arange(num_replicas) // per
    peak = np.percentile(window, 90, axis=0) + 1e-9
    tried = 0
    while time.perf_counter() - started < deadline_s and (moves is None or tried < moves):
        tried += 1
        cand = best.copy()
        counts = np.bincount(cand, minlength=num_log)
        if rng.random() < 0.5 and (counts > 1).any():
            # Move a redundant replica to the expert with the most peak load per replica.
            slot = int(rng.choice(np.flatnonzero(counts[cand] > 1)))
            g = gpu_of[slot]
            here = set(cand[gpu_of == g].tolist())
            ranked = np.argsort(-(peak / counts), kind="stable")
            choices = [int(e) for e in ranked[:8] if int(e) not in here]
            if not choices:
                continue
            cand[slot] = choices[int(rng.integers(len(choices)))]
        else:
            a, b = rng.choice(num_replicas, size=2, replace=False)
            if gpu_of[a] == gpu_of[b] or cand[a] == cand[b]:
                continue
            ea, eb = cand[a], cand[b]
            if eb in cand[gpu_of == gpu_of[a]] or ea in cand[gpu_of == gpu_of[b]]:
                continue
            cand[a], cand[b] = eb, ea
        score = routed_max_load(cand, num_gpus, batches)
        if score < best_score:
            best, best_score = cand, score
    return best
