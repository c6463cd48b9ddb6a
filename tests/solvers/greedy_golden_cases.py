"""The real-trace layers whose greedy plans are pinned (``tests/fixtures/greedy_golden.json``).

The benchmark's instances (``bench solvers``, full and quick: GPU + 8 and + 16 NDP-DIMMs,
DeepSeek-V2-Lite and the 128-expert shape, batches 1 to 64, striped with 8 cached experts) and
the same layers under the MoNDE layout (every expert whole on one DIMM, 4 DIMMs). Regenerate
the fixture only when a plan is meant to change: ``python -m tests.solvers.greedy_golden_cases``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.solvers import instances
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import gpu_ndp, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir
from solvers.placement.greedy import solve_greedy
from solvers.placement.problem import Assignment, PlacementInstance, PlacementProblem

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "greedy_golden.json"


def cases() -> list[tuple[str, PlacementProblem]]:
    """(name, problem) of every pinned layer."""
    out = [(f"bench/{n}", p) for n, p in instances(quick=False)]
    out += [(f"quick/{n}", p) for n, p in instances(quick=True)]
    trace = load_esft(traces_dir() / ESFT_FILES["law"])
    hw, model = gpu_ndp(4), model_preset("deepseek-v2-lite")
    for layer in (3, 12):
        for batch in (1, 16, 64):
            start = 6000 + 31 * layer
            hist = trace.histogram(slice(start, start + batch))[layer]
            residency = layout_residency(hw, model, "round_robin", cached_experts=[0, 1, 2])
            problem = PlacementProblem(
                hw, model, layer, tuple(int(v) for v in hist), batch, residency, num_granules=4
            )
            out.append((f"round_robin/{hw.name}/L{layer}/b{batch}", problem))
    return out


def to_json(a: Assignment, makespan_cycles: int) -> dict[str, object]:
    """An assignment and its predicted makespan as the fixture stores them."""
    return {
        "runs": {str(e): [f"{d}:{g0}-{g1}" for d, g0, g1 in r] for e, r in sorted(a.runs.items())},
        "loaded": list(a.loaded),
        "makespan_cycles": makespan_cycles,
    }


def main() -> None:
    golden = {}
    for name, problem in cases():
        inst = PlacementInstance(problem)
        a = solve_greedy(inst)
        golden[name] = to_json(a, inst.predict(a))
    lines = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in golden.items()]
    FIXTURE.write_text("{\n" + ",\n".join(sorted(lines)) + "\n}\n")


if __name__ == "__main__":
    main()
