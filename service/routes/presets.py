"""Hardware and model presets."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter

from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS, hardware_preset, model_preset
from hwmodel.spec import Hardware, ModelSpec
from service.errors import DomainError, ErrorResponse
from service.schemas import HardwarePresetSummary, ModelPresetSummary

router = APIRouter(prefix="/v1/presets", tags=["presets"])
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown preset."}
}


@router.get(
    "/hardware", response_model=list[HardwarePresetSummary], summary="List hardware presets"
)
def list_hardware() -> list[HardwarePresetSummary]:
    """Every hardware preset with its device counts."""
    out = []
    for name in HARDWARE_PRESETS:
        hw = hardware_preset(name)
        out.append(
            HardwarePresetSummary(
                name=name,
                description=hw.description,
                num_devices=len(hw.devices),
                device_kinds=dict(Counter(d.kind for d in hw.devices)),
            )
        )
    return out


@router.get(
    "/hardware/{name}", response_model=Hardware, responses=_404, summary="One hardware preset"
)
def get_hardware(name: str) -> Hardware:
    """The full hardware description of a preset, with the source of every figure."""
    if name not in HARDWARE_PRESETS:
        raise DomainError(404, "not_found", "path.name", f"unknown hardware preset '{name}'")
    return hardware_preset(name)


@router.get("/models", response_model=list[ModelPresetSummary], summary="List model presets")
def list_models() -> list[ModelPresetSummary]:
    """Every model preset, briefly."""
    out = []
    for name in MODEL_PRESETS:
        m = model_preset(name)
        out.append(
            ModelPresetSummary(
                name=name,
                num_routed_experts=m.num_routed_experts,
                top_k=m.top_k,
                num_moe_layers=m.num_moe_layers,
                expert_bytes=m.expert_bytes(),
            )
        )
    return out


@router.get("/models/{name}", response_model=ModelSpec, responses=_404, summary="One model preset")
def get_model(name: str) -> ModelSpec:
    """The full model description of a preset, with its source."""
    if name not in MODEL_PRESETS:
        raise DomainError(404, "not_found", "path.name", f"unknown model preset '{name}'")
    return model_preset(name)
