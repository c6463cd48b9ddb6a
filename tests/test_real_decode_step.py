"""One decode step of DeepSeek-V2-Lite (all 26 MoE layers) from the real ESFT trace."""

from __future__ import annotations

from pathlib import Path

from hwmodel.executor import simulate
from hwmodel.plan_builder import (
    chain_layers,
    round_robin_devices,
    round_robin_residency,
    whole_expert_shards,
)
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft


def test_deepseek_v2_lite_decode_step_on_4_dimms(traces: Path) -> None:
    """Token 300 of the law trace, experts whole on the DIMM that holds them (round robin)."""
    hw, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    trace = load_esft(traces / ESFT_FILES["law"])
    workload = trace.to_workload(slice(300, 301), context_tokens=300)
    assert workload.check_against(model) == []
    device_of = round_robin_devices(hw, model)
    plan = chain_layers(
        hw,
        model,
        workload,
        [
            whole_expert_shards(row, device_of, model.expert_ffn_size)
            for row in workload.tokens_per_expert
        ],
        attention=True,
    )
    report = simulate(
        hw, model, plan, workload, round_robin_residency(hw, model), include_timeline=True
    )
    assert report.valid, report.violations[:5]
    assert {s.layer for s in report.timeline} == set(range(26))
    shards = [s for s in report.timeline if s.label.startswith("expert")]
    assert len(shards) == 26 * 6
    # Each whole expert streams 17.3 MB at 76.8 GB/s x 0.9: ~250 us; a layer's critical path
    # is the busiest DIMM, so the step lies between 26 x 1 and 26 x 6 expert times.
    one_expert_s = model.expert_bytes() / (76.8e9 * 0.9)
    assert 26 * one_expert_s < report.makespan_s < 26 * 6 * one_expert_s + 5e-3
    ndp = next(i for i in report.imbalance if i.kind == "ndp")
    assert ndp.num_devices == 4 and ndp.max_over_mean >= 1.0
    # Activations only cross the link: 2 x 26 layers x up to 4 DIMMs x 4 KB.
    assert report.bytes_moved <= 2 * 26 * 4 * model.activation_bytes(1)
