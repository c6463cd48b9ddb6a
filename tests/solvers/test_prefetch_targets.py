"""The prefetch's per-target items kept for a step (``DecodeRun._target_items``, reused while
``ExpertCaches.changes`` of the target layer is unchanged): every reuse equals a fresh
computation, on real routing (ESFT law on DeepSeek-V2-Lite, 4 NDP-DIMMs, lines being staged a
chunk at a time); and the change count moves with every change of a layer's lines or of the
granules they miss (a mutation it missed would make a reuse stale and fail here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.ndp import decode_point
from hwmodel.presets import hardware_preset
from solvers import decode_loop
from solvers.decode_loop import DecodeRun
from solvers.prefetch.cache import ExpertCaches


def test_change_count_moves_with_every_change() -> None:
    caches = ExpertCaches("moesched", 2, 2, 8)
    seen = [caches.changes[0]]

    def moved() -> bool:
        seen.append(caches.changes[0])
        return seen[-1] != seen[-2]

    assert caches.insert(0, 1, None) and moved()
    assert caches.stage(0, 2, {0}, 4, None) and moved()  # a new line, 3 granules missing
    assert caches.stage(0, 2, {1, 2}, 4, None) and moved()  # fewer missing
    assert caches.insert(0, 2, None) and moved()  # completes it
    assert not caches.insert(0, 3, None) and not moved()  # full: nothing changes
    assert caches.insert(0, 3, 1) and moved()  # 1 evicted for 3
    caches.touch(0, 2)
    assert not moved()  # recency only: no line or granule changed
    caches.drop(0, 3)
    assert moved()
    caches.pin(0, [5, 6])
    assert moved()
    assert caches.changes[1] == 0  # the other layer's count is its own
    assert np.all(np.diff(seen) >= 0)


@pytest.mark.parametrize("config", ["moesched", "every_step"])
def test_kept_target_items_are_fresh(
    traces: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[DecodeRun] = []
    made_run, made_step = DecodeRun.__init__, decode_loop._Step.__init__
    prefetch = DecodeRun._prefetch
    reused = [0]
    now: list[int] = []  # the layer whose prefetch runs

    def prefetch_at(self: DecodeRun, st: Any, layer: int, *args: Any) -> Any:
        now[:] = [layer]
        return prefetch(self, st, layer, *args)

    def init_run(self: DecodeRun, *args: Any, **kwargs: Any) -> None:
        made_run(self, *args, **kwargs)
        runs.append(self)

    class Checked(dict):  # type: ignore[type-arg]
        def __init__(self, st: Any) -> None:
            super().__init__()
            self.st = st

        def get(self, key: Any, default: Any = None) -> Any:
            got = super().get(key, default)
            (run,) = runs
            nxt, (layer,) = key[0], now
            if got is not None and got.changes == run.caches.changes[nxt]:
                known = range(max(0, layer - 2), layer + 1)  # from the layer that asks
                assert got == run._target_items(self.st, nxt, known), key
                reused[0] += 1
            return got

    def init_step(self: Any, *args: Any, **kwargs: Any) -> None:
        made_step(self, *args, **kwargs)
        self.targets = Checked(self)

    monkeypatch.setattr(DecodeRun, "__init__", init_run)
    monkeypatch.setattr(decode_loop._Step, "__init__", init_step)
    monkeypatch.setattr(DecodeRun, "_prefetch", prefetch_at)
    decode_point(hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", config, 3)
    assert reused[0] > 20
