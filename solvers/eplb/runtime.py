"""moesched as a drop-in for runtimes' load balancers.

* ``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)``: DeepSeek
  EPLB's call, same semantics and return tuple ``(phy2log [L, R], log2phy [L, E, max_count],
  logcnt [L, E])``; numpy in, numpy out; torch in, torch out (when torch is installed).
* ``align_slots(old, new, num_gpus)``: relabel the new placement's GPUs and order each GPU's
  slots so that as many slots as possible keep their expert (an assignment problem over GPUs,
  ``scipy.optimize.linear_sum_assignment`` on the replica overlap); loads are unchanged.
* ``rebalance_window(load_window, current_phy2log, num_gpus, ...)``: fit a placement to the
  per-batch routing over a window of samples (``batch_placement.place_for_batches``), never
  worse than EPLB on the same window, aligned with the current placement, and within a budget
  of moved replicas.
* ``MoeschedEplbPolicy``: a class with vLLM's ``rebalance_experts`` policy signature,
  importable without vLLM.

Shapes: ``load_window [num_samples, num_layers, num_logical]`` tokens; slots are GPU-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solvers.eplb import deepseek
from solvers.eplb.batch_placement import batch_balancedness, place_for_batches


def _to_numpy(x: Any) -> tuple[np.ndarray, bool]:
    """(array, came from torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return np.asarray(x.detach().cpu().numpy()), True
    return np.asarray(x), False


def _like(arrays: tuple[np.ndarray, ...], torch_out: bool) -> tuple[Any, ...]:
    if not torch_out:
        return arrays
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def rebalance_experts(
    weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[Any, Any, Any]:
    """DeepSeek EPLB's ``rebalance_experts``: hierarchical when ``num_groups % num_nodes == 0``,
    global otherwise.

    Args:
        weight: ``[num_layers, num_logical]`` load statistics (numpy array, nested list, or a
            torch tensor).
    Returns:
        ``phy2log [L, num_replicas]``, ``log2phy [L, num_logical, max_count]`` (-1 padded),
        ``logcnt [L, num_logical]``, int64; torch tensors when ``weight`` was one.
    """
    w, from_torch = _to_numpy(weight)
    out = deepseek.rebalance_experts(
        w.astype(np.float64), num_replicas, num_groups, num_nodes, num_gpus
    )
    return _like(out, from_torch)


def moved_replicas(old: np.ndarray, new: np.ndarray) -> int:
    """Slots whose logical expert changes (each needs its weights copied in)."""
    return int((np.asarray(old) != np.asarray(new)).sum())


def align_slots(old: np.ndarray, new: np.ndarray, num_gpus: int, num_nodes: int = 1) -> np.ndarray:
    """The new placement ``[R]`` (or ``[L, R]``) with its GPUs relabelled and each GPU's slots
    ordered so that the fewest slots change expert against ``old``.

    GPU contents are kept as multisets, so per-GPU loads and routing are unchanged. GPUs are
    matched to maximize the replicas they already hold (``linear_sum_assignment``); with
    several nodes, only GPUs of the same node are matched (node membership stays).
    """
    from scipy.optimize import linear_sum_assignment  # imported on use: it is slow to load

    old = np.asarray(old, dtype=np.int64)
    new = np.asarray(new, dtype=np.int64)
    if new.ndim == 2:
        return np.stack(
            [align_slots(o, n, num_gpus, num_nodes) for o, n in zip(old, new, strict=True)]
        )
    num_slots = len(new)
    per_gpu = num_slots // num_gpus
    num_log = int(max(old.max(), new.max())) + 1
    old_gpu = old.reshape(num_gpus, per_gpu)
    new_gpu = new.reshape(num_gpus, per_gpu)
    old_cnt = np.zeros((num_gpus, num_log), dtype=np.int64)
    new_cnt = np.zeros((num_gpus, num_log), dtype=np.int64)
    np.add.at(old_cnt, (np.repeat(np.arange(num_gpus), per_gpu), old), 1)
    np.add.at(new_cnt, (np.repeat(np.arange(num_gpus), per_gpu), new), 1)
    overlap = np.minimum(old_cnt[:, None, :], new_cnt[None, :, :]).sum(-1)  # [old g, new h]
    match = np.empty(num_gpus, dtype=np.int64)  # old GPU g takes new GPU match[g]
    gpus_per_node = num_gpus // max(num_nodes, 1)
    for node in range(max(num_nodes, 1)):
        lo, hi = node * gpus_per_node, (node + 1) * gpus_per_node
        rows, cols = linear_sum_assignment(-overlap[lo:hi, lo:hi])
        match[lo + rows] = lo + cols
    out = np.empty_like(new)
    for g in range(num_gpus):
        want = collections_counter(new_gpu[match[g]])
        slots = old_gpu[g].copy()
        keep = np.zeros(per_gpu, dtype=bool)
        for i, e in enumerate(slots):
            if want.get(int(e), 0) > 0:
                want[int(e)] -= 1
                keep[i] = True
        rest = sorted(e for e, n in want.items() for _ in range(n))
        slots[~keep] = rest
        out[g * per_gpu : (g + 1) * per_gpu] = slots
    return out


def min_move_placement(
    current: np.ndarray, target: np.ndarray, weight: np.ndarray, num_gpus: int
) -> np.ndarray:
    """A placement ``[R]`` with ``target``'s replica counts that keeps as many of
    ``current``'s slots as it can, then swaps slots between GPUs (two moves per swap) until
    its largest even-split GPU load is no worse than ``target``'s.

    Kept first: every slot whose expert still needs a replica. The replicas still missing go
    heaviest first to the least loaded GPU with a free slot (one not holding that expert when
    there is one). Loads are ``weight [E]`` split evenly over the expert's replicas.
    """
    current = np.asarray(current, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    num_slots = len(current)
    per_gpu = num_slots // num_gpus
    num_log = len(weight)
    need = np.bincount(target, minlength=num_log)
    per_rep = np.asarray(weight, dtype=np.float64) / np.maximum(need, 1)
    gpu_of = np.arange(num_slots) // per_gpu
    slots = np.full(num_slots, -1, dtype=np.int64)
    have = np.zeros(num_log, dtype=np.int64)
    for p in np.argsort(-per_rep[current], kind="stable"):
        e = int(current[p])
        if have[e] < need[e]:
            slots[p] = e
            have[e] += 1
    missing = [e for e in np.argsort(-per_rep, kind="stable") for _ in range(need[e] - have[e])]
    load = np.bincount(gpu_of[slots >= 0], weights=per_rep[slots[slots >= 0]], minlength=num_gpus)
    for e in missing:
        free = np.flatnonzero(slots < 0)
        holds = {int(g) for g in gpu_of[slots == e]}
        fresh = [p for p in free if int(gpu_of[p]) not in holds] or list(free)
        p = min(fresh, key=lambda q: (load[gpu_of[q]], q))
        slots[p] = e
        load[gpu_of[p]] += per_rep[e]
    goal = np.bincount(gpu_of, weights=per_rep[target], minlength=num_gpus).max()
    for _ in range(num_slots):
        g = int(np.argmax(load))
        if load[g] <= goal * (1 + 1e-9):
            break
        here = np.flatnonzero(gpu_of == g)
        there = np.flatnonzero(gpu_of != g)
        delta = per_rep[slots[here]][:, None] - per_rep[slots[there]][None, :]  # [S, R - S]
        after = np.maximum(load[g] - delta, load[gpu_of[there]][None, :] + delta)
        # No swap may put a second replica of an expert on one GPU (it cannot help routing).
        on_gpu = np.zeros((num_log, num_gpus), dtype=bool)
        on_gpu[slots, gpu_of] = True
        clash = on_gpu[slots[there], g][None, :] | on_gpu[slots[here][:, None], gpu_of[there]]
        after = np.where(clash, np.inf, after)
        a, b = np.unravel_index(np.argmin(after), after.shape)
        if after[a, b] >= load[g] - 1e-12:
            break  # no swap lowers the busiest GPU
        pa, pb = here[a], there[b]
        load[g] -= delta[a, b]
        load[gpu_of[pb]] += delta[a, b]
        slots[pa], slots[pb] = slots[pb], slots[pa]
    return slots


def collections_counter(values: np.ndarray) -> dict[int, int]:
    """How many times each value occurs."""
    uniq, counts = np.unique(values, return_counts=True)
    return {int(u): int(c) for u, c in zip(uniq, counts, strict=True)}


def routed_balancedness_per_batch(
    phy2log: np.ndarray, num_gpus: int, batches: np.ndarray
) -> np.ndarray:
    """mean / max GPU load after per-batch routing, for each batch ``[B]`` (1.0 when empty);
    ``batches [B, num_logical]`` tokens (rounded). One router serves all batches."""
    return batch_balancedness(phy2log, num_gpus, np.rint(np.asarray(batches)).astype(np.int64))


def evaluation_batches(num_samples: int, sample: int) -> np.ndarray:
    """Evenly spaced sample indices of a window (deterministic; all when it is small)."""
    if num_samples <= sample:
        return np.arange(num_samples)
    return np.unique(np.linspace(0, num_samples - 1, sample).round().astype(np.int64))


@dataclass
class WindowPlacement:
    """A placement fitted to a window, per layer, and what adopting it costs.

    Attributes:
        phy2log: ``[L, R]`` the placement to load (aligned with the current one).
        log2phy: ``[L, E, max_count]`` -1 padded; ``logcnt``: ``[L, E]``.
        balancedness: ``[L]`` routed balancedness of ``phy2log`` over the evaluation batches.
        balancedness_current: ``[L]`` the same for the current placement (None without one).
        balancedness_eplb: ``[L]`` the same for EPLB's placement on the window's sum.
        balancedness_eplb_static: ``[L]`` EPLB's own figure (even split of the window sum).
        moved_replicas: slots that change expert, with alignment (what a runtime copies).
        moved_replicas_unaligned: the same without alignment (new slots in solver order).
        adopted: ``[L]`` whether each layer takes its new placement (else keeps the current).
        why: one line per decision.
    """

    phy2log: np.ndarray
    log2phy: np.ndarray
    logcnt: np.ndarray
    balancedness: np.ndarray
    balancedness_current: np.ndarray | None
    balancedness_eplb: np.ndarray
    balancedness_eplb_static: np.ndarray
    moved_replicas: int
    moved_replicas_unaligned: int
    adopted: np.ndarray
    evaluated_batches: int
    why: list[str] = field(default_factory=list)


def maps_from_phy2log(phy2log: np.ndarray, num_log: int) -> tuple[np.ndarray, np.ndarray]:
    """``log2phy [L, E, max_count]`` (-1 padded, slots in index order) and ``logcnt [L, E]``."""
    num_layers = phy2log.shape[0]
    logcnt = np.zeros((num_layers, num_log), dtype=np.int64)
    rank = np.zeros_like(phy2log)
    for layer in range(num_layers):
        seen = np.zeros(num_log, dtype=np.int64)
        for p, e in enumerate(phy2log[layer]):
            rank[layer, p] = seen[e]
            seen[e] += 1
        logcnt[layer] = seen
    return deepseek.log2phy_from(phy2log, rank, logcnt), logcnt


def _window_inputs(
    load_window: Any, current_phy2log: Any | None, num_gpus: int, num_replicas: int | None
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``window [S, L, E]`` tokens (float), ``current [L, R]`` (or None) and ``R``, checked."""
    window, _ = _to_numpy(load_window)
    window = np.asarray(window, dtype=np.float64)
    if window.ndim == 2:
        window = window[None]
    if window.ndim != 3:
        raise ValueError("load_window: want [num_samples, num_layers, num_logical]")
    _, num_layers, num_log = window.shape
    current = None
    if current_phy2log is not None:
        current = np.asarray(_to_numpy(current_phy2log)[0], dtype=np.int64)
        if current.ndim != 2 or current.shape[0] != num_layers:
            raise ValueError(
                f"current_phy2log: shape {list(current.shape)}, want [{num_layers}, num_replicas]"
            )
    num_phy = int(num_replicas or (current.shape[1] if current is not None else 0))
    if num_phy < num_log or num_phy % num_gpus:
        raise ValueError("num_replicas: need >= num_logical and a multiple of num_gpus")
    if current is not None and current.shape[1] != num_phy:
        raise ValueError("current_phy2log: its width must equal num_replicas")
    return window, current, num_phy


class _SetScore:
    """Mean routed balancedness of a placement ``[R]`` over ``batches [B, E]`` tokens, memoized:
    routed balance depends only on each GPU's set of experts, so each set is scored once."""

    def __init__(self, batches: np.ndarray, num_gpus: int) -> None:
        self.batches, self.num_gpus = batches, num_gpus
        self.seen: dict[bytes, float] = {}

    def __call__(self, p2l: np.ndarray) -> float:
        rows = np.sort(p2l.reshape(self.num_gpus, -1), axis=1)
        key = rows[np.lexsort(rows.T[::-1])].tobytes()
        if key not in self.seen:
            self.seen[key] = float(
                routed_balancedness_per_batch(p2l, self.num_gpus, self.batches).mean()
            )
        return self.seen[key]


def _choose_for_layer(
    old: np.ndarray,
    fresh: tuple[np.ndarray, float],
    s_eplb: float,
    score: _SetScore,
    total: np.ndarray,
    num_gpus: int,
    move_cost: float,
) -> tuple[np.ndarray, float, float]:
    """Among the fresh placement (GPU-aligned with ``old [R]``), ``old`` itself and the fresh one
    rebuilt from ``old`` with the fewest moves, the best ``score - move_cost * moved`` of those at
    least as good as EPLB's ``s_eplb``: ``(phy2log [R], its score, old's score)``.
    ``total [E]`` is the layer's window-sum histogram (tokens)."""
    s_old = score(old)
    rebuilt = align_slots(old, min_move_placement(old, fresh[0], total, num_gpus), num_gpus)
    cands = [(align_slots(old, fresh[0], num_gpus), fresh[1]), (old, s_old)]
    cands.append((rebuilt, score(rebuilt)))
    ok = [c for c in cands if c[1] >= s_eplb - 1e-12] or cands[:1]
    best = max(ok, key=lambda c: (c[1] - move_cost * moved_replicas(old, c[0]), c[1]))
    return best[0], best[1], s_old


def _within_move_budget(gain: np.ndarray, moves: np.ndarray, max_moved_replicas: int) -> np.ndarray:
    """``[L]`` which layers are adopted, in order of ``gain [L]`` (balancedness) per moved replica
    (``moves [L]``), while their moves fit in ``max_moved_replicas``."""
    order = sorted(
        np.flatnonzero(moves > 0).tolist(),
        key=lambda la: (-float(gain[la]) / max(int(moves[la]), 1), la),
    )
    adopted = np.zeros(len(moves), dtype=bool)
    budget = int(max_moved_replicas)
    for la in order:
        if moves[la] <= budget:
            adopted[la] = True
            budget -= int(moves[la])
    return adopted


def rebalance_window(
    load_window: Any,
    current_phy2log: Any | None,
    num_gpus: int,
    num_replicas: int | None = None,
    max_moved_replicas: int | None = None,
    move_cost: float = 0.0005,
    search_moves_per_layer: int = 0,
    sample: int = 16,
    seed: int = 0,
) -> WindowPlacement:
    """A placement per layer fitted to the window's per-batch routing, never worse than EPLB
    on the same window, moving as few replicas as it can.

    Per layer the candidates are: the window fit (``place_for_batches``) and EPLB on the
    window's sum (the better of the two, GPU-aligned with ``align_slots``), that one rebuilt
    from the current placement with the fewest moves (``min_move_placement``), and the current
    placement.
    Each is scored by routed balancedness over evenly spaced batches of the window; among
    those at least as good as EPLB's, the one with the best ``score - move_cost * moved``
    wins (gain and cost in balancedness). With ``max_moved_replicas``, layers are adopted in
    order of gain per moved replica until the budget is spent; the rest keep their placement.

    Args:
        load_window: ``[num_samples, num_layers, num_logical]`` tokens (or ``[L, E]``).
        current_phy2log: ``[num_layers, num_replicas]`` the placement the runtime runs now, or
            None (nothing to align with; every slot counts as new).
        num_gpus: GPUs; ``num_replicas`` defaults to the current placement's width.
        move_cost: balancedness a moved replica must buy (per layer).
        search_moves_per_layer: local-search moves of ``place_for_batches`` per layer (0: its
            EPLB-based starts only).
        sample: batches the candidates are scored on.
    """
    window, current, num_phy = _window_inputs(load_window, current_phy2log, num_gpus, num_replicas)
    num_samples, num_layers, num_log = window.shape
    idx = evaluation_batches(num_samples, sample)
    batches = np.rint(window[idx]).astype(np.int64)  # [B, L, E]
    total = window.sum(0)
    eplb, _, _ = deepseek.rebalance_experts(total + 1e-9, num_phy, 1, 1, num_gpus)
    out = np.empty((num_layers, num_phy), dtype=np.int64)
    bal = np.empty(num_layers)
    bal_eplb = np.empty(num_layers)
    bal_cur = np.empty(num_layers)
    moves = np.zeros(num_layers, dtype=np.int64)
    unaligned = 0
    for layer in range(num_layers):
        score = _SetScore(batches[:, layer], num_gpus)
        # With no move budget the window fit is EPLB on the window's sum: skip re-deriving it.
        fit = eplb[layer]
        if search_moves_per_layer > 0:
            fit = place_for_batches(
                np.rint(window[:, layer]).astype(np.int64),
                num_phy,
                num_gpus,
                max_moves=search_moves_per_layer,
                seed=seed,
            )
        s_fit, s_eplb = score(fit), score(eplb[layer])
        bal_eplb[layer] = s_eplb
        fresh = (fit, s_fit) if s_fit >= s_eplb else (eplb[layer], s_eplb)
        if current is None:
            out[layer], bal[layer] = fresh
            continue
        unaligned += moved_replicas(current[layer], fresh[0])
        out[layer], bal[layer], bal_cur[layer] = _choose_for_layer(
            current[layer], fresh, s_eplb, score, total[layer], num_gpus, move_cost
        )
        moves[layer] = moved_replicas(current[layer], out[layer])
    adopted = np.ones(num_layers, dtype=bool)
    why: list[str] = []
    if current is not None:
        adopted = moves > 0
        if max_moved_replicas is not None:
            adopted = _within_move_budget(bal - bal_cur, moves, max_moved_replicas)
            skipped = int(((moves > 0) & ~adopted).sum())
            if skipped:
                why.append(f"{skipped} layers kept as they are: max_moved_replicas")
        out = np.where(adopted[:, None], out, current)
        bal = np.where(adopted, bal, bal_cur)
        why.append(
            f"{int(adopted.sum())} of {num_layers} layers re-placed, "
            f"{moved_replicas(current, out)} replicas moved "
            f"({unaligned} without alignment)"
        )
    log2phy, logcnt = maps_from_phy2log(out, num_log)
    return WindowPlacement(
        phy2log=out,
        log2phy=log2phy,
        logcnt=logcnt,
        balancedness=bal,
        balancedness_current=bal_cur if current is not None else None,
        balancedness_eplb=bal_eplb,
        balancedness_eplb_static=_even_split_balancedness(total, eplb, num_gpus),
        moved_replicas=moved_replicas(current, out) if current is not None else 0,
        moved_replicas_unaligned=unaligned if current is not None else 0,
        adopted=adopted,
        evaluated_batches=len(idx),
        why=why,
    )


def _even_split_balancedness(total: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """EPLB's own figure per layer: mean / max GPU load when replicas split evenly."""
    from solvers.eplb.model import balancedness, gpu_loads

    return balancedness(gpu_loads(total, phy2log, num_gpus))


class MoeschedEplbPolicy:
    """vLLM's EPLB policy interface (``AbstractEplbPolicy.rebalance_experts``), without vLLM.

    ``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks)`` returns
    EPLB's tuple. vLLM hands the policy the window's summed load, so the answer is EPLB's
    placement; when the caller also passes the current map (``old_global_expert_indices``,
    ``[L, R]``), the new slots are aligned with it so only replicas that must move do.
    Register it where vLLM builds its policy (see the README's vLLM section).
    """

    @classmethod
    def rebalance_experts(
        cls,
        weight: Any,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: Any | None = None,
    ) -> tuple[Any, Any, Any]:
        w, from_torch = _to_numpy(weight)
        phy2log, _, _ = deepseek.rebalance_experts(
            w.astype(np.float64), num_replicas, num_groups, num_nodes, num_ranks
        )
        if old_global_expert_indices is not None:
            old = _to_numpy(old_global_expert_indices)[0].astype(np.int64)
            if old.shape == phy2log.shape and old.min() >= 0:
                nodes = num_nodes if num_groups % num_nodes == 0 else 1
                phy2log = align_slots(old, phy2log, num_ranks, nodes)
        log2phy, logcnt = maps_from_phy2log(phy2log, w.shape[1])
        return _like((phy2log, log2phy, logcnt), from_torch)
