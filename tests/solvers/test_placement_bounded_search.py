"""The greedy's bounded search (``solve_greedy_estimated(bounded=True)``, the default) gives the
plan of the reference search that places every load count it asks for (``bounded=False``).

Real layers: the pinned golden cases (the benchmark's instances, full and quick, and the
round-robin ones) and every one-token instance a short decode run builds (DeepSeek-V2-Lite on
4 NDP-DIMMs, ESFT law, the striped and the one-expert-one-unit layouts). A planted fault (a
load bound above the estimate it bounds) must show up as a difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bench.ndp import decode_point
from hwmodel.presets import hardware_preset
from solvers.decode_tables import DecodeTables
from solvers.placement import greedy
from solvers.placement.greedy import solve_greedy_estimated
from solvers.placement.problem import PlacementInstance
from tests.solvers.greedy_golden_cases import cases


def differences(instances: Iterable[tuple[str, PlacementInstance]]) -> list[str]:
    """The instances on which the bounded and the reference search disagree (plan or
    estimate)."""
    out = []
    for name, inst in instances:
        fast = solve_greedy_estimated(inst)
        reference = solve_greedy_estimated(inst, bounded=False)
        if fast != reference:
            out.append(f"{name}: {fast[1]} vs reference {reference[1]}")
    return out


def golden_instances() -> list[tuple[str, PlacementInstance]]:
    return [(name, PlacementInstance(problem)) for name, problem in cases()]


def decode_instances(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, PlacementInstance]]:
    """Every layer instance two short decode runs build (before the plan memo sees them)."""
    built = DecodeTables.instance
    seen: list[tuple[str, PlacementInstance]] = []

    def keep(self: DecodeTables, *args: Any, **kwargs: Any) -> PlacementInstance:
        inst = built(self, *args, **kwargs)
        seen.append((f"decode/{config}/{len(seen)}/L{inst.layer}", inst))
        return inst

    monkeypatch.setattr(DecodeTables, "instance", keep)
    for config in ("moesched", "monde_best_h"):
        decode_point(hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", config, 2)
    monkeypatch.undo()
    return seen


def test_bounded_search_gives_the_reference_plan_on_golden_layers() -> None:
    assert differences(golden_instances()) == []


def test_bounded_search_gives_the_reference_plan_on_decode_layers(
    traces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = decode_instances(monkeypatch)
    assert len(got) > 20
    assert differences(got) == []


def test_bounded_search_spares_placements() -> None:
    """On a batch-1 decode layer every load count is bounded out: one placement, not five."""
    name, problem = next((n, p) for n, p in cases() if n.endswith("8dimm/deepseek-v2-lite/L3/b1"))
    inst = PlacementInstance(problem)
    calls: list[int] = []
    place = greedy._place

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return place(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(greedy, "_place", counted)
        solve_greedy_estimated(inst, bounded=False)
        reference = len(calls)
        calls.clear()
        solve_greedy_estimated(inst)
    assert (len(calls), reference) == (1, 5), name


def test_a_planted_bound_above_the_estimate_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A floor that overstates the loads' cost prunes load counts that win: the comparison
    must report it (here on the layers where loads pay)."""
    floor = greedy._loads_floor
    monkeypatch.setattr(greedy, "_loads_floor", lambda static, loads: 3 * floor(static, loads))
    got = differences(golden_instances())
    assert got, "a wrong bound went unnoticed"
