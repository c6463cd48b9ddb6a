"""Executor speed: one full DeepSeek-V2-Lite decode step (26 MoE layers) from the real trace."""

from __future__ import annotations

from functools import partial

from bench.common import BenchResult, percentile, time_calls
from hwmodel.executor import simulate
from hwmodel.plan_builder import (
    chain_layers,
    round_robin_devices,
    round_robin_residency,
    whole_expert_shards,
)
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir


def run(quick: bool = False) -> BenchResult:
    """Simulate decode steps of real tokens; report wall time per step and tasks per second."""
    result = BenchResult("executor")
    trace = load_esft(traces_dir() / ESFT_FILES["law"])
    model = model_preset("deepseek-v2-lite")
    tokens = range(100, 104) if quick else range(100, 120)
    for hw_name in ("gpu-ndp-2dimm", "gpu-ndp-4dimm", "gpu-ndp-6dimm"):
        hw = hardware_preset(hw_name)
        device_of = round_robin_devices(hw, model)
        residency = round_robin_residency(hw, model)
        walls: list[float] = []
        num_tasks = 0
        for t in tokens:
            wl = trace.to_workload(slice(t, t + 1), context_tokens=t)
            shards = [
                whole_expert_shards(r, device_of, model.expert_ffn_size)
                for r in wl.tokens_per_expert
            ]
            plan = chain_layers(hw, model, wl, shards, attention=True)
            num_tasks = len(plan.tasks)
            walls += time_calls(partial(simulate, hw, model, plan, wl, residency), 3)
        p50 = percentile(walls, 50)
        result.rows.append(
            {
                "hardware": hw_name,
                "model": "deepseek-v2-lite",
                "trace": ESFT_FILES["law"],
                "tokens": f"{tokens.start}-{tokens.stop - 1}",
                "num_tasks_per_step": num_tasks,
                "step_p50_ms": p50 * 1e3,
                "step_p95_ms": percentile(walls, 95) * 1e3,
                "tasks_per_s": num_tasks / p50,
            }
        )
    result.summary = {
        "step_p50_ms_max": max(r["step_p50_ms"] for r in result.rows),
        "tasks_per_s_min": min(r["tasks_per_s"] for r in result.rows),
        "target_step_ms": 50.0,
    }
    return result
