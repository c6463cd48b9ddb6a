"""Per-batch routing over a fixed replica placement: split each logical expert's tokens among
its replicas so that the busiest GPU is as light as possible.

Exact: experts -> GPUs holding a replica -> sink with capacity T is a flow network; the least
integer T whose maximum flow carries every token is the optimum over integer splits, and it is
at most one token above the LP (fractional) optimum (max-flow integrality). T starts at a
lower bound; when the flow falls d tokens short, T must grow by at least ceil(d / P) (the sink
capacities grow by P per unit of T), so each step keeps T a lower bound and the first
feasible T is optimal. A GPU's tokens of an expert are split evenly over its replicas there.

Shapes: ``phy2log [num_replicas]`` (GPU-major slots), ``loads [num_logical]`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow


@dataclass(frozen=True)
class Routing:
    """Tokens per replica slot ``[num_replicas]``, GPU loads ``[num_gpus]``, their maximum."""

    tokens_per_slot: np.ndarray
    gpu_loads: np.ndarray
    max_load: int
    num_flows: int  # max-flow solves used (0 when no expert has a choice)


def even_split_loads(phy2log: np.ndarray, num_gpus: int, loads: np.ndarray) -> np.ndarray:
    """GPU loads when replicas split their expert's tokens evenly (EPLB's assumption)."""
    counts = np.bincount(phy2log, minlength=len(loads))
    per_slot = loads[phy2log] / counts[phy2log]
    return per_slot.reshape(num_gpus, -1).sum(axis=1)


def route_batch(phy2log: np.ndarray, num_gpus: int, loads: np.ndarray) -> Routing:
    """Split every expert's tokens among its replicas to minimize the largest GPU load."""
    phy2log = np.asarray(phy2log, dtype=np.int64)
    loads = np.asarray(loads, dtype=np.int64)
    num_slots = len(phy2log)
    per_gpu = num_slots // num_gpus
    gpu_of = np.arange(num_slots) // per_gpu
    num_log = len(loads)
    # Which GPUs hold each expert (distinct), and how many slots each.
    holds = np.zeros((num_log, num_gpus), dtype=np.int64)
    np.add.at(holds, (phy2log, gpu_of), 1)
    spread = (holds > 0).sum(axis=1)
    base = np.zeros(num_gpus, dtype=np.int64)
    single = spread == 1
    np.add.at(base, holds[single].argmax(axis=1), loads[single])
    flexible = np.flatnonzero((~single) & (loads > 0))
    per_pair = np.zeros((num_log, num_gpus), dtype=np.int64)
    per_pair[single, holds[single].argmax(axis=1)] = loads[single]
    flows = 0
    if len(flexible):
        total = int(loads.sum())
        t = max(int(base.max()), -(-total // num_gpus))
        k = len(flexible)
        # nodes: 0 source, 1..k flexible experts, k+1..k+P GPUs, k+P+1 sink
        src, sink = 0, k + num_gpus + 1
        pairs = [(i, g) for i, e in enumerate(flexible) for g in np.flatnonzero(holds[e])]
        rows = [src] * k + [1 + i for i, _ in pairs] + [k + 1 + g for g in range(num_gpus)]
        cols = [1 + i for i in range(k)] + [k + 1 + g for _, g in pairs] + [sink] * num_gpus
        need = int(loads[flexible].sum())
        caps = [int(loads[e]) for e in flexible] + [need + 1] * len(pairs) + [0] * num_gpus
        graph = csr_matrix((caps, (rows, cols)), shape=(sink + 1, sink + 1), dtype=np.int32)
        graph.sort_indices()
        # The sink edges are the last entry of each GPU row; only their capacities change.
        gpu_rows = np.arange(k + 1, k + 1 + num_gpus)
        sink_edges = graph.indptr[gpu_rows + 1] - 1
        while True:
            graph.data[sink_edges] = np.maximum(0, t - base)
            result = maximum_flow(graph, src, sink, method="dinic")
            flows += 1
            short = need - int(result.flow_value)
            if short == 0:
                break
            t += -(-short // num_gpus)
        flow = result.flow
        for i, g in pairs:
            per_pair[flexible[i], g] = max(0, int(flow[1 + i, k + 1 + g]))
    # Each (expert, GPU) share splits evenly over that GPU's replicas of the expert; the
    # first replicas (in slot order) take the remainder.
    count = holds[phy2log, gpu_of]
    share, extra = np.divmod(per_pair[phy2log, gpu_of], count)
    key = phy2log * num_gpus + gpu_of
    order = np.argsort(key, kind="stable")
    first = np.searchsorted(key[order], key[order])
    rank = np.empty(num_slots, dtype=np.int64)
    rank[order] = np.arange(num_slots) - first
    tokens = share + (rank < extra)
    gpu_loads = tokens.reshape(num_gpus, -1).sum(axis=1)
    return Routing(tokens, gpu_loads, int(gpu_loads.max()), flows)
