"""The prefetch's chunk tables (``DecodeTables.chunks``, kept per record, and the knapsack
items made of them, ``DecodeTables.candidates``, kept per base layout and GPU pieces) are
what the layer instance of the live residency gives, every time the decode loop asks: a table
kept under the wrong key (stale after the cache changed) fails here.

Real routing (ESFT law on DeepSeek-V2-Lite, 4 NDP-DIMMs), under the striped layout with lines
being staged (``moesched``) and the one-expert-one-unit layout (``no_balance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.ndp import decode_point
from hwmodel.presets import hardware_preset
from solvers.decode_loop import DecodeRun
from solvers.decode_tables import DecodeTables
from solvers.placement.problem import PlacementInstance


def reference(
    inst: PlacementInstance, e: int, per: int, remote_ok: bool
) -> list[tuple[Any, ...]] | None:
    """Expert e's chunks as the decode loop computed them from its probe instance."""
    if e not in inst.load_parts:
        return None
    home, width = inst.home, inst.width * per
    out = []
    for c in range(inst.G // per):
        c0, c1 = c * width, (c + 1) * width
        pieces = []
        for src, p0, p1, _ in inst.load_parts[e]:
            lo, hi = max(p0, c0), min(p1, c1)
            if lo < hi:
                pieces.append(
                    (src, lo, hi, inst._tables.weight_cycles(inst.link(src, home), hi - lo))
                )
        load = sum(p[3] for p in pieces)
        home_c = inst.shard[e][home][per]
        away = [
            min((inst.shard[e][d][1] for d in inst.holders[e][g] if d != home), default=None)
            for g in range(c * per, (c + 1) * per)
        ]
        remote = None if None in away else sum(a for a in away if a is not None)
        alone = load + home_c
        if remote_ok and remote is not None:
            alone = min(alone, remote)
        links = frozenset(inst.link(src, home).id for src, *_ in pieces)
        out.append((pieces, load, max(0, alone - home_c), links))
    return out


@pytest.mark.parametrize("config", ["moesched", "no_balance"])
def test_every_chunk_table_is_the_residency_one(
    traces: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[DecodeRun] = []
    made = DecodeRun.__init__
    candidates = DecodeTables.candidates
    asked: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []

    def init(self: DecodeRun, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        runs.append(self)

    def compare(
        self: DecodeTables, layer: int, e: int, lines: Any, missing: Any, per: int, ok: bool
    ) -> Any:
        got = candidates(self, layer, e, lines, missing, per, ok)
        (run,) = runs
        assert lines is run.caches.lines[layer]
        full = PlacementInstance(run._instance(layer, [e]).problem)  # from the residency
        want = reference(full, e, per, ok)
        if want is None:
            assert got is None, (layer, e)
        else:
            assert got is not None, (layer, e)
            assert got.pieces == [ch[0] for ch in want]
            assert got.cycles == [ch[1] for ch in want]
            assert got.saved == [ch[2] for ch in want]
            assert got.links == [ch[3] for ch in want]
            assert got.all_links == frozenset().union(*got.links)
        asked.append((layer, e, self.home_pieces(e, lines, missing, None)))
        return got

    monkeypatch.setattr(DecodeRun, "__init__", init)
    monkeypatch.setattr(DecodeTables, "candidates", compare)
    decode_point(hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", config, 3)
    assert len(asked) > 100
    # The same expert of a layer is asked for under different GPU pieces (staged granules,
    # a whole line): a table kept by (layer, expert) alone would be stale there.
    by_expert: dict[tuple[int, int], set[object]] = {}
    for layer, e, pieces in asked:
        by_expert.setdefault((layer, e), set()).add(pieces)
    assert config != "moesched" or any(len(v) > 1 for v in by_expert.values())
