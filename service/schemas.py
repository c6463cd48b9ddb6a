"""HTTP request and response envelopes; they wrap the domain types instead of redefining them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hwmodel.plan import Plan, Residency
from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS, hardware_preset, model_preset
from hwmodel.report import Report
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from service.errors import DomainError


class ProblemRequest(BaseModel):
    """Hardware and model, each either given in full or named as a preset."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    hardware: Hardware | None = Field(default=None, description="Full hardware description.")
    hardware_preset: str | None = Field(
        default=None,
        max_length=64,
        description="Or a hardware preset name (GET /v1/presets/hardware).",
    )
    model: ModelSpec | None = Field(default=None, description="Full model description.")
    model_preset: str | None = Field(
        default=None, max_length=64, description="Or a model preset name (GET /v1/presets/models)."
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> ProblemRequest:
        if (self.hardware is None) == (self.hardware_preset is None):
            raise ValueError("hardware: give exactly one of 'hardware' and 'hardware_preset'")
        if (self.model is None) == (self.model_preset is None):
            raise ValueError("model: give exactly one of 'model' and 'model_preset'")
        return self

    def resolved_hardware(self) -> Hardware:
        """The hardware, from the request or the preset (DomainError 422 when unknown)."""
        if self.hardware is not None:
            return self.hardware
        assert self.hardware_preset is not None
        if self.hardware_preset not in HARDWARE_PRESETS:
            raise DomainError(
                422, "unknown_preset", "body.hardware_preset",
                f"unknown preset '{self.hardware_preset}'; known: {sorted(HARDWARE_PRESETS)}",
            )  # fmt: skip
        return hardware_preset(self.hardware_preset)

    def resolved_model(self) -> ModelSpec:
        """The model, from the request or the preset (DomainError 422 when unknown)."""
        if self.model is not None:
            return self.model
        assert self.model_preset is not None
        if self.model_preset not in MODEL_PRESETS:
            raise DomainError(
                422, "unknown_preset", "body.model_preset",
                f"unknown preset '{self.model_preset}'; known: {sorted(MODEL_PRESETS)}",
            )  # fmt: skip
        return model_preset(self.model_preset)


class SimulateRequest(ProblemRequest):
    """A plan to check and simulate, with the hardware, model and (optionally) the workload."""

    plan: Plan = Field(description="The plan to run.")
    workload: Workload | None = Field(
        default=None, description="Histogram the plan must cover (coverage is checked when given)."
    )
    residency: Residency | None = Field(default=None, description="What memories hold at cycle 0.")
    include_timeline: bool = Field(default=False, description="Return every task's span.")


class SimulateResponse(BaseModel):
    """The executor's report on the plan."""

    report: Report = Field(description="Timing, utilization, traffic and violations.")


class HardwarePresetSummary(BaseModel):
    """One hardware preset, briefly."""

    name: str = Field(description="Preset name.")
    description: str = Field(description="What it is.")
    num_devices: int = Field(description="Devices.")
    device_kinds: dict[str, int] = Field(description="Devices per kind.")


class ModelPresetSummary(BaseModel):
    """One model preset, briefly."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="Preset name.")
    num_routed_experts: int = Field(description="Routed experts per MoE layer.")
    top_k: int = Field(description="Experts per token.")
    num_moe_layers: int = Field(description="MoE layers.")
    expert_bytes: float = Field(description="Bytes of one routed expert's weights.")


class HealthResponse(BaseModel):
    """Liveness / readiness."""

    status: str = Field(description="ok")


class InfoResponse(BaseModel):
    """Versions and limits."""

    version: str = Field(description="moesched version.")
    versions: dict[str, str] = Field(description="Versions of the solver and web libraries.")
    limits: dict[str, Any] = Field(description="Server-side size limits.")
