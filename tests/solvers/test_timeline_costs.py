"""The timeline's cycles memo (``solvers.timing.cost_key``): a decode run's timelines share
one memo of (resource, cycles) by the fields ``costs.task_cycles`` reads, so every task of
every step must get exactly what ``costs.task_cycles`` gives it afresh: a key that misses a
field the durations depend on fails here (real law routing, 4 NDP-DIMMs, split loads, staged
lines, grouped GEMMs and folded reduces all on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.ndp import decode_point
from hwmodel import costs
from hwmodel.presets import hardware_preset
from solvers import timing
from solvers.decode_loop import DecodeRun


@pytest.mark.parametrize("config", ["moesched", "no_tp"])
def test_memoized_cycles_are_the_cost_model_s(
    traces: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = DecodeRun._record
    checked: dict[str, int] = {}

    def check(self: DecodeRun, st: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = st.timeline.context_tokens
        for t in st.tasks:
            resource, cycles, _ = costs.task_cycles(self.hardware, self.model, t, ctx)
            assert self.cycles[timing.cost_key(t, ctx)] == (resource, cycles), t
            start, end = st.timeline.times[t.id]
            assert end - start == cycles
            kind = type(t).__name__ + getattr(t, "op", "") + getattr(t, "payload", "")
            checked[kind] = checked.get(kind, 0) + 1
        return record(self, st, *args, **kwargs)

    monkeypatch.setattr(DecodeRun, "_record", check)
    decode_point(hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", config, 3)
    # Every kind of task the loop makes was checked, many times.
    assert {
        "ComputeTaskexpert",
        "ComputeTaskattention",
        "TransferTaskweights",
        "TransferTaskactivations",
        "TransferTaskpartial_sums",
        "EvictTask",
    } <= set(checked)
    assert sum(checked.values()) > 1000
