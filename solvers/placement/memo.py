"""A table of solved layer placements, keyed by the layer's shape up to expert names.

Two layers whose activated experts have the same token counts, the same holders per granule
and the same load pieces (and the same free room on the home device) are the same problem with
the experts renamed: every cost the solvers see is equal. The table keeps one solution per
shape, with experts named by their rank in the shape's canonical order, and renames it for the
next layer of that shape. A decode run meets few shapes (batch 1: an expert is cached at
home or not, and lives on one unit or striped over all), so after warming up the schedule is
looked up rather than solved; a new shape is solved once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from solvers.placement.problem import Assignment, PlacementInstance

_Key = tuple[int, tuple[tuple[str, ...], ...], tuple[tuple[str, int, int, int], ...] | None]


def _expert_key(inst: PlacementInstance, e: int) -> _Key:
    parts = inst.load_parts.get(e)
    return (
        inst.tokens[e],
        tuple(tuple(h) for h in inst.holders[e]),
        None if parts is None else tuple(parts),
    )


def _sortable(key: _Key) -> tuple[object, ...]:
    tokens, holders, parts = key
    return (tokens, holders, parts is not None, parts or ())


def shape(inst: PlacementInstance) -> tuple[Hashable, list[int]]:
    """(the instance's shape key, its activated experts in canonical order)."""
    known = inst.expert_keys
    keys = known if known is not None else {e: _expert_key(inst, e) for e in inst.experts}
    # Any order that depends on the keys alone is canonical; tuples compare without repr
    # (an expert with no load pieces sorts before one with some).
    order = sorted(inst.experts, key=lambda e: (_sortable(keys[e]), e))  # type: ignore[arg-type]
    room = int(inst.home_free_bytes // inst.expert_bytes) if inst.expert_bytes else 0
    key = (
        inst.num_tokens, inst.G, room, min(room, len(order)),
        tuple(keys[e] for e in order),
    )  # fmt: skip
    return key, order


class PlanMemo:
    """Solutions by shape for one ``solve`` function; ``solved`` and ``reused`` count calls."""

    def __init__(self, solve: Callable[[PlacementInstance], Assignment]) -> None:
        self.solve = solve
        self.table: dict[Hashable, Assignment] = {}
        self.solved = 0
        self.reused = 0

    def assignment(self, inst: PlacementInstance) -> Assignment:
        """The instance's assignment: looked up and renamed, or solved and stored."""
        key, order = shape(inst)
        canonical = self.table.get(key)
        if canonical is not None:
            self.reused += 1
            return _rename(canonical, order)
        a = self.solve(inst)
        self.solved += 1
        rank = {e: i for i, e in enumerate(order)}
        self.table[key] = Assignment(
            runs={rank[e]: runs for e, runs in a.runs.items()},
            loaded=tuple(rank[e] for e in a.loaded),
        )
        return a


def _rename(canonical: Assignment, order: list[int]) -> Assignment:
    return Assignment(
        runs={order[i]: runs for i, runs in canonical.runs.items()},
        loaded=tuple(order[i] for i in canonical.loaded),
    )
