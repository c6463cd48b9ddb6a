"""Print, as JSON, the plans and figures of every solver on small fixed inputs.

``tests/test_determinism.py`` runs this in two processes with different ``PYTHONHASHSEED``
and requires the same output: any dependence on set or dict-of-str iteration order, on object
addresses or on the clock shows up as a difference. Usage: ``python -m tests.determinism_probe``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from hwmodel.plan_builder import layout_residency
from hwmodel.presets import gpu_ndp, hardware_preset, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir
from solvers.common import Budget
from solvers.eplb.model import EplbProblem
from solvers.eplb.solve import solve_eplb
from solvers.ordering.dep import DepProblem, solve_dep
from solvers.placement.problem import PlacementProblem
from solvers.placement.solve import solve_layer
from solvers.prefetch.select import PrefetchProblem, select


def _placement() -> dict[str, Any]:
    """Greedy and CP-SAT on one real ESFT layer (round robin over 4 DIMMs, 16 tokens)."""
    trace = load_esft(traces_dir() / ESFT_FILES["law"])
    hw, model = gpu_ndp(4), model_preset("deepseek-v2-lite")
    hist = trace.histogram(slice(4291, 4307))[3]
    residency = layout_residency(hw, model, "round_robin", cached_experts=[0, 1, 2, 3])
    p = PlacementProblem(hw, model, 3, tuple(int(v) for v in hist), 16, residency, 4)
    out: dict[str, Any] = {}
    for backend in ("greedy", "cpsat"):
        sol = solve_layer(p, backend, budget=Budget.work(30.0, workers=1))  # type: ignore[arg-type]
        assert sol.assignment is not None
        report = sol.instance.simulate(sol.assignment)
        out[backend] = {
            "runs": {str(e): [list(r) for r in runs] for e, runs in sol.assignment.runs.items()},
            "loaded": list(sol.assignment.loaded),
            "objective": sol.account.objective_cycles,
            "bound": sol.account.lower_bound_cycles,
            "status": sol.account.status,
            "simulated": report.makespan_cycles,
            "busy": [d.busy_cycles for d in report.devices],
        }
    return out


def _eplb() -> dict[str, Any]:
    w = np.array([[6, 6, 3, 3, 3, 3, 2, 2], [600, 560, 120, 120, 20, 10, 10, 10]])
    out = {}
    for backend in ("greedy", "auto"):
        problem = EplbProblem(w, 16, 1, 1, 8)
        sol = solve_eplb(problem, backend, budget=Budget.work(10.0, workers=2))  # type: ignore[arg-type]
        out[backend] = {"phy2log": sol.phy2log.tolist(), "max_load": sol.max_load.tolist()}
    return out


def _dep() -> dict[str, Any]:
    p = DepProblem(hardware_preset("dep-h20"), model_preset("deepseek-v2"), 1024, 2, 1024)
    sol = solve_dep(p, "auto", max_r=6, budget=Budget.work(3.0, workers=2))
    return {
        "r": sol.micro_batches,
        "makespan": sol.makespan_cycles,
        "by_r": sol.by_r,
        "order": [t.id for t in sol.plan.tasks],
    }


def _prefetch() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    n = 12
    p = PrefetchProblem(
        experts=tuple(range(n)),
        probability=tuple(float(x) for x in rng.uniform(0, 1, n).round(3)),
        size_bytes=tuple(float(x) for x in rng.integers(1, 9, n)),
        transfer_cycles=tuple(int(x) for x in rng.integers(1, 9, n)),
        saved_cycles=tuple(int(x) for x in rng.integers(10, 100, n)),
        free_bytes=20.0,
        link_budget_cycles=18,
    )
    budget = Budget.work(5.0, workers=1)
    return {b: select(p, b, budget=budget).chosen for b in ("greedy", "cpsat", "milp")}


def _decode() -> dict[str, Any]:
    """Two decode steps of the GPU-NDP loop (4 DIMMs, 256 KiB SRAM, a 10% cache) on real law
    routing: the water-filling of absent experts' granules once visited the DIMMs in set order."""
    from bench.sweep import decode_point

    row = decode_point(
        {"hardware": "gpu-ndp-4dimm", "model": "deepseek-v2-lite", "trace": "esft-law",
         "policy": "moesched", "cache_share": 0.1, "prompt_tokens": 16, "decode_steps": 2,
         "hw.devices[kind=ndp].sram_bytes": 262144}
    )  # fmt: skip
    return {k: row[k] for k in ("latency_s", "bytes_moved", "ndp_load_cv", "executor_violations")}


def main() -> None:
    figures = {
        "placement": _placement(),
        "eplb": _eplb(),
        "dep": _dep(),
        "prefetch": _prefetch(),
        "decode": _decode(),
    }
    json.dump(figures, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
