"""POST /v1/simulate: check and simulate a plan the client sends."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from service import jobs
from service.answers import json_response
from service.deps import AdmissionDep, SettingsDep
from service.errors import ErrorResponse
from service.examples import simulate_example
from service.schemas import SimulateRequest, SimulateResponse

router = APIRouter(prefix="/v1", tags=["simulate"])


_EXAMPLES = {"gpu-ndp": {"summary": "Decode step on 2 NDP-DIMMs", "value": simulate_example()}}


@router.post(
    "/simulate/trace",
    response_model=dict[str, Any],
    responses={
        200: {"content": {"application/json": {}}, "description": "Chrome trace events."},
        422: {"model": ErrorResponse, "description": "Invalid request."},
    },
    summary="Simulate and return a Chrome trace (Perfetto)",
)
async def post_simulate_trace(
    http: Request,
    request: Annotated[SimulateRequest, Body(openapi_examples=_EXAMPLES)],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> Response:
    """The simulated timeline as Chrome trace event JSON: open it in ui.perfetto.dev."""
    body = await admission.run(http, "solve", None, "body.plan", jobs.trace_json, request, settings)
    return json_response(body)


@router.post(
    "/simulate/gantt",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "Gantt chart."},
        422: {"model": ErrorResponse, "description": "Invalid request."},
    },
    summary="Simulate and return a Gantt chart (PNG)",
)
async def post_simulate_gantt(
    http: Request,
    request: Annotated[SimulateRequest, Body(openapi_examples=_EXAMPLES)],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> Response:
    """The simulated timeline as a PNG Gantt chart, one row per resource lane."""
    png = await admission.run(http, "solve", None, "body.plan", jobs.gantt_png, request, settings)
    return Response(png, media_type="image/png")


@router.post(
    "/simulate",
    response_model=SimulateResponse,
    responses={422: {"model": ErrorResponse, "description": "Invalid request."}},
    summary="Check and simulate a plan",
)
async def post_simulate(
    http: Request,
    request: Annotated[
        SimulateRequest,
        Body(openapi_examples=_EXAMPLES),
    ],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> SimulateResponse | Response:
    """Run the plan on the executor model; violations are reported, not raised."""
    answer = await admission.run(
        http, "solve", None, "body.plan",
        jobs.dumped, jobs.simulate_plan, request, settings, request.include_timeline,
    )  # fmt: skip
    return answer.response()
