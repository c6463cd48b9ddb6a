"""Baseline placement policies, each the best configuration of its own kind.

* ``monde``: MoNDE-style (arXiv 2405.18832): every expert whole on the NDP unit that holds it
  (no tensor parallelism); the GPU (home) computes the activated experts already in its cache
  plus the ``h`` hottest others, loaded over the link. ``h`` is searched over every value the
  GPU memory allows and the fastest layer wins, so the baseline is the best of its kind.
* ``monde_paper``: MoNDE as published runs it, without the search: the activated experts
  already cached run on the GPU, plus a fixed hot set of the ``ceil(MONDE_HOT_SHARE x active)``
  hottest others loaded over the link (the rule DynaNDE's MoNDE hybrid implements: a bandwidth
  ratio of about 1/17; peers.md section 4); everything else whole on its NDP holder.
* ``round_robin``: expert parallelism only: every expert whole on the NDP unit that holds it,
  nothing on the GPU, no loads.

Both need a layout in which every activated expert is held whole by some NDP unit.
"""

from __future__ import annotations

import math

from solvers.placement.problem import Assignment, PlacementInstance

MONDE_HOT_SHARE = 0.05882  # DynaNDE's MoNDE hybrid: N = ceil(0.05882 x active experts)


def _ndp_holder(inst: PlacementInstance, e: int) -> str:
    kinds = {d.id: d.kind for d in inst.hardware.devices}
    for d in inst.whole_holders(e):
        if kinds[d] == "ndp":
            return d
    raise ValueError(f"expert {e} is not held whole by any NDP unit; this baseline needs that")


def round_robin(inst: PlacementInstance) -> Assignment:
    """Every activated expert whole on its NDP holder."""
    return Assignment(runs={e: ((_ndp_holder(inst, e), 0, inst.G),) for e in inst.experts})


def monde(inst: PlacementInstance) -> tuple[Assignment, int]:
    """The fastest MoNDE-style assignment over every hot-set size h; (assignment, h)."""
    cached = [e for e in inst.experts if inst.home in inst.whole_holders(e)]
    others = sorted(
        (e for e in inst.experts if e not in cached and e in inst.load_parts),
        key=lambda e: (-inst.tokens[e], e),
    )
    max_h = min(len(others), int(inst.home_free_bytes // inst.expert_bytes))
    best: tuple[int, int, Assignment] | None = None
    for h in range(max_h + 1):
        hot = set(others[:h])
        runs: dict[int, tuple[tuple[str, int, int], ...]] = {
            e: (((inst.home if e in cached else _ndp_holder(inst, e)), 0, inst.G),)
            for e in inst.experts
            if e not in hot
        }
        a = Assignment(runs=runs, loaded=tuple(sorted(hot)))
        cycles = inst.predict(a)
        if best is None or cycles < best[0]:
            best = (cycles, h, a)
    assert best is not None
    return best[2], best[1]


def monde_paper(inst: PlacementInstance) -> Assignment:
    """MoNDE with its fixed hot-set rule (no per-layer search): the cached activated experts
    on the GPU, the ``ceil(MONDE_HOT_SHARE x active)`` hottest others (most tokens, ties by
    id) loaded to it as memory allows, the rest whole on their NDP holders."""
    cached = [e for e in inst.experts if inst.home in inst.whole_holders(e)]
    others = sorted(
        (e for e in inst.experts if e not in cached and e in inst.load_parts),
        key=lambda e: (-inst.tokens[e], e),
    )
    h = min(
        math.ceil(MONDE_HOT_SHARE * len(inst.experts)),
        len(others),
        int(inst.home_free_bytes // inst.expert_bytes),
    )
    hot = set(others[:h])
    runs: dict[int, tuple[tuple[str, int, int], ...]] = {
        e: (((inst.home if e in cached else _ndp_holder(inst, e)), 0, inst.G),)
        for e in inst.experts
        if e not in hot
    }
    return Assignment(runs=runs, loaded=tuple(sorted(hot)))
