"""One-token layer instances of a decode run, assembled from per-expert tables (issue #20).

At batch 1 a decode layer's placement problem is fixed by the experts the token runs and by
what the GPU holds of each of them (nothing, the whole expert, the granules of a line still
being staged, the pieces of a split load): an expert's holders per granule, its load pieces
and their link cycles follow from its layer, the base layout and that state alone, and so does
its key in the plan memo (``solvers.placement.memo``). ``DecodeTables`` keeps those per
(layer, expert, GPU pieces) and assembles the layer's ``PlacementInstance`` from them
(``PlacementInstance.from_layouts``) without building the layer's residency: the residency,
and the ``PlacementProblem`` with it, are built only when something asks for the problem.

The tables hold exactly what ``PlacementInstance(problem)`` computes from the same residency
(the same ``_layout`` function, the same link cycles, the home memory's free bytes summed in
the same order); ``tests/solvers/test_decode_tables.py`` compares both on real traces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from hwmodel import cost_tables, costs
from hwmodel.plan import Residency
from hwmodel.plan_builder import effective_granules
from hwmodel.spec import Hardware, ModelSpec
from solvers.placement.problem import PlacementInstance, PlacementProblem, _layout

_Pieces = tuple[tuple[int, int], ...]
# (holders per granule, load pieces, (load parts, their cycles) or None, memo key)
_Record = tuple[
    list[list[str]],
    list[tuple[str, int, int]] | None,
    tuple[list[tuple[str, int, int, int]], int] | None,
    tuple[Hashable, ...],
]

# A prefetch chunk: (load pieces (source, first column, end column, link cycles), their link
# cycles, cycles saved, the links its pieces use)
_Chunk = tuple[list[tuple[str, int, int, int]], int, int, frozenset[str]]


@dataclass(slots=True, frozen=True)
class Candidates:
    """One expert's prefetch chunks as knapsack items, by chunk: the chunk's load ``pieces``
    (source, first column, end column, link cycles), their link ``cycles``, ``saved`` cycles
    and ``links``; ``all_links``: every chunk's. The same for every expert of every layer
    whose base layout and GPU pieces are the same (``DecodeTables.candidates``)."""

    pieces: list[list[tuple[str, int, int, int]]]
    cycles: list[int]
    saved: list[int]
    links: list[frozenset[str]]
    all_links: frozenset[str]
    # The chunks by saved cycles descending, then chunk; the least link cycles from each
    # place of that order on (``select.greedy_runs``).
    by_saved: list[int]
    least: list[int]


def ranked(saved: Sequence[int], cycles: Sequence[int]) -> tuple[list[int], list[int]]:
    """Positions by ``saved`` descending then position, and the least ``cycles`` from each
    place of that order on (a run of ``select.greedy_runs``)."""
    order = sorted(range(len(saved)), key=lambda j: (-saved[j], j))
    least = [0] * len(order)
    low = None
    for k in range(len(order) - 1, -1, -1):
        c = cycles[order[k]]
        low = c if low is None or c < low else low
        least[k] = low
    return order, least


class DecodeTables:
    """Per-expert layer tables of one decode run (one hardware, model, base layout and
    granule count). ``base`` must not hold anything on the GPU that depends on the step."""

    def __init__(
        self, hardware: Hardware, model: ModelSpec, base: Residency, num_granules: int
    ) -> None:
        self.hardware, self.model, self.num_granules = hardware, model, num_granules
        self._tab = cost_tables.tables(hardware, model)
        self.home = hardware.home_device_id
        self.devices = tuple(self._tab.reachable(self.home))
        self.remote = tuple(d for d in self.devices if d != self.home)
        self.ffn = model.expert_ffn_size
        self.G = effective_granules(self.ffn, num_granules)
        self.width = self.ffn // self.G
        mem_of = {d.id: d.memory_id for d in hardware.devices}
        ffn = self.ffn
        self.home_mem = mem_of[self.home]
        self.capacity_bytes = next(
            m.capacity_bytes for m in hardware.memories if m.id == self.home_mem
        )
        # The base residency by device: (layer or None, expert or None, piece) per slice.
        self._base = {
            d: [
                (sl.layer, sl.expert, (sl.ffn_start, ffn if sl.ffn_end is None else sl.ffn_end))
                for sl in base.by_memory.get(mem_of[d], ())
            ]
            for d in self.devices
        }
        # Bytes of the base slices on the home memory, in order (every layer's: the instance
        # counts every slice the home memory holds).
        self._base_home_bytes = [
            costs.weight_slice_bytes(model, sl) for sl in base.by_memory.get(self.home_mem, ())
        ]
        used = 0.0  # summed one by one, as ``sum`` over the residency's home slices does
        for b in self._base_home_bytes:
            used += b
        self._base_home_used = used
        self._like: PlacementInstance | None = None  # the first instance built (tables shared)
        self._shard_rows: dict[int, dict[str, list[int]]] = {}
        self._cols: dict[tuple[int, int], tuple[_Pieces, ...]] = {}
        self._layouts: dict[tuple[_Pieces, ...], tuple[_Pieces, ...]] = {}  # interned
        self._records: dict[tuple[tuple[_Pieces, ...], _Pieces], _Record] = {}
        self._classes: dict[Hashable, int] = {}
        self.line_bytes = model.expert_bytes()
        self._link_ids: dict[str, str] = {}
        self._chunks: dict[Hashable, list[_Chunk] | None] = {}
        self._candidates: dict[Hashable, Candidates | None] = {}

    def _base_cols(self, layer: int, e: int) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per device (``devices`` order): the sorted base pieces of expert e in the layer
        (one shared tuple for every expert the base lays out alike: a striped base has one)."""
        got = self._cols.get((layer, e))
        if got is None:
            cols = tuple(
                tuple(sorted(piece for lay, ex, piece in self._base[d]
                             if lay in (None, layer) and ex in (None, e)))
                for d in self.devices
            )  # fmt: skip
            got = self._cols[(layer, e)] = self._layouts.setdefault(cols, cols)
        return got

    def record(self, layer: int, e: int, home_pieces: _Pieces) -> _Record:
        """Expert e's tables in the layer when the GPU holds columns ``home_pieces`` of it."""
        base = self._base_cols(layer, e)
        key = (base, home_pieces)
        got = self._records.get(key)
        if got is not None:
            return got
        cols = tuple(
            tuple(sorted(base[k] + home_pieces)) if d == self.home else base[k]
            for k, d in enumerate(self.devices)
        )
        holders, pieces = _layout(
            self.devices, self.remote, self.home, cols, self.ffn, self.width, self.G
        )
        parts = None
        if pieces is not None:
            made = []
            for src, c0, c1 in pieces:
                link = self._tab.link_between(src, self.home)
                assert link is not None
                made.append((src, c0, c1, self._tab.weight_cycles(link, c1 - c0)))
            parts = (made, sum(p[3] for p in made))
        # Experts with equal (holders, load parts) are one class of the memo: numbered, so
        # that a shape key hashes small ints (the memo needs equal classes, not their text).
        value = (tuple(tuple(h) for h in holders), None if parts is None else tuple(parts[0]))
        memo_key = (1, self._classes.setdefault(value, len(self._classes)), None)
        got = self._records[key] = (holders, pieces, parts, memo_key)
        return got

    def gpu_pieces(
        self,
        e: int,
        lines: Mapping[int, object],
        missing: Mapping[int, set[int]],
        extra: Mapping[int, list[tuple[str, int, int]]] | None,
    ) -> list[tuple[int, int]]:
        """Column pieces of expert e the GPU holds, in the order the decode loop's residency
        lists them: its split loads, then its whole line, or the runs of granules already
        staged of its line."""
        out = [(c0, c1) for _, c0, c1 in (extra or {}).get(e, ())]
        gone = missing.get(e)
        if gone is None:
            if e in lines:
                out.append((0, self.ffn))
        else:
            g = 0
            while g < self.G:
                if g in gone:
                    g += 1
                    continue
                end = g
                while end < self.G and end not in gone:
                    end += 1
                out.append((g * self.width, end * self.width))
                g = end
        return out

    def home_pieces(
        self,
        e: int,
        lines: Mapping[int, object],
        missing: Mapping[int, set[int]],
        extra: Mapping[int, list[tuple[str, int, int]]] | None,
    ) -> _Pieces:
        """``gpu_pieces``, sorted: the key of expert e's record (``record``)."""
        if e in missing or (extra and e in extra):
            return tuple(sorted(self.gpu_pieces(e, lines, missing, extra)))
        return ((0, self.ffn),) if e in lines else ()

    @functools.cached_property
    def least_piece_cycles(self) -> int:
        """The fewest link cycles a load piece of at least one granule takes from any other
        device to the home device (a prefetch chunk's pieces are granule-aligned)."""
        out = []
        for d in self.remote:
            link = self._tab.link_between(d, self.home)
            if link is not None:
                out.append(self._tab.weight_cycles(link, self.width))
        return min(out, default=0)

    def link_id(self, src: str) -> str:
        """The id of the link the lowering uses from ``src`` to the home device."""
        got = self._link_ids.get(src)
        if got is None:
            link = self._tab.link_between(src, self.home)
            assert link is not None
            got = self._link_ids[src] = link.id
        return got

    def chunks(
        self,
        layer: int,
        e: int,
        lines: Mapping[int, object],
        missing: Mapping[int, set[int]],
        per: int,
        remote_ok: bool,
    ) -> list[_Chunk] | None:
        """Expert e's prefetch chunks in the layer with the GPU holding what ``lines`` and
        ``missing`` say (None: nothing of it to load), one per chunk of ``per`` granules in
        column order: (the chunk's load pieces (source, first column, end column, link
        cycles), their cycles, the cycles staging it saves, the links its pieces use).

        Saved: the chunk's load and its GPU shard, or (``remote_ok``) computing its granules
        on their fastest other holders when every granule has one and that is less, minus
        the GPU shard. Computed once per record (``record``): the layer instance the loop's
        probe would build gives the same (``tests/solvers/test_decode_tables_prefetch.py``)."""
        home_pieces = self.home_pieces(e, lines, missing, None)
        return self._chunk_table(layer, e, home_pieces, per, remote_ok)

    def _chunk_table(
        self, layer: int, e: int, home_pieces: _Pieces, per: int, remote_ok: bool
    ) -> list[_Chunk] | None:
        """``chunks`` of expert e in the layer when the GPU holds columns ``home_pieces``."""
        key = (self._base_cols(layer, e), home_pieces, per, remote_ok)
        if key in self._chunks:
            return self._chunks[key]
        holders, _, parts, _ = self.record(layer, e, home_pieces)
        out: list[_Chunk] | None = None
        if parts is not None:
            rows = {d: self._tab.shard_row(d, 1, self.G) for d in self.devices}
            width = self.width * per
            home_c = rows[self.home][per]
            out = []
            for c in range(self.G // per):
                c0, c1 = c * width, (c + 1) * width
                pieces = []
                for src, p0, p1, _ in parts[0]:
                    lo, hi = max(p0, c0), min(p1, c1)
                    if lo < hi:
                        link = self._tab.link_between(src, self.home)
                        assert link is not None
                        pieces.append((src, lo, hi, self._tab.weight_cycles(link, hi - lo)))
                load = sum(cyc for *_, cyc in pieces)
                away = [
                    min((rows[d][1] for d in holders[g] if d != self.home), default=None)
                    for g in range(c * per, (c + 1) * per)
                ]
                remote = None if None in away else sum(a for a in away if a is not None)
                alone = load + home_c
                if remote_ok and remote is not None:
                    alone = min(alone, remote)
                links = frozenset(self.link_id(src) for src, *_ in pieces)
                out.append((pieces, load, max(0, alone - home_c), links))
        self._chunks[key] = out
        return out

    def candidates(
        self,
        layer: int,
        e: int,
        lines: Mapping[int, object],
        missing: Mapping[int, set[int]],
        per: int,
        remote_ok: bool,
    ) -> Candidates | None:
        """``chunks`` as the prefetch's knapsack items of expert e in the layer (kept per base
        layout and GPU pieces of the expert, as ``chunks`` is: shared by the experts and
        layers alike in both)."""
        home_pieces = self.home_pieces(e, lines, missing, None)
        key = (self._base_cols(layer, e), home_pieces, per, remote_ok)
        got = self._candidates.get(key, self)
        if got is self:
            chunks = self._chunk_table(layer, e, home_pieces, per, remote_ok)
            got = None
            if chunks is not None:
                cycles, saved = [ch[1] for ch in chunks], [ch[2] for ch in chunks]
                got = Candidates(
                    [ch[0] for ch in chunks], cycles, saved,
                    [ch[3] for ch in chunks], frozenset().union(*(ch[3] for ch in chunks)),
                    *ranked(saved, cycles),
                )  # fmt: skip
            self._candidates[key] = got
        assert got is None or isinstance(got, Candidates)
        return got

    def instance(
        self,
        layer: int,
        experts: list[int],
        lines: Mapping[int, object],
        missing: Mapping[int, set[int]],
        reserved_bytes: float,
        extra: Mapping[int, list[tuple[str, int, int]]] | None,
        problem_of: Callable[[], PlacementProblem],
    ) -> PlacementInstance:
        """The layer's instance for one token over ``experts`` (one token each), with the
        layer's cache ``lines`` (expert -> anything; ``missing``: granules still missing of
        lines being staged) and ``extra`` (split loads: expert -> (source, first column, end
        column)) on the GPU, and ``reserved_bytes`` of the GPU memory held by other layers.
        ``problem_of()`` builds the problem these are the tables of (on first use only)."""
        records, cols = self._records, self._cols
        whole = ((0, self.ffn),)
        layouts = {}
        parts = {}
        keys: dict[int, Hashable] = {}
        tokens = {}
        for e in sorted(set(experts)):
            if e in missing or (extra and e in extra):
                home_pieces = self.home_pieces(e, lines, missing, extra)
            else:
                home_pieces = whole if e in lines else ()
            base = cols.get((layer, e))
            rec = None if base is None else records.get((base, home_pieces))
            if rec is None:
                rec = self.record(layer, e, home_pieces)
            layouts[e] = (rec[0], rec[1])
            if rec[2] is not None:
                parts[e] = rec[2]
            keys[e] = rec[3]
            tokens[e] = 1
        # The home memory's free bytes as ``PlacementInstance`` sums them: the base slices,
        # then the layer's slices (split loads, whole lines, staged runs) in residency order.
        used = self._base_home_used
        for pieces_of in (extra or {}).values():
            for _, c0, c1 in pieces_of:
                used += self.model.expert_bytes(c1 - c0)
        line_bytes = self.line_bytes
        for e in lines:
            if e not in missing:
                used += line_bytes
        for e in missing:
            for c0, c1 in self.gpu_pieces(e, lines, missing, None):
                used += self.model.expert_bytes(c1 - c0)
        free = self.capacity_bytes - reserved_bytes - used
        # The problem is built later, from the live cache: only while it is as it was here.
        was = (tuple(lines), {e: frozenset(m) for e, m in missing.items()})

        def problem() -> PlacementProblem:
            now = (tuple(lines), {e: frozenset(m) for e, m in missing.items()})
            assert now == was, f"layer {layer}: the cache changed since its instance was built"
            return problem_of()

        like = self._like
        if like is None:
            like = self._like = PlacementInstance(problem_of())
        return PlacementInstance.from_layouts(
            problem, like, layer, tokens, 1, layouts, free, parts, self._shard_rows, keys
        )
