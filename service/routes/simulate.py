"""POST /v1/simulate: check and simulate a plan the client sends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from hwmodel.executor import simulate
from service.deps import SettingsDep
from service.errors import DomainError, ErrorResponse
from service.examples import simulate_example
from service.schemas import SimulateRequest, SimulateResponse

router = APIRouter(prefix="/v1", tags=["simulate"])


@router.post(
    "/simulate",
    response_model=SimulateResponse,
    responses={422: {"model": ErrorResponse, "description": "Invalid request."}},
    summary="Check and simulate a plan",
)
def post_simulate(
    request: Annotated[
        SimulateRequest,
        Body(
            openapi_examples={
                "gpu-ndp": {"summary": "Decode step on 2 NDP-DIMMs", "value": simulate_example()}
            }
        ),
    ],
    settings: SettingsDep,
) -> SimulateResponse:
    """Run the plan on the executor model; violations are reported, not raised."""
    hardware, model = request.resolved_hardware(), request.resolved_model()
    if len(request.plan.tasks) > settings.max_tasks:
        raise DomainError(
            413, "too_large", "body.plan.tasks",
            f"{len(request.plan.tasks)} tasks exceed the limit {settings.max_tasks}",
        )  # fmt: skip
    if len(hardware.devices) > settings.max_devices:
        raise DomainError(
            413, "too_large", "body.hardware.devices",
            f"{len(hardware.devices)} devices exceed the limit {settings.max_devices}",
        )  # fmt: skip
    if request.workload is not None:
        problems = request.workload.check_against(model)
        if problems:
            field, _, reason = problems[0].partition(": ")
            raise DomainError(422, "validation", f"body.workload.{field}", reason)
    report = simulate(
        hardware, model, request.plan, request.workload, request.residency, request.include_timeline
    )
    return SimulateResponse(report=report)
