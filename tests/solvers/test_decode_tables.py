"""The decode loop's one-token instances from per-expert tables (``solvers.decode_tables``) are
the instances the residency gives, and a run through them is the run without them.

Real routing (ESFT law on DeepSeek-V2-Lite, 4 NDP-DIMMs), under the striped layout with lines
being staged and split loads (``moesched``) and the one-expert-one-unit layout (``monde_best_h``,
``no_balance``): every layer instance the loop builds is compared field by field with
``PlacementInstance(problem)`` on the residency the loop would have built, the plan memo's
classes and shapes must match one to one, and whole runs must give the same records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.ndp import decode_point
from hwmodel.presets import hardware_preset
from solvers.decode_tables import DecodeTables
from solvers.placement.memo import _expert_key, shape
from solvers.placement.problem import PlacementInstance
from tests.load_independence import is_timing

FIELDS = (
    "experts", "tokens", "holders", "shard", "load_parts", "load_cycles", "home_free_bytes",
    "G", "width", "devices", "remote", "expert_bytes", "home", "layer", "num_tokens",
)  # fmt: skip


def run(config: str, steps: int = 3) -> dict[str, Any]:
    got = decode_point(
        hardware_preset("gpu-ndp-4dimm"), "deepseek-v2-lite", "esft-law", config, steps
    )
    return {k: v for k, v in got.items() if not is_timing(k)}  # CPU seconds differ run to run


@pytest.mark.parametrize("config", ["moesched", "monde_best_h", "no_balance"])
def test_every_instance_is_the_residency_one(
    traces: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = DecodeTables.instance
    checked: list[int] = []
    pairs: dict[int, dict[object, object]] = {}
    back: dict[int, dict[object, object]] = {}

    def compare(self: DecodeTables, *args: Any, **kwargs: Any) -> PlacementInstance:
        inst = built(self, *args, **kwargs)
        full = PlacementInstance(inst.problem)
        for name in FIELDS:
            assert getattr(inst, name) == getattr(full, name), name
        # The memo's classes (experts alike) and shapes match the residency instance's one
        # to one within a run.
        assert inst.expert_keys is not None
        classes: dict[object, object] = {}
        for e in inst.experts:
            assert (
                classes.setdefault(_expert_key(full, e), inst.expert_keys[e])
                == (inst.expert_keys[e])
            )
        assert len(set(classes.values())) == len(classes)
        (k_full, _), (k_fast, _) = shape(full), shape(inst)
        assert pairs.setdefault(id(self), {}).setdefault(k_full, k_fast) == k_fast
        assert back.setdefault(id(self), {}).setdefault(k_fast, k_full) == k_full
        checked.append(len(inst.experts))
        return inst

    monkeypatch.setattr(DecodeTables, "instance", compare)
    run(config)
    # Every layer of every step at least (with prefetch, its probes and split-load ones too).
    assert len(checked) >= 3 * 26


@pytest.mark.parametrize("config", ["moesched", "monde_best_h"])
def test_a_run_through_the_tables_is_the_run_without(
    traces: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = run(config)

    def from_residency(self: DecodeTables, *args: Any) -> PlacementInstance:
        return PlacementInstance(args[-1]())  # problem_of(): the residency the loop builds

    monkeypatch.setattr(DecodeTables, "instance", from_residency)
    assert run(config) == fast


def test_a_problem_asked_for_after_the_cache_changed_is_refused(traces: Path) -> None:
    """The instance builds its problem from the live cache on first use: only while the
    cache is as it was when the instance was built."""
    seen: list[PlacementInstance] = []
    built = DecodeTables.instance

    def keep(self: DecodeTables, *args: Any) -> PlacementInstance:
        inst = built(self, *args)
        seen.append(inst)
        return inst

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DecodeTables, "instance", keep)
        run("moesched", steps=2)
    stale = 0
    for inst in seen:
        try:
            inst.problem  # noqa: B018
        except AssertionError:
            stale += 1
    assert stale > 0
