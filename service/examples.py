"""Working request examples for Swagger UI, built from presets (so they never go stale)."""

from __future__ import annotations

from typing import Any

from hwmodel.plan_builder import (
    chain_layers,
    round_robin_devices,
    round_robin_residency,
    whole_expert_shards,
)
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.workload import Workload


def simulate_example() -> dict[str, Any]:
    """One decode token of DeepSeek-V2-Lite, 2 MoE layers, experts round-robin on 2 NDP-DIMMs."""
    hw, model = hardware_preset("gpu-ndp-2dimm"), model_preset("deepseek-v2-lite")
    rows = []
    for layer in range(2):
        row = [0] * model.num_routed_experts
        for e in range(model.top_k):
            row[(7 * layer + 5 * e) % model.num_routed_experts] = 1
        rows.append(tuple(row))
    workload = Workload(layer_ids=(0, 1), tokens_per_expert=tuple(rows), num_tokens=1)
    device_of = round_robin_devices(hw, model)
    plan = chain_layers(
        hw,
        model,
        workload,
        [whole_expert_shards(r, device_of, model.expert_ffn_size) for r in rows],
    )
    return {
        "hardware_preset": "gpu-ndp-2dimm",
        "model_preset": "deepseek-v2-lite",
        "workload": workload.model_dump(mode="json", exclude_none=True),
        "residency": round_robin_residency(hw, model).model_dump(mode="json", exclude_none=True),
        "plan": plan.model_dump(mode="json", exclude_none=True),
    }
