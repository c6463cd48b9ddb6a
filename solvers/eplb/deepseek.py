"""DeepSeek's EPLB, implemented from its published description (deepseek-ai/EPLB, README and
../shared/reference/peers.md section 2.3), in numpy. The baseline the exact packer must match
or beat.

Glossary (EPLB terms):
    logical expert: one expert of the model; physical expert / replica: one copy in a slot;
    slot p lives on GPU ``p // (num_replicas // num_gpus)`` (GPU-major order).
Shapes: ``weight [num_layers, num_logical]``; ``phy2log [num_layers, num_replicas]``;
``log2phy [num_layers, num_logical, max_count]`` (-1 padded); ``logcnt [num_layers, num_logical]``.
Ties go to the lowest index everywhere (stable descending sort, first minimum/maximum).
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, split n items into ``num_packs`` packs of exactly n / num_packs items.

    Items go heaviest first to the lightest pack that is not full (cardinality-constrained LPT).

    Args:
        weight: ``[rows, n]``.
    Returns:
        pack index and rank inside the pack of every item, both ``[rows, n]``.
    """
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    pack = np.full((rows, n), -1, dtype=np.int64)
    rank = np.full((rows, n), -1, dtype=np.int64)
    for r in range(rows):
        load = [0.0] * num_packs
        count = [0] * num_packs
        for item in np.argsort(-weight[r], kind="stable"):
            p = min((i for i in range(num_packs) if count[i] < per_pack), key=load.__getitem__)
            pack[r, item] = p
            rank[r, item] = count[p]
            load[p] += float(weight[r, item])
            count[p] += 1
    return pack, rank


def replicate_experts(
    weight: np.ndarray, num_phy: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give every extra slot to the expert with the largest load per replica.

    Args:
        weight: ``[rows, num_log]``.
    Returns:
        phy2log ``[rows, num_phy]``, replica rank ``[rows, num_phy]``, logcnt ``[rows, num_log]``.
    """
    rows, num_log = weight.shape
    phy2log = np.tile(np.arange(num_phy), (rows, 1))
    rank = np.zeros((rows, num_phy), dtype=np.int64)
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    idx = np.arange(rows)
    for i in range(num_log, num_phy):
        hot = np.argmax(weight / logcnt, axis=-1)
        phy2log[:, i] = hot
        rank[:, i] = logcnt[idx, hot]
        logcnt[idx, hot] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    rows = np.arange(perm.shape[0])[:, None]
    inv[rows, perm] = np.arange(perm.shape[1])
    return inv


def rebalance_hierarchical(
    weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups to nodes, replicas inside nodes, physical experts to GPUs inside nodes."""
    num_layers, num_log = weight.shape
    group_size = num_log // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_phy // num_gpus
    # Step 1: pack expert groups onto nodes; relabel logical experts node-major ("mlog").
    group_tokens = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    gpack, grank = balanced_packing(group_tokens, num_nodes)
    log2mlog = (
        ((gpack * groups_per_node + grank) * group_size)[:, :, None] + np.arange(group_size)
    ).reshape(num_layers, -1)
    mlog2log = _inverse(log2mlog)
    # Step 2: replicate inside every (layer, node).
    mlog_tokens = np.take_along_axis(weight, mlog2log, -1).reshape(-1, num_log // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(mlog_tokens, num_phy // num_nodes)
    # Step 3: pack each node's physical experts onto its GPUs.
    phy_tokens = np.take_along_axis(mlog_tokens / mlogcnt, phy2mlog, -1)
    pack, rank = balanced_packing(phy_tokens, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, -1)
    offsets = np.arange(0, num_log, num_log // num_nodes)[None, :, None]
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) + offsets).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, -1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, -1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, -1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's entry point: hierarchical when groups divide over nodes, else global.

    Returns:
        phy2log ``[L, R]``, log2phy ``[L, E, max_count]`` (-1 padded), logcnt ``[L, E]``.
    """
    weight = np.asarray(weight, dtype=np.float64)
    _num_layers, _num_log = weight.shape
    if num_groups % num_nodes == 0:
        phy2log, rank, logcnt = rebalance_hierarchical(
            weight, num_replicas, num_groups, num_nodes, num_gpus
        )
    else:
        phy2log, rank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    return phy2log, log2phy_from(phy2log, rank, logcnt), logcnt


def log2phy_from(phy2log: np.ndarray, rank: np.ndarray, logcnt: np.ndarray) -> np.ndarray:
    """Scatter slots into ``[L, E, max_count]`` by (logical expert, replica rank); -1 padded."""
    num_layers, num_log = logcnt.shape
    maxcnt = int(logcnt.max())
    out = np.full((num_layers, num_log * maxcnt), -1, dtype=np.int64)
    rows = np.arange(num_layers)[:, None]
    out[rows, phy2log * maxcnt + rank] = np.arange(phy2log.shape[1])
    return out.reshape(num_layers, num_log, maxcnt)
