"""The EPLB-compatible problem: replicate and pack logical experts onto GPU slots.

Inputs as DeepSeek's ``rebalance_experts``: ``weight [num_layers, num_logical]`` (token
counts), ``num_replicas`` slots (a multiple of ``num_gpus``), ``num_groups``, ``num_nodes``,
``num_gpus``. A replicated expert's tokens split evenly over its replicas. The objective is the
largest GPU load; balancedness is mean / max GPU load (the vLLM/SGLang definition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.eplb.deepseek import log2phy_from


@dataclass(frozen=True)
class EplbProblem:
    """Arguments of ``rebalance_experts``; ``weight`` is ``[num_layers, num_logical]``."""

    weight: np.ndarray
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int

    def check(self) -> list[str]:
        """Messages (field: reason) for every way the arguments do not fit together."""
        out = []
        w = self.weight
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            out.append("weights: need a non-empty [num_layers, num_logical_experts] matrix")
            return out
        if not np.isfinite(w).all() or (w < 0).any():
            out.append("weights: values must be finite and >= 0")
        num_log = w.shape[1]
        if self.num_gpus < 1 or self.num_replicas % self.num_gpus:
            out.append("num_replicas: must be a multiple of num_gpus")
        if self.num_replicas < num_log:
            out.append(f"num_replicas: {self.num_replicas} < {num_log} logical experts")
        if self.num_groups < 1 or num_log % self.num_groups:
            out.append("num_groups: must divide the number of logical experts")
        if self.num_nodes < 1 or self.num_gpus % self.num_nodes:
            out.append("num_nodes: must divide num_gpus")
        return out

    @property
    def hierarchical(self) -> bool:
        """EPLB's rule: hierarchical when groups divide over nodes (and there is more than one)."""
        return self.num_nodes > 1 and self.num_groups % self.num_nodes == 0

    @property
    def slots_per_gpu(self) -> int:
        return self.num_replicas // self.num_gpus


@dataclass
class EplbSolution:
    """Maps in EPLB's shapes, per-GPU loads, balancedness, and how the solve went.

    ``max_load [L]`` is the largest GPU load per layer, ``max_load_bound [L]`` a proven lower
    bound on it (the greedy answer proves nothing: its bound is the trivial one).
    """

    phy2log: np.ndarray  # [L, R]
    log2phy: np.ndarray  # [L, E, max_count], -1 padded
    logcnt: np.ndarray  # [L, E]
    gpu_loads: np.ndarray  # [L, num_gpus]
    balancedness: np.ndarray  # [L], mean / max GPU load
    max_load: np.ndarray  # [L]
    max_load_bound: np.ndarray  # [L]
    backend: str
    status: str  # optimal | feasible | fallback
    wall_time_s: float
    fallback_reason: str | None = None


def trivial_bound(weight: np.ndarray, num_gpus: int, num_replicas: int) -> np.ndarray:
    """Per layer: max(mean GPU load, heaviest expert spread over all its possible replicas)."""
    num_log = weight.shape[1]
    kmax = num_replicas - num_log + 1
    return np.maximum(weight.sum(-1) / num_gpus, weight.max(-1) / min(kmax, num_gpus))


def gpu_loads(weight: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """Per-GPU load ``[L, num_gpus]``: sum over its slots of expert load / replica count."""
    num_layers, num_log = weight.shape
    cnt = np.zeros((num_layers, num_log))
    rows = np.arange(num_layers)[:, None]
    np.add.at(cnt, (np.broadcast_to(rows, phy2log.shape), phy2log), 1)
    per_slot = np.take_along_axis(weight / np.maximum(cnt, 1), phy2log, -1)
    return per_slot.reshape(num_layers, num_gpus, -1).sum(-1)


def balancedness(loads: np.ndarray) -> np.ndarray:
    """mean / max per row (1.0 for an all-zero row)."""
    mx = loads.max(-1)
    return np.where(mx > 0, loads.mean(-1) / np.where(mx > 0, mx, 1), 1.0)


def maps_from_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB maps from replica counts per (layer, expert, GPU) ``x [L, E, P]``.

    Slots are GPU-major; inside a GPU, experts in index order.
    """
    num_layers, num_log, num_gpus = x.shape
    phy2log_rows, rank_rows = [], []
    for layer in range(num_layers):
        slots: list[int] = []
        ranks: list[int] = []
        seen = np.zeros(num_log, dtype=np.int64)
        for g in range(num_gpus):
            for e in range(num_log):
                for _ in range(int(x[layer, e, g])):
                    slots.append(e)
                    ranks.append(int(seen[e]))
                    seen[e] += 1
        phy2log_rows.append(slots)
        rank_rows.append(ranks)
    phy2log = np.asarray(phy2log_rows, dtype=np.int64)
    rank = np.asarray(rank_rows, dtype=np.int64)
    logcnt = x.sum(-1).astype(np.int64)
    return phy2log, log2phy_from(phy2log, rank, logcnt), logcnt


def counts_from_phy2log(phy2log: np.ndarray, num_log: int, num_gpus: int) -> np.ndarray:
    """Replica counts ``[L, E, P]`` of a GPU-major ``phy2log [L, R]``."""
    num_layers, num_phy = phy2log.shape
    per_gpu = num_phy // num_gpus
    x = np.zeros((num_layers, num_log, num_gpus), dtype=np.int64)
    for layer in range(num_layers):
        for p, e in enumerate(phy2log[layer]):
            x[layer, e, p // per_gpu] += 1
    return x
