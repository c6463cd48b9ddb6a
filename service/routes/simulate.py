"""POST /v1/simulate: check and simulate a plan the client sends."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from hwmodel.trace_export import chrome_trace, gantt
from service.deps import SettingsDep
from service.errors import ErrorResponse
from service.examples import simulate_example
from service.schemas import SimulateRequest, SimulateResponse
from service.solving import simulate_plan

router = APIRouter(prefix="/v1", tags=["simulate"])


_EXAMPLES = {"gpu-ndp": {"summary": "Decode step on 2 NDP-DIMMs", "value": simulate_example()}}


@router.post(
    "/simulate/trace",
    responses={
        200: {"content": {"application/json": {}}, "description": "Chrome trace events."},
        422: {"model": ErrorResponse, "description": "Invalid request."},
    },
    summary="Simulate and return a Chrome trace (Perfetto)",
)
def post_simulate_trace(
    request: Annotated[SimulateRequest, Body(openapi_examples=_EXAMPLES)], settings: SettingsDep
) -> dict[str, Any]:
    """The simulated timeline as Chrome trace event JSON: open it in ui.perfetto.dev."""
    return chrome_trace(simulate_plan(request, settings, True).report)


@router.post(
    "/simulate/gantt",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "Gantt chart."},
        422: {"model": ErrorResponse, "description": "Invalid request."},
    },
    summary="Simulate and return a Gantt chart (PNG)",
)
def post_simulate_gantt(
    request: Annotated[SimulateRequest, Body(openapi_examples=_EXAMPLES)], settings: SettingsDep
) -> Response:
    """The simulated timeline as a PNG Gantt chart, one row per resource lane."""
    report = simulate_plan(request, settings, True).report
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        gantt(report, f.name)
        return Response(Path(f.name).read_bytes(), media_type="image/png")


@router.post(
    "/simulate",
    response_model=SimulateResponse,
    responses={422: {"model": ErrorResponse, "description": "Invalid request."}},
    summary="Check and simulate a plan",
)
def post_simulate(
    request: Annotated[
        SimulateRequest,
        Body(openapi_examples=_EXAMPLES),
    ],
    settings: SettingsDep,
) -> SimulateResponse:
    """Run the plan on the executor model; violations are reported, not raised."""
    return simulate_plan(request, settings, request.include_timeline)
